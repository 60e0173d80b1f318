"""One libvirt host of the testbed: its namespaces, directories, daemons and commands.

A :class:`Host` is created and started by :class:`~.testbed.Testbed`; tests use it through:

* paths on the real filesystem, to fill before ``Testbed.start()``: ``etc_vfmigrate``
  (seen as /etc/vfmigrate inside the host), ``state_dir`` (/var/lib/vfmigrate), ``hooks_dir``
  (/etc/libvirt/hooks), ``root`` (scratch, same path inside and outside);
* ``install_hook()``, before libvirtd starts (libvirt ignores a first hook added later);
* ``run()`` / ``popen()`` / ``virsh()``: commands inside the host's network, mount and UTS
  namespaces, as argv lists; ``popen()`` processes are stopped at teardown;
* ``uri`` (qemu+tcp, reachable from any host's namespaces) and ``local_uri`` (qemu+unix
  through the host's socket on the real filesystem, usable from the test process itself);
* lifecycle controls for fault tests: ``libvirtd_pid``, ``kill_libvirtd()``,
  ``restart_libvirtd()``, ``qemu_pids()``; "libvirtd" there is the daemon that runs QEMU
  and the hooks (``qemu_daemon``): virtqemud on a host of modular daemons, whose other
  daemons (``helper_daemons``) start with it the first time and then keep running;
* ``journal_json()`` when the host runs its own systemd-journald.

Inside a host every process sees per-host directories bind-mounted over the paths in
:data:`HOST_BIND_MOUNTS` (and :data:`JOURNAL_BIND_MOUNTS` with journald); everything else of
the filesystem is shared, so a path outside those (the guest kernel, ``Testbed.shared_dir``,
``host.root``) is the same file on every host.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CommandFailed, TestbedError
from .flavours import LibvirtFlavour
from .processes import (
    executable_name,
    file_tail,
    is_running,
    pids_in_namespace,
    run_checked,
    terminate,
    terminate_all,
    wait_until,
)

log = logging.getLogger(__name__)

#: PATH given to libvirtd, hence to the hooks it runs (no pyenv shims, no venv).
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: (subdirectory of the host directory, mount point inside the host).
HOST_BIND_MOUNTS: tuple[tuple[str, str], ...] = (
    ("etc-libvirt", "/etc/libvirt"),
    ("run-libvirt", "/run/libvirt"),
    ("var-lib-libvirt", "/var/lib/libvirt"),
    ("var-log-libvirt", "/var/log/libvirt"),
    ("var-cache-libvirt", "/var/cache/libvirt"),
    ("etc-vfmigrate", "/etc/vfmigrate"),
    ("var-lib-vfmigrate", "/var/lib/vfmigrate"),
)
#: Bound only when the host runs its own journald.
JOURNAL_BIND_MOUNTS: tuple[tuple[str, str], ...] = (
    ("run-systemd-journal", "/run/systemd/journal"),
    ("run-log-journal", "/run/log/journal"),
)
MACHINE_ID_FILE = "/etc/machine-id"

#: Guest-facing bridge inside every host, same name and address on each, so that a guest's
#: ``<interface type='bridge'>`` is valid wherever it runs and answers at the same address.
GUEST_BRIDGE = "vmbr0"
GUEST_BRIDGE_ADDRESS = "192.0.2.129/25"
#: Hosts get 192.0.2.1, .2, ... on the inter-host segment.
HOST_PREFIX_LENGTH = 25

JOURNALD = "/lib/systemd/systemd-journald"
REAPER = Path(__file__).with_name("reaper.py")

QEMU_CONF_BASE: dict[str, object] = {
    "user": "root",
    "group": "root",
    "dynamic_ownership": 0,
    "remember_owner": 0,
    "security_driver": "none",
    "namespaces": [],
    "cgroup_controllers": [],
    "stdio_handler": "file",
}


def render_libvirt_conf(settings: Mapping[str, object]) -> str:
    """libvirt's ``key = value`` config syntax for strings, integers and string lists."""
    lines = []
    for key, value in settings.items():
        lines.append(f"{key} = {_conf_value(value)}")
    return "\n".join(lines) + "\n"


