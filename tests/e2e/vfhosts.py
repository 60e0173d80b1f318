"""vfmigrate installed on the testbed's libvirt hosts, with simulated SR-IOV pools.

The host kernel has no SR-IOV, so each host gets a fake sysfs tree (shaped like
a real card, see tests/fakesysfs.py) under its scratch directory, and guests
hold *simulated VFs*: entries of vfmigrate's metadata naming a VF of the host
(``<vfmigrate:vf mac=… network=… address=…/>``) with no device in the guest.
The hook claims and rewrites them exactly as it does a real VF's source
address, and the listener reconciles them; only the PCI device itself is
missing.  Real VFs are the SR-IOV lab's (tests/lab).

What is under test comes from :func:`installation`: the checkout (hook and
listener run by this interpreter) or, with ``VFMIGRATE_E2E_INSTALLED=1``, the
files a distro package installed (/etc/libvirt/hooks/qemu.d/vfmigrate,
/usr/libexec/vfmigrate/vfmigrate-listener, /usr/bin/vfmigrate).

Which libvirt and QEMU each host runs comes from :func:`libvirt_flavours` (the tier's
conftest sets it per test; tests/testbed/flavours.py): the same on every host, or, for the
cross-version runs, host a on one and host b on the other.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.fakesysfs import E810, X710, Card, FakeSysfs
from tests.testbed import Host, Testbed
from tests.testbed.flavours import LibvirtFlavour, flavour
from tests.testbed.guests import no_os_guest_xml
from vfmigrate import METADATA_NAMESPACE
from vfmigrate.ledger import Claim, Ledger
from vfmigrate.pci import PciAddress

REPO = Path(__file__).resolve().parents[2]
NETWORK = "physnet1"
INSTALLED_ENV = "VFMIGRATE_E2E_INSTALLED"
#: Flavour names of hosts a, b, ... (repeated for more hosts): see :func:`libvirt_flavours`.
_flavour_names: tuple[str, ...] = ("system",)

# Each host's simulated card, so that the same guest's VF has a different
# address on every host (as it would on real, different hardware).
HOST_CARDS: list[tuple[Card, str]] = [(E810, "0000:3b:00.0"), (X710, "0000:5e:00.0"),
                                      (E810, "0000:af:00.0")]


@dataclass(frozen=True)
class Installation:
    """Where the hook, the listener and the CLI under test come from."""

    name: str
    hook: Path
    hook_interpreter: str | None
    listener: list[str]
    cli: list[str]


def installation() -> Installation:
    if os.environ.get(INSTALLED_ENV) == "1":
        return Installation("installed package",
                            Path("/etc/libvirt/hooks/qemu.d/vfmigrate"), None,
                            ["/usr/libexec/vfmigrate/vfmigrate-listener"], ["/usr/bin/vfmigrate"])
    listener = str(REPO / "listener" / "vfmigrate-listener")
    return Installation("checkout", checkout_hook(), None,
                        _from_checkout(f"sys.argv[0] = {listener!r}; "
                                       f"runpy.run_path({listener!r}, run_name='__main__')"),
                        _from_checkout("runpy.run_module('vfmigrate', run_name='__main__', "
                                       "alter_sys=True)"))


def _from_checkout(statement: str) -> list[str]:
    """argv that runs ``statement`` with this checkout first on sys.path.

    Not the venv's editable install: its finder comes after the path entries, so a
    vfmigrate installed on the machine, or a directory a removed package left behind,
    would stand in for the code under test."""
    return [sys.executable, "-I", "-c",
            f"import runpy, sys; sys.path.insert(0, {str(REPO)!r}); {statement}"]


def checkout_hook() -> Path:
    """hooks/qemu written as the packages write it (packaging/hook-program), with this
    checkout and the system's python3-systemd as its Python directories."""
    target = REPO / "build" / "checkout-hook"
    target.parent.mkdir(exist_ok=True)
    with (REPO / "hooks" / "qemu").open("rb") as source:
        program = subprocess.run([sys.executable, "-I", str(REPO / "packaging" / "hook-program"),
                                  sys.executable, str(REPO), "/usr/lib/python3/dist-packages"],
                                 stdin=source, capture_output=True, check=True).stdout
    temporary = target.with_name(f".checkout-hook.{os.getpid()}")
    temporary.write_bytes(program)
    temporary.chmod(0o755)
    temporary.replace(target)
    return target


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET; collects messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.socket.settimeout(0.2)
        self.closed = False
        self.thread = threading.Thread(target=self._receive, name=f"notify-{path.name}",
                                       daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while not self.closed:
            try:
                data = self.socket.recv(4096)
            except (TimeoutError, OSError):
                continue
            self.messages.extend(data.decode(errors="replace").splitlines())

    def count(self, message: str) -> int:
        return self.messages.count(message)

    def close(self) -> None:
        self.closed = True
        self.thread.join(2)
        self.socket.close()
        self.path.unlink(missing_ok=True)


@dataclass
class VFHost:
    """A testbed host with vfmigrate configured, its VF pool and its listener."""

    host: Host
    install: Installation
    vfs: list[PciAddress]
    listener: subprocess.Popen | None = None
    notify: NotifySocket | None = None
    listener_starts: int = 0
    ready_before: int = 0
    extra_hooks: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.host.name

    # -- ledger and logs -------------------------------------------------------

    def claims(self) -> list[Claim]:
        path = self.host.state_dir / "ledger.sqlite3"
        if not path.exists():
            return []
        with Ledger(path, lock_timeout=10) as ledger:
            return ledger.live_claims()

    def claim_summary(self) -> list[tuple[str, str, str]]:
        return sorted((c.domain_name, str(c.vf), c.state) for c in self.claims())

    def pending_resets(self) -> list[Claim]:
        with Ledger(self.host.state_dir / "ledger.sqlite3", lock_timeout=10) as ledger:
            return ledger.pending_resets()

    def history(self) -> list[Claim]:
        with Ledger(self.host.state_dir / "ledger.sqlite3", lock_timeout=10) as ledger:
            return ledger.history(1000)

    def journal(self, **match: str) -> list[dict]:
        return self.host.journal_json(SYSLOG_IDENTIFIER="vfmigrate", **match)

    def vfmigrate(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.host.run([*self.install.cli, *args], capture_output=True, text=True,
                             check=check, timeout=120)

    # -- listener ----------------------------------------------------------------

    def start_listener(self, *, wait_ready: bool = True, timeout: float = 60.0) -> None:
        if self.notify is None:
            self.notify = NotifySocket(self.host.root / "notify.sock")
        self.ready_before = ready_before = self.notify.count("READY=1")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",
               "NOTIFY_SOCKET": str(self.notify.path), "WATCHDOG_USEC": "3000000"}
        log = open(self.host.root / f"listener-{self.listener_starts}.log", "w")
        self.listener = self.host.popen([*self.install.listener], env=env, stdout=log,
                                        stderr=subprocess.STDOUT)
        self.listener_starts += 1
        if wait_ready:
            self.wait_listener_ready(timeout)

    def wait_listener_ready(self, timeout: float = 60.0) -> None:
        wait_until(lambda: self.notify.count("READY=1") > self.ready_before, timeout,
                   f"listener on host {self.name} to send READY=1", self.listener_log)

    def listener_log(self) -> str:
        path = self.host.root / f"listener-{self.listener_starts - 1}.log"
        return path.read_text() if path.exists() else ""

    def stop_listener(self, sig: int = 15, timeout: float = 20.0) -> int | None:
        if self.listener is None:
            return None
        self.listener.send_signal(sig)
        code = self.listener.wait(timeout)
        self.listener = None
        return code

    # -- guests --------------------------------------------------------------------

    def start_guest(self, name: str, vf: PciAddress | None = None, *, persistent: bool = False,
                    memory_mib: int = 64) -> str:
        """A no-OS guest; with ``vf``, holding that simulated VF of this host."""
        xml = no_os_guest_xml(name, memory_mib=memory_mib)
        if vf is not None:
            xml = with_simulated_vf(xml, vf, guest_mac_for(name))
        return self.host.create_domain(xml, persistent=persistent)


def guest_mac_for(name: str) -> str:
    import hashlib
    digest = hashlib.sha256(("vf:" + name).encode()).digest()
    return "52:54:00:" + ":".join(f"{byte:02x}" for byte in digest[:3])


def with_simulated_vf(xml: str, vf: PciAddress, mac: str, network: str = NETWORK) -> str:
    """Add vfmigrate metadata declaring a VF the guest holds (see the module docstring)."""
    element = (f"<metadata><vfmigrate:vfs xmlns:vfmigrate='{METADATA_NAMESPACE}'>"
               f"<vfmigrate:vf mac='{mac}' network='{network}' address='{vf}' "
               f"device='simulated'/>"
               f"</vfmigrate:vfs></metadata>")
    name_end = xml.index("</name>") + len("</name>")
    return xml[:name_end] + element + xml[name_end:]


def simulated_vf_of(xml: str) -> str | None:
    """The host address of the simulated VF a guest's XML declares."""
    from vfmigrate import domxml
    devices = [d for d in domxml.parse(xml.encode(), allow_stand_ins=True).devices
               if d.kind == "metadata"]
    return str(devices[0].address) if devices else None


def configure_host(host: Host, index: int, install: Installation, vf_count: int,
                   extra_config: str = "") -> list[PciAddress]:
    """Fake sysfs, /etc/vfmigrate/vfmigrate.conf and the hook, before libvirtd starts."""
    card, pf = HOST_CARDS[index]
    vfs = FakeSysfs(host.root / "sys").add_pf(card, pf, "ens1f0", vf_count, vfio_vfs=vf_count)
    # the simulated VFs are test-only metadata entries: a testbed host allows them
    if "allow_stand_ins" not in extra_config:
        extra_config = "allow_stand_ins = yes\n" + extra_config
    (host.etc_vfmigrate / "vfmigrate.conf").write_text(
        f"[vfmigrate]\nsysfs_root = {host.root / 'sys'}\nvf_reset = none\n{extra_config}\n"
        f"[network {NETWORK}]\npfs = ens1f0\n")
    host.install_hook("vfmigrate", install.hook, interpreter=install.hook_interpreter)
    return vfs


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               details: Callable[[], str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    extra = f"\n{details()}" if details else ""
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{extra}")


class VFHosts(list):
    """The hosts of a started testbed (a list of VFHost), and the testbed itself."""

    def __init__(self, hosts: list[VFHost], testbed: Testbed) -> None:
        super().__init__(hosts)
        self.testbed = testbed


@contextmanager
def libvirt_flavours(names: tuple[str, ...]) -> Iterator[list[LibvirtFlavour]]:
    """Testbeds made inside run host a on flavour ``names[0]``, b on ``names[1]``, ..."""
    global _flavour_names
    before, _flavour_names = _flavour_names, tuple(names)
    try:
        yield [flavour(name) for name in names]
    finally:
        _flavour_names = before


def host_flavours(host_count: int) -> list[LibvirtFlavour]:
    return [flavour(_flavour_names[index % len(_flavour_names)]) for index in range(host_count)]


@contextmanager
def vf_testbed(host_count: int = 2, *, vf_count: int = 4, listeners: bool = True,
               extra_hooks: Callable[[Host], None] | None = None,
               extra_config: str = "") -> Iterator[VFHosts]:
    """Started testbed hosts with vfmigrate (see the module docstring); torn down after."""
    install = installation()
    testbed = Testbed(host_count, start_on_enter=False, flavours=host_flavours(host_count))
    with testbed:
        pools = []
        for index, host in enumerate(testbed.hosts):
            if extra_hooks is not None:
                extra_hooks(host)
            pools.append(configure_host(host, index, install, vf_count, extra_config))
        testbed.start()
        hosts = VFHosts([VFHost(host, install, vfs) for host, vfs in zip(testbed.hosts, pools)],
                        testbed)
        try:
            if listeners:
                for vf_host in hosts:
                    vf_host.start_listener(wait_ready=False)
                for vf_host in hosts:
                    vf_host.wait_listener_ready()
            yield hosts
        finally:
            for vf_host in hosts:
                if vf_host.listener is not None and vf_host.listener.poll() is None:
                    vf_host.stop_listener()
                if vf_host.notify is not None:
                    vf_host.notify.close()
