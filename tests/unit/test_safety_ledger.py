"""Never harm a running guest (issue 12): the ledger's faults and bad rows.

Each fault is made the way it happens on a host: a full file system (a small
tmpfs filled up), a state dir on a read-only mount, rows written into the
SQLite file by hand (``sqlite3``), the hook run as a real subprocess with
libvirt's environment.  Mounting needs root (these tests skip without it).
"""

from __future__ import annotations

import errno
import json
import os
import glob
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from vfmigrate.errors import LedgerBusy, exit_code_for
from vfmigrate.ledger import (ACTIVE, BUSY, CANTOPEN, CORRUPT, FULL, OTHER, READONLY,
                              Ledger, LedgerBadRow, LedgerFull, classify)
from vfmigrate.pci import PciAddress

from .conftest import MINIMAL_PATH, PACKAGE_PARENT
from .domains import teaming_guest

SOURCE_VF = "0000:5e:02.3"
# A real 3.9 interpreter (not a pyenv shim, which needs pyenv's environment).
PYTHON_39 = next(iter(sorted(glob.glob("/root/.pyenv/versions/3.9*/bin/python3.9"))
                      + ["/usr/bin/python3.9"]))


def one_line(stderr: str) -> str:
    assert stderr.count("\n") == 1 and stderr.startswith("vfmigrate: "), stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    return stderr