def _conf_value(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[ " + ", ".join(_conf_value(item) for item in value) + " ]"
    raise TypeError(f"cannot render {value!r} in a libvirt config file")


@dataclass(frozen=True)
class MigrationResult:
    """What ``Host.migrate`` measured."""

    wall_seconds: float
    completed: subprocess.CompletedProcess[str]


class Host:
    """One libvirt host in its own network, mount and UTS namespaces (see module docstring)."""

    def __init__(
        self,
        *,
        instance_id: str,
        name: str,
        index: int,
        directory: Path,
        journald: bool,
        libvirtd_conf_extra: Mapping[str, object],
        qemu_conf_extra: Mapping[str, object],
        flavour: LibvirtFlavour | None = None,
    ) -> None:
        self.name = name
        #: The libvirt and QEMU this host runs (None: the system's, not looked at).
        self.flavour = flavour
        #: The daemon that runs QEMU and the hooks, and the modular daemons it needs beside it.
        self.qemu_daemon = flavour.qemu_daemon if flavour else "libvirtd"
        self.helper_daemons = flavour.helper_daemons if flavour else ()
        #: Extra arguments of the QEMU daemon's next starts (e.g. ``("--timeout", "2")``).
        self.qemu_daemon_args: tuple[str, ...] = ()
        #: Machine type given to ``q35`` guests (see :meth:`create_domain`); None: as written.
        self.guest_machine: str | None = None
        self.index = index
        self.hostname = f"{instance_id}-{name}"
        self.netns = f"{instance_id}-{name}"
        self.address = f"192.0.2.{index + 1}"
        self.uri = f"qemu+tcp://{self.address}/system"
        self.host_uuid = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{self.hostname}.vfmigrate.test"))
        self.machine_id = uuid.uuid5(uuid.NAMESPACE_DNS, f"{self.hostname}.machine").hex
        self.directory = directory
        self.journald_enabled = journald
        self._libvirtd_conf_extra = dict(libvirtd_conf_extra)
        self._qemu_conf_extra = dict(qemu_conf_extra)

        self.root = directory / "root"
        self.etc_libvirt = directory / "etc-libvirt"
        self.hooks_dir = self.etc_libvirt / "hooks"
        self.run_libvirt = directory / "run-libvirt"
        self.var_lib_libvirt = directory / "var-lib-libvirt"
        self.log_dir = directory / "var-log-libvirt"
        self.cache_dir = directory / "var-cache-libvirt"
        self.etc_vfmigrate = directory / "etc-vfmigrate"
        self.state_dir = directory / "var-lib-vfmigrate"
        self.journal_dir = directory / "run-log-journal"
        self.journal_socket_dir = directory / "run-systemd-journal"
        self.libvirtd_log = self.daemon_log(self.qemu_daemon)
        self.libvirtd_output = self.daemon_output(self.qemu_daemon)
        self.journald_output = directory / "journald.out"
        self.local_uri = f"qemu+unix:///system?socket={self.run_libvirt / 'libvirt-sock'}"

        self._holder: subprocess.Popen[bytes] | None = None
        #: One reaper per libvirtd start; a reaper outlives its libvirtd while the QEMUs
        #: it adopted run (see reaper.py).
        self._reapers: list[subprocess.Popen[bytes]] = []
        self._libvirtd_pid: int | None = None
        self._libvirtd_starts = 0
        self._helper_pids: dict[str, int] = {}
        self._journald: subprocess.Popen[bytes] | None = None
        self._processes: list[subprocess.Popen[Any]] = []
        self._hook_present_at_libvirtd_start = False

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.address} netns={self.netns}>"

    # ------------------------------------------------------------------ paths and state

    @property
    def holder_pid(self) -> int:
        if self._holder is None:
            raise TestbedError(f"host {self.name} has no namespace holder (not started)")
        return self._holder.pid

    @property
    def libvirtd_pid(self) -> int:
        """PID of the current libvirtd (a child of its reaper, see reaper.py)."""
        if self._libvirtd_pid is None:
            raise TestbedError(f"host {self.name}: libvirtd was never started")
        return self._libvirtd_pid

    @property
    def libvirtd_running(self) -> bool:
        return self._libvirtd_pid is not None and is_running(self._libvirtd_pid)

    def daemon_log(self, daemon: str) -> Path:
        """``daemon``'s log file (real path; /var/log/libvirt inside, see _daemon_conf)."""
        return self.log_dir / f"{daemon}.log"

    def daemon_output(self, daemon: str) -> Path:
        """Where ``daemon``'s stdout and stderr go."""
        return self.directory / f"{daemon}.out"

    @property
    def journald_pid(self) -> int | None:
        return None if self._journald is None else self._journald.pid

    @property
    def netns_file(self) -> Path:
        return Path("/run/netns") / self.netns

    def qemu_log(self, domain: str) -> Path:
        """QEMU's stdout/stderr log for ``domain`` on this host (real path)."""
        return self.log_dir / "qemu" / f"{domain}.log"

    def started_pids(self) -> list[int]:
        """PIDs of the long-lived processes the testbed started for this host."""
        handles = [self._holder, *self._reapers, self._journald, *self._processes]
        pids = [handle.pid for handle in handles if handle is not None]
        if self._libvirtd_pid is not None:
            pids.append(self._libvirtd_pid)
        return pids + list(self._helper_pids.values())

    # ------------------------------------------------------------------ creation

    def create_directories(self) -> None:
        """Lay out the per-host directories and configuration (nothing runs yet)."""
        for subdir, _ in HOST_BIND_MOUNTS + JOURNAL_BIND_MOUNTS:
            (self.directory / subdir).mkdir(parents=True, exist_ok=True)
        self.root.mkdir(exist_ok=True)
        self._copy_system_libvirt_config()
        (self.hooks_dir / "qemu.d").mkdir(parents=True, exist_ok=True)
        (self.log_dir / "qemu").mkdir(exist_ok=True)
        (self.directory / "machine-id").write_text(self.machine_id + "\n")
        for daemon in (self.qemu_daemon, *self.helper_daemons):
            (self.etc_libvirt / f"{daemon}.conf").write_text(
                render_libvirt_conf(self._daemon_conf(daemon)))
        (self.etc_libvirt / "qemu.conf").write_text(render_libvirt_conf(self._qemu_conf()))

    def _copy_system_libvirt_config(self) -> None:
        """Copy /etc/libvirt minus hooks, guest definitions and network autostart links."""

        def ignore(directory: str, names: list[str]) -> set[str]:
            relative = os.path.relpath(directory, "/etc/libvirt")
            if relative == ".":
                return {"hooks"} & set(names)
            if relative == "qemu":
                return {n for n in names if n.endswith(".xml") or n == "autostart"}
            if relative == os.path.join("qemu", "networks"):
                return {"autostart"} & set(names)
            return set()

        if self.etc_libvirt.exists():
            shutil.rmtree(self.etc_libvirt)
        shutil.copytree("/etc/libvirt", self.etc_libvirt, symlinks=True, ignore=ignore)

    def _daemon_conf(self, daemon: str) -> dict[str, object]:
        """``<daemon>.conf``: the listener settings are read by listening daemons only."""
        settings: dict[str, object] = {
            "listen_tls": 0,
            "listen_tcp": 1,
            "listen_addr": self.address,
            "auth_tcp": "none",
            "auth_unix_rw": "none",
            "auth_unix_ro": "none",
            "host_uuid": self.host_uuid,
            "log_filters": "1:util.hook 3:*",
            "log_outputs": f"3:file:/var/log/libvirt/{daemon}.log",
        }
        settings.update(self._libvirtd_conf_extra)
        return settings

    def _qemu_conf(self) -> dict[str, object]:
        settings: dict[str, object] = dict(QEMU_CONF_BASE)
        settings["migration_address"] = self.address
        settings["migration_host"] = self.address
        settings.update(self._qemu_conf_extra)
        return settings

    def start_namespace_holder(self, hub_netns: str) -> None:
        """Create the network namespace, wire it to the hub, and start the holder process.

        The holder is ``sleep infinity`` in the host's network namespace and in a fresh
        mount + UTS namespace; every later command joins it with nsenter.
        """
        run_checked(["ip", "netns", "add", self.netns])
        hub_port = f"p-{self.name}"
        run_checked(
            ["ip", "-n", hub_netns, "link", "add", hub_port, "type", "veth",
             "peer", "name", "eth0", "netns", self.netns]
        )
        run_checked(["ip", "-n", hub_netns, "link", "set", hub_port, "master", "br0", "up"])
        host_ip = ["ip", "-n", self.netns]
        run_checked([*host_ip, "link", "set", "lo", "up"])
        host_address = f"{self.address}/{HOST_PREFIX_LENGTH}"
        run_checked([*host_ip, "addr", "add", host_address, "dev", "eth0"])
        run_checked([*host_ip, "link", "set", "eth0", "up"])
        run_checked([*host_ip, "link", "add", GUEST_BRIDGE, "type", "bridge"])
        run_checked([*host_ip, "addr", "add", GUEST_BRIDGE_ADDRESS, "dev", GUEST_BRIDGE])
        run_checked([*host_ip, "link", "set", GUEST_BRIDGE, "up"])

        with (self.directory / "holder.out").open("ab") as output:
            self._holder = subprocess.Popen(
                ["ip", "netns", "exec", self.netns,
                 "unshare", "--mount", "--uts", "--propagation", "slave",
                 "--", "sleep", "infinity"],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
            )
        holder = self._holder
        own_mount_namespace = os.stat("/proc/self/ns/mnt").st_ino
        wait_until(
            lambda: holder.poll() is None
            and executable_name(holder.pid) == "sleep"
            and os.stat(f"/proc/{holder.pid}/ns/mnt").st_ino != own_mount_namespace,
            timeout=10,
            what=f"namespace holder of host {self.name} (pid {holder.pid})",
        )

    def mount_host_directories(self, *, journald: bool) -> None:
        """Bind the per-host directories over their system paths and set the hostname."""
        binds = list(HOST_BIND_MOUNTS)
        if journald:
            binds += JOURNAL_BIND_MOUNTS
        for subdir, mount_point in binds:
            self._enter(["mount", "--bind", str(self.directory / subdir), mount_point])
        for command in self.flavour.mount_commands() if self.flavour else ():
            self._enter(command)
        self._enter(["mount", "--bind", str(self.directory / "machine-id"), MACHINE_ID_FILE])
        # `ip netns exec` mounted a fresh /sys (for this netns' /sys/class/net) without
        # /sys/fs/cgroup; journald refuses to start without a cgroup hierarchy there.
        self._enter(["mount", "-t", "cgroup2", "cgroup2", "/sys/fs/cgroup"])
        self._enter(["hostname", self.hostname], uts_only=True)

    def _enter(self, argv: Sequence[str], *, uts_only: bool = False) -> str:
        namespaces = ["-u"] if uts_only else ["-m"]
        return run_checked(["nsenter", "-t", str(self.holder_pid), *namespaces, "--", *argv])

    # ------------------------------------------------------------------ commands inside

    def nsenter_argv(self) -> list[str]:
        """The argv prefix that runs a command inside this host's namespaces."""
        return ["nsenter", "-t", str(self.holder_pid), "-n", "-m", "-u", "--"]

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run(argv, **kwargs)`` inside the host's namespaces.

        The working directory inside is / unless ``cwd`` is given (it must exist in the
        host's view of the filesystem).
        """
        return subprocess.run(self._inside(argv, kwargs), **kwargs)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a long-running process inside the host; teardown stops it (by PID).

        The returned Popen's ``pid`` is the process itself (nsenter execs, no fork).
        """
        kwargs.setdefault("start_new_session", True)
        process = subprocess.Popen(self._inside(argv, kwargs), **kwargs)
        self._processes.append(process)
        return process

    def _inside(self, argv: Sequence[str], kwargs: dict[str, Any]) -> list[str]:
        prefix = self.nsenter_argv()
        cwd = kwargs.pop("cwd", None)
        if cwd is not None:
            prefix.insert(-1, f"--wd={cwd}")
        return [*prefix, *argv]

    def virsh(
        self, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """``virsh -c <this host's uri> ARGS`` run inside this host; text output captured.

        With ``check`` a non-zero exit raises :class:`CommandFailed` carrying virsh's stderr.
        """
        argv = ["virsh", "-c", self.uri, *args]
        completed = self.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and completed.returncode != 0:
            raise CommandFailed(
                argv=argv,
                returncode=completed.returncode,
                stdout=completed.stdout,
                stderr=completed.stderr,
            )
        return completed

    # ------------------------------------------------------------------ hooks

    def install_hook(
        self, name: str, source_path: Path | str, interpreter: str | None = None
    ) -> Path:
        """Copy an executable into ``<hooks_dir>/qemu.d/<name>`` with mode 0755.

        ``interpreter`` replaces the ``#!`` line (or adds one). libvirtd only watches for
        hooks if one existed when it started, so install before ``Testbed.start()``; after
        that this raises unless a hook was already present at start.
        """
        if self.libvirtd_running and not self._hook_present_at_libvirtd_start:
            raise TestbedError(
                f"host {self.name}: libvirtd started without any qemu hook, so it would ignore "
                f"{name!r}; install hooks before Testbed.start() or call restart_libvirtd()"
            )
        content = Path(source_path).read_bytes()
        if interpreter is not None:
            if content.startswith(b"#!"):
                content = content.split(b"\n", 1)[1] if b"\n" in content else b""
            content = b"#!" + interpreter.encode() + b"\n" + content
        target = self.hooks_dir / "qemu.d" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{name}.tmp")
        temporary.write_bytes(content)
        temporary.chmod(0o755)
        temporary.replace(target)
        return target

    def _any_qemu_hook_installed(self) -> bool:
        candidates = [self.hooks_dir / "qemu"]
        hook_dir = self.hooks_dir / "qemu.d"
        if hook_dir.is_dir():
            candidates += sorted(hook_dir.iterdir())
        return any(
            path.is_file() and os.stat(path).st_mode & stat.S_IXUSR for path in candidates
        )

    # ------------------------------------------------------------------ libvirtd

    def start_libvirtd(self) -> None:
        """Start the QEMU daemon in the foreground under a reaper, inside the host (not
        waiting until it answers); first the helper daemons that are not running."""
        if self.libvirtd_running:
            raise TestbedError(
                f"host {self.name}: {self.qemu_daemon} already running ({self.libvirtd_pid})")
        for daemon in self.helper_daemons:
            if daemon not in self._helper_pids or not is_running(self._helper_pids[daemon]):
                self._helper_pids[daemon] = self._start_daemon(daemon)
        self._hook_present_at_libvirtd_start = self._any_qemu_hook_installed()
        self._libvirtd_pid = self._start_daemon(self.qemu_daemon, self.qemu_daemon_args)

    def _start_daemon(self, daemon: str, extra_args: Sequence[str] = ()) -> int:
        """Start ``daemon`` under a reaper (pid file in the host's /run/libvirt: /run is
        shared by every host); return its pid."""
        self._libvirtd_starts += 1
        pid_file = self.directory / f"{daemon}-{self._libvirtd_starts}.pid"
        pid_file.unlink(missing_ok=True)
        argv = [f"/usr/sbin/{daemon}", "--pid-file", f"/run/libvirt/{daemon}.pid", *extra_args]
        if daemon == "libvirtd":   # virtproxyd listens on TCP whenever its conf says so
            argv.append("--listen")
        output_file = self.daemon_output(daemon)
        with output_file.open("ab") as output:
            reaper = subprocess.Popen(
                [*self.nsenter_argv(), sys.executable, "-I", str(REAPER), str(pid_file), "--",
                 *argv],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env={"PATH": SYSTEM_PATH, "HOME": "/root", "LC_ALL": "C"},
                start_new_session=True,
            )
        self._reapers.append(reaper)
        pid = wait_until(
            lambda: _read_pid(pid_file) or (reaper.poll() is not None and -1),
            timeout=10,
            what=f"the reaper of host {self.name} to start {daemon}",
            details=lambda: file_tail(output_file),
        )
        if pid < 0:
            raise TestbedError(
                f"host {self.name}: reaper exited with {reaper.returncode} before {daemon} ran\n"
                + file_tail(output_file)
            )
        return pid

    def wait_libvirtd_ready(self, timeout: float = 120.0) -> float:
        """Poll until libvirtd answers ``virsh capabilities`` over TCP; return seconds waited.

        That call makes libvirtd load (or probe, ~8 s, when its cache is cold) the QEMU
        capabilities, so the time is paid here rather than by the first guest.
        """
        started = time.monotonic()
        pid = self.libvirtd_pid
        reaper = self._reapers[-1]

        def answers() -> bool:
            if not is_running(pid):
                try:  # the reaper exits with libvirtd's status unless QEMUs remain
                    status: object = reaper.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    status = "unknown"
                raise TestbedError(
                    f"host {self.name}: libvirtd exited with status {status}\n"
                    + self.libvirtd_diagnostics()
                )
            completed = self.run(
                ["virsh", "-c", self.uri, "-q", "capabilities"],
                capture_output=True,
                timeout=timeout,
            )
            return completed.returncode == 0

        wait_until(
            answers,
            timeout=timeout,
            interval=0.1,
            what=f"libvirtd of host {self.name} to answer on {self.uri}",
            details=self.libvirtd_diagnostics,
        )
        return time.monotonic() - started

    def libvirtd_diagnostics(self) -> str:
        helpers = "".join(file_tail(self.daemon_output(daemon), 10) + "\n"
                          + file_tail(self.daemon_log(daemon), 10) + "\n"
                          for daemon in self.helper_daemons)
        return (helpers + file_tail(self.libvirtd_output, 20) + "\n"
                + file_tail(self.libvirtd_log, 40))

    def kill_libvirtd(self, sig: int = signal.SIGKILL, *, wait: bool = True) -> None:
        """Send ``sig`` to libvirtd; with ``wait``, wait until it has exited."""
        if not self.libvirtd_running:
            raise TestbedError(f"host {self.name}: libvirtd is not running")
        pid = self.libvirtd_pid
        os.kill(pid, sig)
        if wait:
            wait_until(
                lambda: not is_running(pid),
                timeout=30,
                what=f"libvirtd {pid} of host {self.name} to exit on signal {sig}",
                details=self.libvirtd_diagnostics,
            )
        self._reap_idle_reapers()

    def stop_libvirtd(self, grace: float = 15.0) -> None:
        """SIGTERM libvirtd (SIGKILL after ``grace`` seconds); running guests keep running."""
        if self.libvirtd_running:
            terminate(self.libvirtd_pid, grace=grace)
        self._reap_idle_reapers()

    def _reap_idle_reapers(self) -> None:
        """Forget reapers that have exited (their libvirtd and adopted QEMUs are gone)."""
        self._reapers = [reaper for reaper in self._reapers if reaper.poll() is None]

    def restart_libvirtd(self, timeout: float = 120.0, *, grace: float = 15.0) -> float:
        """Stop libvirtd if it runs (:meth:`stop_libvirtd`), start it again, wait until it
        answers; return seconds."""
        started = time.monotonic()
        if self.libvirtd_running:
            self.stop_libvirtd(grace)
        self.start_libvirtd()
        self.wait_libvirtd_ready(timeout)
        return time.monotonic() - started

    def qemu_pids(self) -> list[int]:
        """PIDs of the live QEMU processes in this host's network namespace."""
        return [
            pid
            for pid in pids_in_namespace(self.netns_file)
            if executable_name(pid).startswith("qemu-system")
        ]

    # ------------------------------------------------------------------ guests

    def domain_names(self, *, inactive: bool = False) -> list[str]:
        args = ["list", "--name"] + (["--all"] if inactive else [])
        return [line for line in self.virsh(*args).stdout.splitlines() if line.strip()]

    def domain_state(self, domain: str) -> str | None:
        """``virsh domstate`` of ``domain``, or None if this host does not know it."""
        completed = self.virsh("domstate", domain, check=False)
        return completed.stdout.strip() if completed.returncode == 0 else None

    def create_domain(self, xml: str, *, persistent: bool = False) -> str:
        """Start a guest from ``xml`` (``virsh create``, or define + start); return its name.

        On a testbed whose hosts run different QEMUs, a ``q35`` guest gets the versioned
        machine type every host has (:attr:`guest_machine`), as an admin pins it in a
        fleet being upgraded: an alias resolves to the newest QEMU's, which an older
        QEMU cannot receive."""
        if self.guest_machine is not None:
            xml = _with_machine(xml, self.guest_machine)
        definitions = self.directory / "definitions"
        definitions.mkdir(exist_ok=True)
        path = definitions / f"{time.monotonic_ns()}.xml"
        path.write_text(xml)
        if persistent:
            self.virsh("define", str(path))
            name = _domain_name(xml)
            self.virsh("start", name)
            return name
        self.virsh("create", str(path))
        return _domain_name(xml)

    def migrate(
        self,
        domain: str,
        destination: Host,
        *options: str,
        p2p: bool = True,
        live: bool = True,
        timeout: float = 180.0,
        check: bool = True,
    ) -> MigrationResult:
        """``virsh -c SELF migrate [--live] [--p2p] OPTIONS DOMAIN DEST`` from inside this host."""
        args = ["migrate"]
        if live:
            args.append("--live")
        if p2p:
            args.append("--p2p")
        args += [*options, domain, destination.uri]
        started = time.monotonic()
        completed = self.virsh(*args, check=check, timeout=timeout)
        return MigrationResult(wall_seconds=time.monotonic() - started, completed=completed)

    def ping(self, address: str, *, count: int = 1, timeout: int = 2) -> bool:
        """True if ``address`` answers ICMP echo from inside this host (busybox ping)."""
        completed = self.run(
            ["busybox", "ping", "-c", str(count), "-W", str(timeout), address],
            capture_output=True,
            timeout=count * timeout + 10,
        )
        return completed.returncode == 0

    def destroy_all_domains(self) -> None:
        """``virsh destroy`` every running guest (libvirtd must be running)."""
        for domain in self.domain_names():
            self.virsh("destroy", domain, check=False, timeout=60)

    # ------------------------------------------------------------------ journald

    def start_journald(self, timeout: float = 20.0) -> None:
        """Start systemd-journald inside the host; wait for its socket."""
        socket_path = self.journal_socket_dir / "socket"
        with self.journald_output.open("ab") as output:
            self._journald = subprocess.Popen(
                [*self.nsenter_argv(), JOURNALD],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env={"PATH": SYSTEM_PATH, "LC_ALL": "C"},
                start_new_session=True,
            )
        journald = self._journald
        wait_until(
            lambda: socket_path.exists() and journald.poll() is None,
            timeout=timeout,
            what=f"journald socket of host {self.name} at {socket_path}",
            details=lambda: file_tail(self.journald_output),
        )

    def journal_json(self, **match: str) -> list[dict[str, Any]]:
        """Entries of this host's journal matching ``FIELD=value`` pairs, oldest first."""
        if not self.journald_enabled:
            raise TestbedError(f"host {self.name} runs no journald (Testbed(journald=False))")
        argv = ["journalctl", "-D", str(self.journal_dir), "-o", "json", "--no-pager", "-q"]
        argv += [f"{field}={value}" for field, value in match.items()]
        output = run_checked(argv)
        return [json.loads(line) for line in output.splitlines() if line.strip()]

    # ------------------------------------------------------------------ teardown

    def stop_started_processes(self) -> list[str]:
        """Stop everything this host runs, guests first; return failures (never raise)."""
        failures: list[str] = []

        def attempt(step: str, action: Any) -> None:
            try:
                action()
            except Exception as error:  # teardown goes on whatever failed
                failures.append(f"host {self.name}: {step}: {error}")

        for process in reversed(self._processes):
            attempt(f"stop process {process.pid} {process.args!r}",
                    lambda p=process: terminate(p.pid, popen=p, grace=5))
        if self.libvirtd_running:
            attempt("destroy guests", self.destroy_all_domains)
        # Its guests are gone: libvirtd exits at once unless 11.3's udev thread hangs it
        # (see the helper daemons below).
        attempt("stop libvirtd", lambda: self.stop_libvirtd(grace=3))
        # libvirt 11.3's nodedev driver at times never lets its daemon (virtnodedevd, or
        # libvirtd) exit on SIGTERM: its shutdown thread and its udev thread both wait on a
        # futex.  That cost 10-15 s of teardown in one test of six.
        # Nothing of the helper daemons' outlives this host, so they get a short grace.
        helpers = [pid for pid in self._helper_pids.values() if is_running(pid)]
        if helpers:
            attempt("stop the helper daemons", lambda: terminate_all(helpers, grace=1))
        for reaper in self._reapers:  # each exits once its adopted QEMUs are gone
            attempt(f"stop reaper {reaper.pid}",
                    lambda r=reaper: terminate(r.pid, popen=r, grace=5))
        if self._journald is not None:
            journald = self._journald
            attempt("stop journald", lambda: terminate(journald.pid, popen=journald, grace=5))
        holder = self._holder
        leftovers = [pid for pid in pids_in_namespace(self.netns_file)
                     if holder is None or pid != holder.pid]
        if leftovers:
            log.info("host %s: stopping leftover processes %s", self.name, leftovers)
            attempt("stop leftover processes", lambda: terminate_all(leftovers))
        if holder is not None:
            attempt("stop namespace holder", lambda: terminate(holder.pid, popen=holder, grace=5))
        return failures

    def processes_alive(self) -> list[int]:
        """Started PIDs that are still alive (for teardown checks)."""
        return [pid for pid in self.started_pids() if is_running(pid)]


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _with_machine(xml: str, machine: str) -> str:
    """``xml`` with ``<type … machine='q35'>`` set to ``machine`` (text otherwise as written:
    an ElementTree round trip would rename namespace prefixes in the metadata)."""
    return re.sub(r"(<type\b[^>]*\bmachine=)(['\"])q35\2", rf"\g<1>'{machine}'", xml, count=1)


def _domain_name(xml: str) -> str:
    name = ElementTree.fromstring(xml).findtext("name")
    if not name:
        raise TestbedError("domain XML has no <name>")
    return name
