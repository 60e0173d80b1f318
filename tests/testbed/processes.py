"""Process helpers for the testbed: bounded polling, PID liveness, termination by PID.

Facts this module is built around:

* PID 1 on this machine kind does not reap orphans, so a killed daemonised process (QEMU,
  a ``libvirtd --daemon``) stays a zombie for ever. "Alive" therefore means "exists and is not
  a zombie", never ``os.kill(pid, 0)``.
* Processes are found by the network namespace they live in, compared by the namespace
  inode; nothing here looks processes up by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from .errors import CommandFailed, WaitTimeout

T = TypeVar("T")

POLL_INTERVAL = 0.05


def wait_until(
    predicate: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    details: Callable[[], str] = lambda: "",
    interval: float = POLL_INTERVAL,
) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    Raises :class:`WaitTimeout` naming ``what`` and carrying ``details()`` (e.g. a log tail)
    when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise WaitTimeout(what=what, timeout=timeout, details=details())
        time.sleep(interval)


def process_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` from /proc (R, S, Z, ...), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    return stat[stat.rindex(")") + 2]


def is_running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (dead but unreaped)."""
    return process_state(pid) not in (None, "Z", "X")


def terminate(
    pid: int,
    *,
    popen: subprocess.Popen[bytes] | subprocess.Popen[str] | None = None,
    grace: float = 10.0,
) -> None:
    """Stop ``pid``: SIGTERM, wait up to ``grace`` seconds, then SIGKILL.

    ``popen`` is the handle when ``pid`` is our child, so that it gets reaped.
    """
    for sig, wait_seconds in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        if not _running(pid, popen):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_seconds
        while _running(pid, popen) and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
    if _running(pid, popen):
        raise WaitTimeout(what=f"process {pid} to exit after SIGKILL", timeout=10.0, details="")


def _running(pid: int, popen: subprocess.Popen[bytes] | subprocess.Popen[str] | None) -> bool:
    if popen is not None and popen.poll() is not None:
        return False
    return is_running(pid)


def namespace_id(path: Path | str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a namespace file (/run/netns/X or /proc/PID/ns/net), or None."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return st.st_dev, st.st_ino


def pids_in_namespace(namespace_file: Path | str, kind: str = "net") -> list[int]:
    """PIDs of live (non-zombie) processes whose ``kind`` namespace is ``namespace_file``."""
    wanted = namespace_id(namespace_file)
    if wanted is None:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if namespace_id(entry / "ns" / kind) == wanted and is_running(pid):
            found.append(pid)
    return sorted(found)


def executable_name(pid: int) -> str:
    """Basename of ``pid``'s executable, or "" if it cannot be read."""
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return ""


def terminate_all(pids: Iterable[int], *, grace: float = 5.0) -> None:
    """SIGTERM every PID at once, wait up to ``grace`` seconds, SIGKILL the survivors."""
    pending = [pid for pid in pids if is_running(pid)]
    for sig, wait_seconds in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        for pid in pending:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            pending = [pid for pid in pending if is_running(pid)]
            if not pending:
                return
            time.sleep(POLL_INTERVAL)


def file_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file, or a note that it cannot be read."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError as error:
        return f"({path}: {error.strerror})"
    return f"--- last lines of {path} ---\n" + "\n".join(text.splitlines()[-lines:])


def run_checked(argv: Sequence[str], *, timeout: float = 60.0, **kwargs: object) -> str:
    """Run ``argv`` and return its stdout; raise :class:`CommandFailed` on a non-zero exit."""
    completed = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )  # type: ignore[call-overload]
    if completed.returncode != 0:
        raise CommandFailed(
            argv=tuple(argv),
            returncode=completed.returncode,
            stdout=completed.stdout,
            stderr=completed.stderr,
        )
    return str(completed.stdout)