def mount(*argv: str) -> None:
    result = subprocess.run(["mount", *argv], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount ({result.stderr.strip()}): needs root")


@pytest.fixture
def mounts():
    """Mount points to unmount at the end, innermost last added."""
    points: list[Path] = []
    yield points
    for point in reversed(points):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def small_tmpfs(path: Path, mounts: list, size: str = "1m") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    mount("-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    mounts.append(path)
    return path


def fill(directory: Path) -> None:
    """Write a file until the file system has not one byte left."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    os.write(fd, b"x" * size)
                except OSError as error:
                    assert error.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)


def history(path: Path) -> list:
    with Ledger(path) as ledger:
        return ledger.history(1000, strict=False)


# -- defect 5: a full disk --------------------------------------------------

def test_a_full_disk_is_exit_5_with_one_line_and_changes_nothing(host, mounts):
    """The state dir's file system fills up while the listener holds the ledger open
    (its -wal and -shm files stay).  SQLite rolls the failed write back by itself.

    Old code: exit 70, "internal error: OperationalError: cannot rollback - no
    transaction is active" (the explicit ROLLBACK in Ledger.transaction hid the real
    error).  Also tried: the in-process Ledger with a loop of inserts (same error on
    old code; now LedgerFull and the connection is usable once space is freed)."""
    host.state_dir = small_tmpfs(host.root / "small", mounts) / "state"
    host.write_config()
    assert host.hook("migrate", teaming_guest("first", [SOURCE_VF], networks=["physnet1"]),
                     domain="first").code == 0
    ledger_path = host.state_dir / "ledger.sqlite3"
    before = history(ledger_path)
    with Ledger(ledger_path):   # as the listener does
        fill(host.state_dir.parent)
        result = host.hook_process("migrate", teaming_guest("web1", [SOURCE_VF],
                                                            networks=["physnet1"]))
        assert result.code == 5, result.stderr
        line = one_line(result.stderr)
        assert f"ledger {ledger_path}: the file system is full" in line
        assert f"free space under {host.state_dir}" in line
        assert result.stdout == b""
        os.unlink(host.state_dir.parent / "filler")
        assert history(ledger_path) == before


def test_a_full_disk_in_process_leaves_a_usable_connection(tmp_path, mounts):
    directory = small_tmpfs(tmp_path / "small", mounts)
    ledger = Ledger(directory / "state" / "ledger.sqlite3")
    with ledger.transaction():
        ledger.add(vf=PciAddress.parse("0000:3b:01.0"), network="n", domain_uuid="u",
                   domain_name="d", state=ACTIVE, reason="t")
    fill(directory)
    with pytest.raises(LedgerFull) as raised:
        for index in range(256):
            with ledger.transaction():
                ledger.add(vf=PciAddress(0, 0x3c, index % 32, index // 32), network="n",
                           domain_uuid="u" * 100, domain_name="d", state=ACTIVE,
                           reason="t" * 2000)
    assert exit_code_for(raised.value) == 5
    os.unlink(directory / "filler")
    with ledger.transaction():
        ledger.add(vf=PciAddress.parse("0000:3b:01.1"), network="n", domain_uuid="u",
                   domain_name="d", state=ACTIVE, reason="t")
    assert len(ledger.live_claims()) >= 2
    ledger.close()


# -- defect 6: a row that cannot be read ------------------------------------

BAD_ROWS = {
    # (column values that differ from a good active row, what the message says)
    "vf not an address": ({"vf": "not-a-pci-address"}, "not a PCI address"),
    "vf without domain": ({"vf": "3b:01.0"}, "not a PCI address"),
    "vf a number": ({"vf": 42}, "not a PCI address"),
    "updated as text": ({"updated": "yesterday"}, "updated is 'yesterday', not a time"),
    "name a blob": ({"domain_name": b"\x00\x01"}, "domain_name is b'\\x00\\x01', not text"),
}


def insert_row(path: Path, **values) -> int:
    """What an admin's ``sqlite3`` (or a newer vfmigrate) could write."""
    row = {"vf": "0000:3b:01.7", "network": "physnet1",
           "domain_uuid": "00000000-0000-4000-8000-000000000001", "domain_name": "ghost",
           "state": "active", "created": 1.0, "updated": 1.0, "reason": "by hand"}
    row.update(values)
    with sqlite3.connect(path) as db:
        cursor = db.execute(f"INSERT INTO claims ({', '.join(row)}) VALUES "
                            f"({', '.join('?' * len(row))})", tuple(row.values()))
        row_id = cursor.lastrowid
    db.close()
    return row_id


@pytest.mark.parametrize("case", BAD_ROWS)
def test_a_live_row_that_cannot_be_read_refuses_handing_out_vfs_naming_it(host, case):
    """Old code: every VF hook exited 70 ("internal error: ValueError: not a PCI
    address ...", nothing about the ledger).  Now: exit 5 naming the ledger file and the
    row; no VF is handed out (the row may name any VF, one in use among them), but a
    stopping guest's claims are still released, and status lists the row."""
    values, problem = BAD_ROWS[case]
    host.hook("start", teaming_guest("local", [str(host.physnet1_vfs[1])]), domain="local")
    ledger_path = host.state_dir / "ledger.sqlite3"
    row = insert_row(ledger_path, **values)
    result = host.hook_process("migrate", teaming_guest("web1", [SOURCE_VF],
                                                        networks=["physnet1"]))
    assert result.code == 5
    line = one_line(result.stderr)
    assert line.startswith(f"vfmigrate: ledger {ledger_path}: claim row {row} is unreadable (")
    assert problem in line and "hands out no VF" in line
    assert result.stdout == b""

    released = host.hook_process("release", teaming_guest("local", [str(host.physnet1_vfs[1])]),
                                 domain="local")
    assert released.code == 0, released.stderr
    with Ledger(ledger_path) as ledger:
        assert ledger.live_claims(strict=False) == []
        assert list(ledger.bad_rows) == [row]

    from vfmigrate.cli import main
    import io
    out, err = io.StringIO(), io.StringIO()
    assert main(["vfmigrate", "--config", str(host.config_path), "status", "--json"],
                out, err) == 0, err.getvalue()
    [listed] = json.loads(out.getvalue())["problems"]
    assert f"claim row {row} is unreadable" in listed and problem in listed


def test_a_released_row_that_cannot_be_read_blocks_nothing(host):
    """History (released rows) protects no VF: it is skipped, listed, never an error."""
    host.hook("migrate", teaming_guest("first", [SOURCE_VF], networks=["physnet1"]),
              domain="first")
    row = insert_row(host.state_dir / "ledger.sqlite3", vf="garbage", state="released")
    result = host.hook_process("migrate", teaming_guest("web1", [SOURCE_VF],
                                                        networks=["physnet1"]))
    assert result.code == 0, result.stderr
    with Ledger(host.state_dir / "ledger.sqlite3") as ledger:
        assert [c.domain_name for c in ledger.live_claims()] == ["first", "web1"]
        with pytest.raises(LedgerBadRow, match=f"claim row {row} is unreadable"):
            ledger.history()
        assert ledger.unreadable_rows() == {row: "not a PCI address (DDDD:BB:SS.F): 'garbage'"}


# -- defect 8: busy or not, without sqlite_errorcode (Python < 3.11) -------

def error_as_python_39_raises(kind: type, message: str) -> sqlite3.Error:
    """sqlite3 errors carry only the class and SQLite's message before Python 3.11."""
    error = kind(message)
    assert getattr(error, "sqlite_errorcode", None) is None
    return error


@pytest.mark.parametrize("kind, message, expected", [
    (sqlite3.OperationalError, "database is locked", BUSY),
    (sqlite3.OperationalError, "database table is locked", BUSY),
    (sqlite3.OperationalError, "database schema is locked: main", BUSY),
    (sqlite3.OperationalError, "attempt to write a readonly database", READONLY),
    (sqlite3.OperationalError, "unable to open database file", CANTOPEN),
    (sqlite3.OperationalError, "database or disk is full", FULL),
    (sqlite3.OperationalError, "disk I/O error", OTHER),
    (sqlite3.OperationalError, "no such table: claims", OTHER),
    (sqlite3.DatabaseError, "file is not a database", CORRUPT),
    (sqlite3.DatabaseError, "database disk image is malformed", CORRUPT),
    (sqlite3.IntegrityError, "UNIQUE constraint failed: claims.vf", OTHER),
])
def test_errors_without_a_result_code_are_told_apart(kind, message, expected):
    """Old code read every OperationalError without a code as "busy" (retried for the
    whole lock timeout, then "stayed locked"): read-only, cannot open, full, I/O."""
    assert classify(error_as_python_39_raises(kind, message)) == expected


def test_errors_with_a_result_code_are_decided_on_the_code(tmp_path):
    """On Python >= 3.11 the code decides, whatever the text says."""
    if sys.version_info < (3, 11):
        pytest.skip("sqlite_errorcode is Python >= 3.11")
    (tmp_path / "not-a-db").write_bytes(b"garbage " * 512)
    with pytest.raises(sqlite3.DatabaseError) as raised:
        sqlite3.connect(tmp_path / "not-a-db").execute("SELECT 1 FROM claims")
    assert classify(raised.value) == CORRUPT
    busy = sqlite3.OperationalError("not the usual text")
    busy.sqlite_errorcode = 5 | (3 << 8)   # SQLITE_BUSY_SNAPSHOT
    assert classify(busy) == BUSY


def unwritable_state_dir(host, mounts) -> Path:
    """The ledger file is writable but its directory is not (a read-only mount under a
    bind-mounted file: root ignores modes, not mount flags), so SQLite cannot create
    the -wal and -shm files it needs."""
    real = host.root / "real-ledger" / "ledger.sqlite3"
    Ledger(real).close()
    host.state_dir = small_tmpfs(host.root / "ro-state", mounts)
    (host.state_dir / "ledger.sqlite3").touch()
    mount("-o", "remount,ro", str(host.state_dir))
    mount("--bind", str(real), str(host.state_dir / "ledger.sqlite3"))
    mounts.append(host.state_dir / "ledger.sqlite3")
    host.write_config(lock_timeout=3)
    return host.state_dir / "ledger.sqlite3"


def run_hook_with(host, python: str, operation: str, xml: bytes):
    """hooks/qemu as the distro would install it for ``python``."""
    script = host.root / f"hook-{Path(python).name}"
    text = (Path(__file__).resolve().parents[2] / "hooks" / "qemu").read_text().split("\n", 1)[1]
    script.write_text(f"#!{python} -I\nimport sys\nsys.path.insert(0, {str(PACKAGE_PARENT)!r})"
                      f"\n{text}")
    script.chmod(0o755)
    env = {"LC_ALL": "C", "PATH": MINIMAL_PATH, "HOME": "/root",
           "VFMIGRATE_CONFIG": str(host.config_path)}
    return subprocess.run([str(script), "guest", operation, "begin", "-"], input=xml,
                          capture_output=True, env=env, timeout=120)


@pytest.mark.parametrize("python", ["this", "3.9"])
def test_an_unwritable_state_dir_fails_at_once_with_the_right_message(host, mounts, python):
    """Old code under Python 3.9 (setup.cfg allows it): the hook retried for the whole
    lock timeout and then said "ledger ... stayed locked for 3 s; another vfmigrate
    process holds it" (seen with the same mounts).  Under 3.11 old code already said
    "unable to open database file", without the advice."""
    interpreter = sys.executable if python == "this" else PYTHON_39
    if not os.access(interpreter, os.X_OK):
        pytest.skip(f"no Python {python} here")
    ledger_path = unwritable_state_dir(host, mounts)
    result = run_hook_with(host, interpreter, "migrate",
                           teaming_guest("web1", [SOURCE_VF], networks=["physnet1"]))
    assert result.returncode == 5, result.stderr
    line = one_line(result.stderr.decode())
    assert "stayed locked" not in line
    assert line.startswith(f"vfmigrate: ledger {ledger_path} cannot be opened (unable to "
                           "open database file); SQLite creates its -wal and -shm files")
    assert f"make {host.state_dir} writable for root" in line


def test_a_locked_ledger_is_still_busy_when_the_code_is_missing(tmp_path):
    """The other side of the text match: a real lock, errors as 3.9 builds them."""
    path = tmp_path / "state" / "ledger.sqlite3"
    Ledger(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        waiter = sqlite3.connect(path, timeout=0)
        with pytest.raises(sqlite3.OperationalError) as raised:
            waiter.execute("BEGIN IMMEDIATE")
        waiter.close()
        with pytest.raises(LedgerBusy), Ledger(path, lock_timeout=0.1) as ledger, \
                ledger.transaction():
            pass
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert classify(error_as_python_39_raises(sqlite3.OperationalError,
                                              str(raised.value))) == BUSY


# -- found on the way: a second Ledger in one process broke the first ------

def test_a_second_connection_in_a_process_does_not_blind_the_first(host):
    """Two connections to the ledger in one process (here: the hook run in process, whose
    HookRun leaves its Ledger open, then a listener-like Ledger); hooks then write from
    their own processes.

    Old code: Ledger() opened and closed the database file to check its mode; closing
    any descriptor drops all of the process's POSIX locks on the file, SQLite's
    in-process lock sharing did not notice, the exiting hook processes believed they
    were the last connection and deleted the WAL and -shm files, and the listener read
    a stale snapshot from then on: it saw ['first', 'web1'] for ever while the file held
    web2 and web3 (a VF reserved by web2 looked free to it).  Also seen: "disk I/O
    error" (SQLITE_IOERR_SHORT_READ) on its next read, exit 5."""
    host.hook("migrate", teaming_guest("first", [SOURCE_VF], networks=["physnet1"]),
              domain="first")
    path = host.state_dir / "ledger.sqlite3"
    with Ledger(path) as earlier, Ledger(path) as listener:   # earlier: as HookRun leaves it
        assert len(earlier.live_claims()) == len(listener.live_claims()) == 1
        names = ["first"]
        for name in ("web1", "web2", "web3"):
            assert host.hook_process("migrate", teaming_guest(name, [SOURCE_VF],
                                                              networks=["physnet1"]),
                                     domain=name).code == 0
            names.append(name)
            assert [c.domain_name for c in listener.live_claims()] == names
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_a_symlinked_ledger_is_refused(host, tmp_path):
    """Ledger files stay root-only and are never followed through a link."""
    host.state_dir.mkdir(mode=0o700)
    target = tmp_path / "elsewhere.sqlite3"
    os.symlink(target, host.state_dir / "ledger.sqlite3")
    result = host.hook("migrate", teaming_guest("web1", [SOURCE_VF], networks=["physnet1"]))
    assert result.code == 5
    assert "not a regular file (a symlink?)" in one_line(result.stderr)
    assert not target.exists()
