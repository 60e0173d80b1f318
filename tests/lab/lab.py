"""vfmigrate's emulated SR-IOV lab: L1 host VMs with an igb SR-IOV PF, real VFs, real vfio.

Contract
========
The host (L0) has no SR-IOV, so the lab makes some.  An *outer* QEMU 10 (from
bookworm-backports, extracted privately: the system's QEMU 7.2 is left alone) runs one or two
*L1 hosts*: Debian 12 VMs (q35, emulated ``intel-iommu,caching-mode=on``, ``intel_iommu=on``)
with an ``igb`` PF on a pcie-root-port.  At boot each L1 creates ``numvfs`` VFs
(``sriov_drivers_autoprobe=0``), enslaves the PF to a bridge ``br0`` and brings it up.  Inside
L1, libvirt 9.0 with QEMU 10.0 from bookworm-backports (systemd as PID 1; the image kinds
are :data:`L1_KINDS`) run *L2 guests* (TCG in TCG) that get a VF.

Artifacts, all cached under ``$VFMIGRATE_LAB_CACHE`` (default ``/var/cache/vfmigrate-lab``),
each in a directory named after a hash of its inputs (package names + candidate versions +
the source of the function that builds it + the files it copies), rebuilt when those change:

* :func:`outer_qemu` -> :class:`OuterQemu`  (``qemu-<key>/``, ~5 s cold)
* :func:`backports_libvirt` -> :class:`BackportsLibvirt` (``libvirt-<key>/``, for the
  testbed's libvirt 11 hosts, tests/testbed/flavours.py; seconds)
* :func:`modular_daemons` -> :class:`ModularDaemons` (``modular-<key>/``: virtqemud & co.
  built from the same libvirt's source, for the testbed's modular hosts and the
  ``backports-modular`` L1 image; ~75 s cold)
* :func:`l1_image`   -> :class:`L1Image`    (``l1-<kind>-<key>/``: raw ext4 root, kernel, initrd,
  ssh client key, known_hosts, manifest, L2 kernel + modules; ~2.5 min cold)
* :func:`l2_assets`  -> :class:`L2Assets`   (``l2-<key>/``: L2 kernel + busybox initramfs;
  seconds)

Nothing the L1 does at run time is baked into the image: three read-only 9p shares are
mounted by the image's fstab, so the image is not rebuilt for them:

* ``lab``     -> ``/mnt/lab``     this directory's ``l1/`` (``lab-init``, run by
  ``vfmigrate-lab-init.service`` before libvirtd and ssh);
* ``l2``      -> ``/mnt/l2``      the cached :class:`L2Assets`;
* ``payload`` -> ``/mnt/payload`` a per-host directory: every ``*.deb`` in it is installed with
  ``apt-get install ./x.deb …`` at boot, before libvirtd starts (maintainer scripts cannot
  start services during that step; units the packages enable are started right after it).
  The result is in ``/run/vfmigrate-lab/status.json`` (see :meth:`L1Host.status`).

Network of a two-host lab (all emulated, nothing leaves the machine):

* control: QEMU user-net (``restrict=on``) with ``hostfwd`` 127.0.0.1:<port> -> L1:22; the
  lab talks ssh with a key made once (:func:`lab_keys`) (:meth:`L1Host.run`, :meth:`L1Host.put`).
* ``mig``: virtio-net pair (QEMU ``dgram`` netdevs on 127.0.0.1), 192.0.2.<i>/24, host names
  ``lab-a``/``lab-b`` in /etc/hosts; libvirt between the hosts over ``qemu+ssh://`` (root's
  key pair and the pinned host key are :func:`lab_keys`, the same in every L1 image), QEMU's
  migration stream on libvirt's native migration ports (49152+); no libvirtd TCP listener.
* "physical" segment: the two igb PFs joined by a ``dgram`` pair; ``br0`` (PF enslaved) has
  198.51.100.<i>/24.  L2 guests use 198.51.100.10+.

The L1 hosts are stock Debian 12 libvirt hosts: ``apparmor`` installed and libvirtd's profile
enforcing, qemu.conf/libvirtd.conf as shipped (QEMU runs as ``libvirt-qemu`` under its
``libvirt-<uuid>`` profile, dynamic ownership on), virtlockd/virtlogd/libvirt-guests as
shipped; only timers and services of no use in a throw-away VM are masked
(:data:`L1_MASKED_UNITS`).

L2 guests: :func:`l2_domain_xml` (q35, ``<acpi/>`` — without it libvirt passes ``-no-acpi``
and the failover VF never reaches the guest), :meth:`L1Host.start_l2`,
:meth:`L1Host.wait_l2` / :meth:`L1Host.l2_reports` (parsed ``LAB-L2`` console lines, see
``l2/init``).  Run one L2 guest at a time: TCG in TCG is the bottleneck.

Errors raise :class:`LabError` subclasses carrying fields.  Commands are argv lists, never
shell strings (commands sent over ssh are quoted with :func:`shlex.join`).  Each process the
lab starts is stopped by its PID.  Every phase is timed in :data:`TIMINGS`.

CLI: ``python3 tests/lab/lab.py build|boot|shell`` (see ``--help``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import gzip
import hashlib
import inspect
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

log = logging.getLogger("vfmigrate.lab")

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("VFMIGRATE_LAB_CACHE", "/var/cache/vfmigrate-lab"))
HOST_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
BACKPORTS_SOURCES = Path("/etc/apt/sources.list.d/bookworm-backports.sources")

#: name -> seconds of every phase run in this process (build, boot, …)
TIMINGS: dict[str, float] = {}


# --------------------------------------------------------------------------- errors
class LabError(Exception):
    """Base of every lab error."""


class CommandFailed(LabError):
    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str,
                 where: str = "L0"):
        self.argv, self.returncode, self.stdout, self.stderr, self.where = (
            list(argv), returncode, stdout, stderr, where)
        super().__init__(f"[{where}] {shlex.join(self.argv)} exited {returncode}: "
                         f"{(stderr or stdout)[-2000:]}")


class CommandTimeout(LabError):
    def __init__(self, argv: Sequence[str], timeout: float, where: str = "L0"):
        self.argv, self.timeout, self.where = list(argv), timeout, where
        super().__init__(f"[{where}] {shlex.join(self.argv)} timed out after {timeout:.0f} s")


class BootTimeout(LabError):
    def __init__(self, host: str, waited: float, console_tail: str):
        self.host, self.waited, self.console_tail = host, waited, console_tail
        super().__init__(f"L1 {host} not ready after {waited:.0f} s; console tail:\n"
                         f"{console_tail}")


class OuterQemuExited(LabError):
    """The outer QEMU running an L1 host exited (QEMU 10.0's TCG aborts now and then in
    ``iotlb_to_section``, an assertion about its own memory map: upstream issue 3040)."""

    def __init__(self, host: str, returncode: int | None, log_tail: str):
        self.host, self.returncode, self.log_tail = host, returncode, log_tail
        super().__init__(f"{host}: QEMU exited {returncode if returncode is not None else '?'}: "
                         f"{log_tail}")


class L2GuestCrashed(LabError):
    """An L2 guest's kernel oopsed or panicked (its console says so), or the guest hung
    (its console stayed silent while it should have been reporting)."""

    def __init__(self, host: str, guest: str, console_tail: str,
                 what: str = "the guest's kernel crashed"):
        self.host, self.guest, self.console_tail = host, guest, console_tail
        super().__init__(f"{host}: L2 {guest}: {what}; console:\n{console_tail}")


# The kernel's first line about a fault ("BUG: kernel NULL pointer dereference", "BUG:
# unable to handle page fault"), an oops header ("invalid opcode: 0000 [#1]", "Oops: 0002
# [#1]", "general protection fault ... [#1]"), a BUG() or a panic.  Not "BUG: workqueue
# lockup" or "BUG: soft lockup": a guest whose clock jumped at the switch-over may say
# so.  Not "RIP:" alone: the RCU stall an L2 guest prints right after a migration's
# switch-over carries a register dump too.
GUEST_CRASH = re.compile(r"\] BUG: (kernel NULL pointer|unable to handle)|\[#\d+\]|"
                         r"kernel BUG at |Kernel panic - not syncing")


def guest_crash(console: str) -> str | None:
    """The first console line that says the guest's kernel crashed, or None."""
    return next((line for line in console.splitlines() if GUEST_CRASH.search(line)), None)


class L1HostStalled(LabError):
    """An L1 host stopped answering ssh and its console says its kernel stalled."""

    def __init__(self, host: str, console_line: str):
        self.host, self.console_line = host, console_line
        super().__init__(f"L1 {host} stopped answering ssh; its console: {console_line}")


# An L1 kernel that lost its timer or a CPU under TCG, as lab-b's did in lab run 21
# ("rcu_preempt kthread timer wakeup didn't happen for 5251 jiffies … Possible timer
# handling issue on cpu=0", every 21 s; every ssh to it timed out from then on).  An L1
# may print an RCU stall warning and recover: only one that no longer answers counts.
L1_STALL = re.compile(r"rcu: INFO: rcu_\w+ (self-)?detected stall|"
                      r"rcu_\w+ kthread timer wakeup didn't happen|"
                      r"rcu_\w+ kthread starved for|watchdog: BUG: soft lockup")


def l1_stall(console: str) -> str | None:
    """The first console line that says an L1 host's kernel stalled, or None."""
    return next((line for line in console.splitlines() if L1_STALL.search(line)), None)


class ReportWatch:
    """Whether a running L2 guest still reports: its init prints a ``LAB-L2 up=`` line
    every few seconds.  Other console output is no sign of life: a guest stuck in its
    kernel prints "soft lockup - CPU#0 stuck for 22s!" every half minute (seen)."""

    def __init__(self, silence_limit: float | None) -> None:
        self.silence_limit = silence_limit
        self.reports = -1
        self.since = 0.0

    def hung(self, console: str, now: float) -> bool:
        """No new report for ``silence_limit`` s by ``now`` (never, without a limit)."""
        reports = console.count("LAB-L2 up=")
        if reports != self.reports:
            self.reports, self.since = reports, now
            return False
        return self.silence_limit is not None and now - self.since > self.silence_limit


# --------------------------------------------------------------------------- helpers
def wait(predicate, timeout: float, what: str, poll: float = 2.0) -> None:
    """Poll ``predicate()`` until true; LabError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Time a phase into :data:`TIMINGS` and the log."""
    log.info("phase %s ...", name)
    start = time.monotonic()
    try:
        yield
    finally:
        TIMINGS[name] = round(time.monotonic() - start, 1)
        log.info("phase %s: %.1f s", name, TIMINGS[name])


def run(argv: Sequence[str | os.PathLike], *, timeout: float = 600, check: bool = True,
        env: Mapping[str, str] | None = None, input: str | bytes | None = None,
        cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Run argv in L0, capture text output, raise CommandFailed/CommandTimeout."""
    argv = [os.fspath(a) for a in argv]
    text = not isinstance(input, bytes)
    try:
        proc = subprocess.run(argv, capture_output=True, text=text, input=input,
                              timeout=timeout, env=None if env is None else dict(env), cwd=cwd)
    except subprocess.TimeoutExpired:
        raise CommandTimeout(argv, timeout) from None
    if check and proc.returncode != 0:
        out = proc.stdout if text else proc.stdout.decode(errors="replace")
        err = proc.stderr if text else proc.stderr.decode(errors="replace")
        raise CommandFailed(argv, proc.returncode, out, err)
    return proc


#: hex digits of a cached artifact's key, the last part of its directory's name
KEY_DIGITS = 16
#: the glob of any key (cached directories are named ``<kind>-<key>``)
ANY_KEY = "?" * KEY_DIGITS


def _hash(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:KEY_DIGITS]


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _building(final: Path) -> Iterator[Path]:
    """Build into a temp dir next to ``final`` and rename it into place on success."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        (tmp / ".complete").write_text(time.strftime("%F %T\n"))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _prune(prefix: str, keep: Path, keep_newest: int = 2) -> None:
    """Remove older cached builds of the same kind (``prefix-*``): all but ``keep`` and the
    newest others (a lab booted from one of those may still be running)."""
    olds = sorted((p for p in CACHE.glob(f"{prefix}-{ANY_KEY}") if p.is_dir() and p != keep),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for old in olds[keep_newest - 1:]:
        log.info("removing stale cache %s", old)
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- apt (L0)
def ensure_backports_source() -> None:
    """Add bookworm-backports as a copy of the machine's own deb822 source (first stanza)."""
    if BACKPORTS_SOURCES.exists():
        return
    stanza = HOST_SOURCES.read_text().split("\n\n")[0]
    lines = ["Suites: bookworm-backports" if line.startswith("Suites:") else line
             for line in stanza.splitlines()]
    BACKPORTS_SOURCES.write_text("\n".join(lines) + "\n")
    run(["apt-get", "update", "-q"], timeout=600)


def apt_ready() -> None:
    """Make sure apt lists exist and include backports (run ``apt-get update`` if not)."""
    ensure_backports_source()
    lists = Path("/var/lib/apt/lists")
    if not any(lists.glob("*bookworm-backports*Packages*")):
        run(["apt-get", "update", "-q"], timeout=600)


def apt_install_l0(packages: Iterable[str]) -> None:
    """Install ordinary bookworm packages on L0 (tools, libraries), only those missing."""
    missing = [p for p in packages
               if run(["dpkg-query", "-W", "-f=${Status}", p], check=False).stdout
               != "install ok installed"]
    if missing:
        with phase("l0-apt-install"):
            run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                timeout=900, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def candidate_versions(packages: Iterable[str], release: str | None = None) -> dict[str, str]:
    """package -> the version apt would pick, or its newest version in ``release``."""
    packages = list(packages)
    out = run(["apt-cache", "policy", *packages]).stdout
    blocks = re.split(r"^(?=\S+:$)", out, flags=re.M)
    result: dict[str, str] = {}
    for block in blocks:
        m = re.match(r"(\S+):\n", block)
        if not m or m.group(1) not in packages:
            continue
        name = m.group(1)
        if release is None:
            c = re.search(r"^\s+Candidate: (\S+)", block, re.M)
            if c and c.group(1) != "(none)":
                result[name] = c.group(1)
            continue
        table = block.split("Version table:", 1)[-1]
        for v in re.finditer(r"^\s+(?:\*\*\* )?(\S+) -?\d+\n((?:\s+-?\d+ .*\n?)+)", table, re.M):
            if re.search(rf" {re.escape(release)}/", v.group(2)):
                result[name] = v.group(1)
                break
    missing = [p for p in packages if p not in result]
    if missing:
        raise LabError(f"apt has no candidate for {missing}" + (f" in {release}" if release else ""))
    return result


def _extract_debs(versions: Mapping[str, str], root: Path) -> set[str]:
    """``apt-get download`` package=version of each of ``versions`` and ``dpkg-deb -x`` them
    into ``root`` (never installed); write ``root/versions.json``; return the names of the
    packages they depend on."""
    debs = root / "debs"
    debs.mkdir()
    os.chmod(root, 0o755)
    os.chmod(debs, 0o777)  # apt's _apt sandbox user downloads into it
    run(["apt-get", "download", "-q",
         *(f"{p}={v}" for p, v in versions.items())], cwd=debs, timeout=600)
    deps: set[str] = set()
    for deb in sorted(debs.glob("*.deb")):
        run(["dpkg-deb", "-x", deb, root])
        deps.update(_deb_depends(deb))
    shutil.rmtree(debs)
    (root / "versions.json").write_text(json.dumps(versions, indent=1))
    return deps


def _deb_depends(deb: Path) -> list[str]:
    dep = run(["dpkg-deb", "-f", deb, "Depends"]).stdout.strip()
    names = []
    for alt in filter(None, (d.strip() for d in dep.split(","))):
        names.append(alt.split("|")[0].split()[0].split(":")[0])
    return names


# --------------------------------------------------------------------------- outer QEMU
OUTER_QEMU_PACKAGES = ("qemu-system-x86", "qemu-system-common", "qemu-system-data",
                       "qemu-utils", "seabios")
OUTER_QEMU_RELEASE = "bookworm-backports"


@dataclasses.dataclass(frozen=True)
class OuterQemu:
    """A privately extracted QEMU 10 (never installed in /usr)."""
    root: Path

    @property
    def system(self) -> Path:
        return self.root / "usr/bin/qemu-system-x86_64"

    @property
    def img(self) -> Path:
        return self.root / "usr/bin/qemu-img"

    def firmware_args(self) -> list[str]:
        return ["-L", str(self.root / "usr/share/qemu"),
                "-L", str(self.root / "usr/share/seabios")]

    def env(self) -> dict[str, str]:
        return {**os.environ,
                "QEMU_MODULE_DIR": str(self.root / "usr/lib/x86_64-linux-gnu/qemu")}

    def version(self) -> str:
        return run([self.system, "--version"], env=self.env()).stdout.splitlines()[0]


def outer_qemu() -> OuterQemu:
    """Download (``apt-get download``) and ``dpkg-deb -x`` QEMU 10 from bookworm-backports.

    Libraries it needs that are not installed are installed from bookworm (plain libraries,
    they do not conflict with the system's QEMU 7.2)."""
    apt_ready()
    versions = candidate_versions(OUTER_QEMU_PACKAGES, OUTER_QEMU_RELEASE)
    key = _hash(versions, inspect.getsource(outer_qemu), inspect.getsource(OuterQemu))
    final = CACHE / f"qemu-{key}"
    if not (final / ".complete").exists():
        with phase("outer-qemu-build"), _building(final) as tmp:
            deps = _extract_debs(versions, tmp)
            apt_install_l0(sorted(d for d in deps if not d.startswith(("qemu-", "seabios"))
                                  and d != "ipxe-qemu"))
            q = OuterQemu(tmp)
            missing = [line for line in run(["ldd", q.system]).stdout.splitlines()
                       if "not found" in line]
            if missing:
                raise LabError(f"outer QEMU lacks libraries: {missing}")
            q.version()
        _prune("qemu", final)
    return OuterQemu(final)


# --------------------------------------------------------------------------- libvirt 11
#: libvirt from bookworm-backports as Debian builds it: the monolithic libvirtd only (Debian's
#: packages ship no virtqemud or other modular daemon), with every connection driver the
#: system's libvirt-daemon has, so that its 9.0 modules never load into an 11.x daemon.
BACKPORTS_LIBVIRT_PACKAGES = (
    "libvirt0", "libvirt-common", "libvirt-clients", "libvirt-daemon", "libvirt-daemon-common",
    "libvirt-daemon-log", "libvirt-daemon-lock", "libvirt-daemon-driver-qemu",
    "libvirt-daemon-driver-network", "libvirt-daemon-driver-nodedev",
    "libvirt-daemon-driver-nwfilter", "libvirt-daemon-driver-secret",
    "libvirt-daemon-driver-storage", "libvirt-daemon-driver-interface",
)


@dataclasses.dataclass(frozen=True)
class BackportsLibvirt:
    """A privately extracted libvirt 11 (never installed in /usr): ``root/usr`` is laid over
    /usr inside a testbed host's mount namespace, and ``modules`` replaces the system's
    libvirt module directory there."""
    root: Path

    @property
    def modules(self) -> Path:
        return self.root / "usr/lib/x86_64-linux-gnu/libvirt"

    def versions(self) -> dict[str, str]:
        return json.loads((self.root / "versions.json").read_text())


def backports_libvirt() -> BackportsLibvirt:
    """Download (``apt-get download``) and ``dpkg-deb -x`` libvirt 11 from bookworm-backports;
    install from bookworm the plain libraries it needs that are missing."""
    apt_ready()
    versions = candidate_versions(BACKPORTS_LIBVIRT_PACKAGES, OUTER_QEMU_RELEASE)
    key = _hash(versions, inspect.getsource(backports_libvirt))
    final = CACHE / f"libvirt-{key}"
    if not (final / ".complete").exists():
        with phase("backports-libvirt-build"), _building(final) as tmp:
            deps = _extract_debs(versions, tmp)
            apt_install_l0(sorted(d for d in deps if d.startswith("lib")
                                  and not d.startswith("libvirt")))
            if not (tmp / "usr/sbin/libvirtd").exists():
                raise LabError("libvirt from bookworm-backports has no /usr/sbin/libvirtd")
        _prune("libvirt", final)
    return BackportsLibvirt(final)


# --------------------------------------------------------------------------- modular daemons
#: sha256 of the upstream source of each libvirt version bookworm-backports has carried
#: (its ``libvirt_<version>.orig.tar.xz``, as listed in the suite's Sources index): the
#: modular daemons are built from exactly the source Debian's packages were built from.
LIBVIRT_SOURCE_SHA256 = {
    "11.3.0": "6bcb0c42c4580436fea262ced56f68a6afe20f7390b1bea2116718cc034a0283",
}
#: The modular daemons a libvirt host needs for vfmigrate, the one that runs QEMU first:
#: virtqemud (guests, hooks), virtproxyd (remote clients, ``qemu+tcp://``), virtnodedevd
#: (``listAllDevices``: ``vfmigrate check``), virtnetworkd (``listAllNetworks``).
MODULAR_DAEMONS = ("virtqemud", "virtproxyd", "virtnodedevd", "virtnetworkd")
MODULAR_BUILD_PACKAGES = (
    "meson", "ninja-build", "gcc", "pkg-config", "patchelf", "xsltproc", "libxml2-utils",
    "python3-docutils", "libxml2-dev", "libglib2.0-dev", "libgnutls28-dev", "libtirpc-dev",
    "libnl-3-dev", "libnl-route-3-dev", "libudev-dev", "libpciaccess-dev", "libjson-c-dev",
    "libapparmor-dev", "libselinux1-dev", "libcap-ng-dev", "libnuma-dev", "libdevmapper-dev",
    "libacl1-dev", "libattr1-dev", "libaudit-dev", "libblkid-dev", "libsasl2-dev",
)
#: Debian's paths and QEMU account; only the drivers the daemons above are built for.
MODULAR_MESON_OPTIONS = (
    "-Dsystem=true", "--libdir=lib/x86_64-linux-gnu", "--libexecdir=lib/libvirt",
    "-Ddocs=disabled", "-Dtests=disabled", "-Dnls=disabled", "-Dinit_script=systemd",
    "-Ddriver_qemu=enabled", "-Ddriver_network=enabled", "-Ddriver_remote=enabled",
    "-Ddriver_libvirtd=enabled", "-Dudev=enabled", "-Dlibnl=enabled", "-Dpciaccess=enabled",
    "-Djson_c=enabled", "-Dapparmor=enabled", "-Dsecdriver_apparmor=enabled",
    "-Dapparmor_profiles=enabled", "-Dselinux=enabled", "-Dfirewalld=disabled",
    "-Dqemu_user=libvirt-qemu", "-Dqemu_group=libvirt-qemu",
    *(f"-Ddriver_{driver}=disabled" for driver in (
        "lxc", "vbox", "libxl", "ch", "esx", "hyperv", "openvz", "vmware", "vz", "bhyve")),
)


@dataclasses.dataclass(frozen=True)
class ModularDaemons:
    """bookworm-backports' libvirt with its modular daemons: ``root/usr/sbin`` holds
    :data:`MODULAR_DAEMONS`, ``root/usr/lib/systemd/system`` their units and sockets, and
    ``root/etc/apparmor.d`` virtqemud's profile, all of the same source; laid over
    :class:`BackportsLibvirt` (or installed over its packages), whose libraries and driver
    modules they load."""
    root: Path

    @property
    def sbin(self) -> Path:
        return self.root / "usr/sbin"

    @property
    def units(self) -> Path:
        return self.root / "usr/lib/systemd/system"

    @property
    def apparmor(self) -> Path:
        return self.root / "etc/apparmor.d"


def modular_daemons() -> ModularDaemons:
    """Build :data:`MODULAR_DAEMONS` from the source of bookworm-backports' libvirt
    (Debian builds libvirt with the monolithic libvirtd only), ~75 s on two cores, cached.

    A daemon is the RPC front end of the driver modules it loads, so these, run over
    :func:`backports_libvirt`'s libraries and modules, are that libvirt with its modular
    daemons enabled, as Fedora and RHEL run it."""
    libvirt = backports_libvirt()
    version = libvirt.versions()["libvirt-daemon"].split("-")[0]
    if version not in LIBVIRT_SOURCE_SHA256:
        raise LabError(f"bookworm-backports now has libvirt {version}: add the sha256 of "
                       f"libvirt_{version}.orig.tar.xz (the suite's Sources index lists it) to "
                       "lab.LIBVIRT_SOURCE_SHA256")
    key = _hash(version, LIBVIRT_SOURCE_SHA256[version], MODULAR_DAEMONS, MODULAR_MESON_OPTIONS,
                inspect.getsource(modular_daemons), inspect.getsource(_install_file))
    final = CACHE / f"modular-{key}"
    if not (final / ".complete").exists():
        with phase("modular-daemons-build"), _building(final) as tmp:
            os.chmod(tmp, 0o755)
            apt_install_l0(MODULAR_BUILD_PACKAGES)
            tarball = tmp / f"libvirt_{version}.orig.tar.xz"
            _download(f"{_debian_mirror()}/pool/main/libv/libvirt/{tarball.name}", tarball,
                      LIBVIRT_SOURCE_SHA256[version])
            run(["tar", "-xf", tarball, "-C", tmp], timeout=300)
            source, build = tmp / f"libvirt-{version}", tmp / "build"
            run(["meson", "setup", build, source, *MODULAR_MESON_OPTIONS], timeout=600)
            run(["ninja", "-C", build, *(f"src/{daemon}" for daemon in MODULAR_DAEMONS)],
                timeout=3600)
            (tmp / "usr/sbin").mkdir(parents=True)
            (tmp / "usr/lib/systemd/system").mkdir(parents=True)
            # with the modes Debian's packages give such files, not the build tree's (0664)
            for daemon in MODULAR_DAEMONS:
                _install_file(build / "src" / daemon, tmp / "usr/sbin" / daemon, 0o755)
                # built to run from the build tree ($ORIGIN/); installed, it uses the system's
                run(["patchelf", "--remove-rpath", tmp / "usr/sbin" / daemon])
                for unit in (f"{daemon}.service", f"{daemon}.socket", f"{daemon}-ro.socket",
                             f"{daemon}-admin.socket"):
                    _install_file(build / "src" / unit, tmp / "usr/lib/systemd/system" / unit,
                                  0o644)
            (tmp / "etc/apparmor.d").mkdir(parents=True)
            _install_file(build / "src/security/apparmor/usr.sbin.virtqemud",
                          tmp / "etc/apparmor.d/usr.sbin.virtqemud", 0o644)
            shutil.rmtree(source)
            shutil.rmtree(build)
            tarball.unlink()
            libraries = {"LD_LIBRARY_PATH": str(libvirt.root / "usr/lib/x86_64-linux-gnu")}
            answered = run([tmp / "usr/sbin/virtqemud", "--version"],
                           env={**os.environ, **libraries}).stdout
            if version not in answered:
                raise LabError(f"the virtqemud built from libvirt {version} says {answered!r}")
        _prune("modular", final)
    return ModularDaemons(final)


def _install_file(source: Path, destination: Path, mode: int) -> None:
    shutil.copyfile(source, destination)
    destination.chmod(mode)


def _debian_mirror() -> str:
    """The machine's Debian mirror (the first ``URIs:`` of its deb822 source)."""
    for line in HOST_SOURCES.read_text().splitlines():
        if line.startswith("URIs:"):
            return line.split()[1].rstrip("/")
    raise LabError(f"{HOST_SOURCES} names no mirror (no 'URIs:' line)")


def _download(url: str, destination: Path, sha256: str) -> None:
    """Fetch ``url`` into ``destination``; fail unless its content has the ``sha256``."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=120) as response, destination.open("wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != sha256:
        raise LabError(f"{url} has sha256 {digest.hexdigest()}, not the pinned {sha256}")


# --------------------------------------------------------------------------- L1 image
L1_PACKAGES = (
    "linux-image-amd64", "systemd", "systemd-sysv", "udev", "kmod", "dbus",
    "libvirt-daemon-system", "libvirt-daemon-driver-qemu", "libvirt-clients",
    "qemu-system-x86", "python3", "python3-libvirt", "python3-pyudev", "python3-systemd",
    "python3-pyroute2", "iproute2", "iputils-ping", "openssh-server", "pciutils", "ethtool",
    "procps", "busybox-static", "tcpdump", "less", "apparmor",
)
L1_IMAGE_SIZE = "4G"
# Units that only slow a TCG boot down (timers and services no libvirt host needs for
# the lab; nothing of libvirt's own: virtlockd, virtlogd, libvirt-guests stay as shipped).
L1_MASKED_UNITS = (
    "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer",
    "systemd-timesyncd.service", "man-db.timer", "dpkg-db-backup.timer",
    "systemd-networkd-wait-online.service",
    "getty@tty1.service", "systemd-pstore.service", "logrotate.timer",
)

_FSTAB = """\
/dev/vda / ext4 rw,noatime,errors=remount-ro 0 0
lab /mnt/lab 9p trans=virtio,version=9p2000.L,ro,nofail,msize=262144 0 0
l2 /mnt/l2 9p trans=virtio,version=9p2000.L,ro,nofail,msize=262144 0 0
payload /mnt/payload 9p trans=virtio,version=9p2000.L,ro,nofail,msize=262144 0 0
"""
_INIT_UNIT = """\
[Unit]
Description=vfmigrate lab: network, VFs, payload .debs (script on the 9p share)
Documentation=file:///mnt/lab/lab-init
Wants=mnt-lab.mount mnt-l2.mount mnt-payload.mount
After=mnt-lab.mount mnt-l2.mount mnt-payload.mount
After=systemd-modules-load.service systemd-udev-settle.service
Before=libvirtd.service virtqemud.service ssh.service network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
# A share whose virtio-9p device had not probed yet failed to mount at boot ("9pnet_virtio:
# no channels available for device payload", 1 boot in ~8 under TCG): mounted here again.
# ($$ is systemd's escape of a literal $.)
ExecStartPre=/bin/sh -c 'for share in /mnt/lab /mnt/l2 /mnt/payload; do tries=0; \
    until mountpoint -q $$share || mount $$share; do tries=$$((tries + 1)); \
    [ $$tries -lt 60 ] || exit 1; sleep 1; done; done'
ExecStart=/usr/bin/python3 /mnt/lab/lab-init
StandardOutput=journal+console
TimeoutStartSec=600

[Install]
WantedBy=multi-user.target
"""
#: names (and mig addresses) under which an L1 knows the other's ssh host key
L1_SSH_NAMES = "lab-a,lab-b,192.0.2.1,192.0.2.2"
_SSHD_CONF = """\
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
"""


@dataclasses.dataclass(frozen=True)
class L1Image:
    dir: Path

    disk = property(lambda self: self.dir / "root.raw")
    kernel = property(lambda self: self.dir / "vmlinuz")
    initrd = property(lambda self: self.dir / "initrd.img")
    ssh_key = property(lambda self: self.dir / "id_ed25519")
    known_hosts = property(lambda self: self.dir / "known_hosts")
    modules = property(lambda self: self.dir / "modules")   # /lib/modules/<ver> of L1 = L2
    busybox = property(lambda self: self.dir / "busybox")

    @property
    def kind(self) -> str:
        """One of :data:`L1_KINDS`, from the directory's name ``l1-<kind>-<key>``."""
        return self.dir.name[len("l1-"):-len("-" + ANY_KEY)]

    @property
    def qemu_daemon(self) -> str:
        """The daemon that runs QEMU and the hooks, and its AppArmor profile's name."""
        return MODULAR_DAEMONS[0] if self.kind in MODULAR_KINDS else "libvirtd"

    @property
    def kernel_version(self) -> str:
        return (self.dir / "kernel-version").read_text().strip()


#: L1 image kinds: which packages come from bookworm-backports (apt pinned to it for those
#: packages only); everything else is Debian 12 as shipped.
L1_KINDS = {
    # libvirt 9.0 + QEMU 7.2, all as shipped.  QEMU 7.2 under TCG loses pages a guest writes
    # during a live migration (tests/lab/README.md, issue 13: fixed upstream in QEMU 9.0), so
    # the tier does not run guests on it.
    "debian12": (),
    # the tier's: Debian 12's libvirt 9.0 with QEMU 10.0 from bookworm-backports
    "debian12-qemu10": ("qemu-*", "seabios"),
    # libvirt 11.3 + QEMU 10.0 from bookworm-backports: a host of the newer kind, as Debian 13
    # ships libvirt (monolithic libvirtd: Debian builds no modular daemons)
    "backports": ("libvirt*", "qemu-*", "seabios"),
    # the same with the modular daemons (:func:`modular_daemons`) as Fedora and RHEL run
    # them: virtqemud.service and the daemons' sockets enabled, libvirtd disabled
    "backports-modular": ("libvirt*", "qemu-*", "seabios"),
}
#: kinds whose libvirt runs the modular daemons
MODULAR_KINDS = ("backports-modular",)
#: the kind a lab host boots unless told otherwise
L1_KIND = "debian12-qemu10"
#: AppArmor denials a kind of host logs as shipped, by the path denied.  libvirt 9.0's
#: ``abstractions/libvirt-qemu`` predates QEMU 10 reading vm.max_map_count (libvirt 11.3's
#: allows it); QEMU goes on without it, so these are no fault of the host or of vfmigrate.
KNOWN_DENIALS = {"debian12-qemu10": ("/proc/sys/vm/max_map_count",)}
#: packages whose backports version makes a pinned L1 image a new one
_BACKPORTS_KEY_PACKAGES = ("libvirt-daemon-system", "libvirt-daemon-driver-qemu",
                           "qemu-system-x86", "libvirt-clients", "seabios")


def remove_unnamed_l1_images() -> None:
    """Remove L1 images cached under the names they had before they had kinds (``l1-<key>``,
    ``l1bpo-<key>``): no code builds or boots them any more, and each holds gigabytes."""
    for old in [*CACHE.glob(f"l1-{ANY_KEY}"), *CACHE.glob(f"l1bpo-{ANY_KEY}")]:
        if old.is_dir():
            log.info("removing an L1 image of the old naming: %s", old)
            shutil.rmtree(old, ignore_errors=True)


def lab_keys() -> Path:
    """The lab's ssh keys, made once: root's key pair and the L1 host key.  Every L1 image
    carries the same ones, so that hosts of different kinds log in to each other."""
    final = CACHE / "l1keys"
    if (final / ".complete").exists():
        return final
    apt_install_l0(["openssh-client"])
    with _building(final) as tmp:
        os.chmod(tmp, 0o700)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vfmigrate-lab",
             "-f", tmp / "id_ed25519"])
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "root@lab",
             "-f", tmp / "ssh_host_ed25519_key"])
    return final


def l1_image(qemu: OuterQemu | None = None, kind: str = L1_KIND) -> L1Image:
    """Build (or reuse) the L1 root image of ``kind`` (one of :data:`L1_KINDS`) with
    mmdebstrap from the machine's apt source."""
    if kind not in L1_KINDS:
        raise LabError(f"unknown L1 kind {kind!r}: use one of {', '.join(L1_KINDS)}")
    apt_ready()
    keys = lab_keys()
    pinned = L1_KINDS[kind]
    versions = candidate_versions(L1_PACKAGES)
    if pinned:
        versions.update({f"{p}/bpo": v for p, v in candidate_versions(
            [p for p in _BACKPORTS_KEY_PACKAGES if any(fnmatch.fnmatch(p, g) for g in pinned)],
            OUTER_QEMU_RELEASE).items()})
    preferences = (f"Package: {' '.join(pinned)}\nPin: release n={OUTER_QEMU_RELEASE}\n"
                   "Pin-Priority: 990\n") if pinned else ""
    modular = modular_daemons() if kind in MODULAR_KINDS else None
    key = _hash(versions, modular and modular.root.name,
                inspect.getsource(l1_image), inspect.getsource(_customize_l1),
                _FSTAB, _INIT_UNIT, _SSHD_CONF, L1_SSH_NAMES, L1_MASKED_UNITS, L1_IMAGE_SIZE,
                preferences, (keys / "id_ed25519.pub").read_text(),
                (keys / "ssh_host_ed25519_key.pub").read_text())
    final = CACHE / f"l1-{kind}-{key}"
    if (final / ".complete").exists():
        return L1Image(final)
    apt_install_l0(["mmdebstrap", "e2fsprogs", "openssh-client"])
    with _building(final) as tmp:
        os.chmod(tmp, 0o755)
        root = tmp / "rootfs"
        sources: list[str | Path] = [HOST_SOURCES]
        hooks: list[str] = []
        if pinned:
            (tmp / "backports.pref").write_text(preferences)
            sources.append(BACKPORTS_SOURCES)
            hooks = ['--setup-hook=mkdir -p "$1/etc/apt/preferences.d"',
                     f"--setup-hook=copy-in {tmp / 'backports.pref'} /etc/apt/preferences.d"]
        with phase("l1-mmdebstrap"):
            run(["mmdebstrap", "--mode=root", "--variant=apt", "--format=directory",
                 "--aptopt=APT::Install-Recommends \"false\"",
                 "--dpkgopt=path-exclude=/usr/share/doc/*",
                 "--dpkgopt=path-exclude=/usr/share/man/*",
                 "--dpkgopt=path-exclude=/usr/share/locale/*",
                 f"--include={','.join(L1_PACKAGES)}", *hooks,
                 "bookworm", root, *sources], timeout=1800)
        with phase("l1-customize"):
            _customize_l1(root, tmp, keys, modular)
        with phase("l1-mkfs"):
            run(["mkfs.ext4", "-q", "-L", "l1root", "-E", "root_owner=0:0", "-d", root,
                 tmp / "root.raw", L1_IMAGE_SIZE], timeout=900)
        shutil.rmtree(root)
    _prune(f"l1-{kind}", final)
    return L1Image(final)


def _customize_l1(root: Path, out: Path, keys: Path, modular: ModularDaemons | None) -> None:
    kver = sorted(p.name for p in (root / "lib/modules").iterdir())[-1]
    (out / "kernel-version").write_text(kver + "\n")
    shutil.copy2(root / f"boot/vmlinuz-{kver}", out / "vmlinuz")
    shutil.copy2(root / f"boot/initrd.img-{kver}", out / "initrd.img")
    shutil.copy2(root / f"boot/config-{kver}", out / "kernel-config")
    shutil.copytree(root / f"lib/modules/{kver}", out / "modules", symlinks=True)
    shutil.copy2(root / "bin/busybox", out / "busybox")
    (out / "manifest.txt").write_text(run(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W",
         "-f=${Package} ${Version}\n"]).stdout)

    def write(rel: str, text: str, mode: int = 0o644) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(mode)

    write("etc/fstab", _FSTAB)
    write("etc/hostname", "lab\n")
    write("etc/hosts", "127.0.0.1 localhost\n")
    for d in ("mnt/lab", "mnt/l2", "mnt/payload"):
        (root / d).mkdir(parents=True, exist_ok=True)
    write("etc/modules-load.d/vfmigrate-lab.conf", "9p\n9pnet_virtio\nvfio-pci\nbridge\n")
    write("etc/systemd/system/vfmigrate-lab-init.service", _INIT_UNIT)
    # libvirt as shipped: qemu.conf, libvirtd.conf, /etc/default/libvirtd untouched (QEMU as
    # libvirt-qemu, dynamic ownership, AppArmor; no TCP listener; --timeout 120)
    write("etc/ssh/sshd_config.d/vfmigrate-lab.conf", _SSHD_CONF)
    # no default NAT network (no dnsmasq, no 192.168.122.0/24)
    for p in (root / "etc/libvirt/qemu/networks/autostart").glob("*.xml"):
        p.unlink()
    # root login with a key made now; pinned host key.  Both L1s boot from this image, so
    # they share the key pair and the host key: root on one L1 logs in to the other with it
    # (qemu+ssh:// migrations), the other's host key pinned by name and mig address.
    for name in ("id_ed25519", "id_ed25519.pub"):
        shutil.copy2(keys / name, out / name)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    for name in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"):
        shutil.copy2(keys / name, root / "etc/ssh" / name)
    (root / "etc/ssh/ssh_host_ed25519_key").chmod(0o600)
    write("root/.ssh/authorized_keys", (out / "id_ed25519.pub").read_text(), 0o600)
    write("root/.ssh/id_ed25519", (out / "id_ed25519").read_text(), 0o600)
    write("root/.ssh/id_ed25519.pub", (out / "id_ed25519.pub").read_text(), 0o644)
    (root / "root/.ssh").chmod(0o700)
    hostkey = (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
    (out / "known_hosts").write_text(f"vfmigrate-lab-l1 {hostkey[0]} {hostkey[1]}\n")
    write("root/.ssh/known_hosts", f"{L1_SSH_NAMES} {hostkey[0]} {hostkey[1]}\n", 0o644)
    run(["chroot", root, "passwd", "-d", "root"])  # console login for debugging
    run(["systemctl", f"--root={root}", "enable", "vfmigrate-lab-init.service",
         "ssh.service", "apparmor.service"])
    if modular is None:
        run(["systemctl", f"--root={root}", "enable", "libvirtd.service"])
    else:
        for source in (modular.sbin, modular.units, modular.apparmor):
            for path in source.iterdir():
                shutil.copy2(path, root / path.relative_to(modular.root))
        run(["systemctl", f"--root={root}", "disable", "libvirtd.service", "libvirtd.socket",
             "libvirtd-ro.socket", "libvirtd-admin.socket"])
        # virtqemud.service also enables its sockets (Also=), the others start on a connection
        run(["systemctl", f"--root={root}", "enable", f"{MODULAR_DAEMONS[0]}.service",
             *(f"{daemon}.socket" for daemon in MODULAR_DAEMONS[1:])])
    run(["systemctl", f"--root={root}", "mask", *L1_MASKED_UNITS])
    run(["systemctl", f"--root={root}", "set-default", "multi-user.target"])
    # the L2 guest's modules come from the same kernel (see l2_assets)
    (root / "etc/machine-id").write_text("")


# --------------------------------------------------------------------------- L2 assets
#: modules the L2 initramfs loads, in order (dependencies first)
L2_MODULES = ("virtio", "virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
              "virtio_pci", "failover", "net_failover", "virtio_net", "igbvf", "virtio_console")


@dataclasses.dataclass(frozen=True)
class L2Assets:
    dir: Path
    kernel = property(lambda self: self.dir / "vmlinuz")
    initrd = property(lambda self: self.dir / "initrd.gz")


def _cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (name, mode, data) entries; directories have empty data."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], 1):
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
        out += hdr.encode() + nb
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def _module_order(modules_dir: Path, wanted: Sequence[str]) -> list[str]:
    """Relative .ko paths for wanted modules and their dependencies, dependencies first."""
    deps: dict[str, list[str]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
    by_name = {Path(p).name.split(".ko")[0].replace("-", "_"): p for p in deps}
    order: list[str] = []

    def visit(path: str) -> None:
        for d in deps.get(path, []):
            visit(d)
        if path not in order:
            order.append(path)

    for name in wanted:
        if name in by_name:
            visit(by_name[name])
    return order


def l2_assets(image: L1Image) -> L2Assets:
    """Build (or reuse) the L2 kernel + busybox initramfs from the L1 image's kernel."""
    init = (HERE / "l2" / "init").read_bytes()
    key = _hash(image.dir.name, init, L2_MODULES, inspect.getsource(l2_assets),
                inspect.getsource(_cpio_newc))
    final = CACHE / f"l2-{key}"
    if (final / ".complete").exists():
        return L2Assets(final)
    with phase("l2-build"), _building(final) as tmp:
        os.chmod(tmp, 0o755)
        order = _module_order(image.modules, L2_MODULES)
        entries: list[tuple[str, int, bytes]] = []
        for d in ("bin", "dev", "proc", "sys", "tmp", "run", "lib", "lib/modules", "sbin"):
            entries.append((d, 0o040755, b""))
        entries.append(("init", 0o100755, init))
        entries.append(("bin/busybox", 0o100755, image.busybox.read_bytes()))
        names = []
        for rel in order:
            name = Path(rel).name
            names.append(name)
            entries.append((f"lib/modules/{name}", 0o100644, (image.modules / rel).read_bytes()))
        entries.append(("lib/modules/order", 0o100644, ("\n".join(names) + "\n").encode()))
        (tmp / "initrd.gz").write_bytes(gzip.compress(_cpio_newc(entries), 6))
        shutil.copy2(image.kernel, tmp / "vmlinuz")
    _prune("l2", final)
    return L2Assets(final)


# --------------------------------------------------------------------------- payload
def build_deb(outdir: Path, name: str, version: str, files: Mapping[str, str | bytes],
              *, postinst: str | None = None, depends: str = "",
              description: str = "vfmigrate lab test package") -> Path:
    """Build a tiny binary .deb with ``dpkg-deb --build`` (files: absolute path -> content)."""
    with tempfile.TemporaryDirectory() as t:
        pkg = Path(t) / "pkg"
        (pkg / "DEBIAN").mkdir(parents=True)
        control = (f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
                   f"Maintainer: vfmigrate lab <lab@invalid>\n"
                   + (f"Depends: {depends}\n" if depends else "")
                   + f"Description: {description}\n")
        (pkg / "DEBIAN/control").write_text(control)
        if postinst:
            (pkg / "DEBIAN/postinst").write_text(postinst)
            (pkg / "DEBIAN/postinst").chmod(0o755)
        for path, content in files.items():
            p = pkg / path.lstrip("/")
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                p.write_bytes(content)
            else:
                p.write_text(content)
            p.chmod(0o755 if "/bin/" in path or "/sbin/" in path else 0o644)
        outdir.mkdir(parents=True, exist_ok=True)
        out = outdir / f"{name}_{version}_all.deb"
        run(["dpkg-deb", "--root-owner-group", "--build", pkg, out])
    return out


# --------------------------------------------------------------------------- L1 hosts
@dataclasses.dataclass(frozen=True)
class Ports:
    """127.0.0.1 ports of one lab: ssh per host, and the two dgram links' endpoints."""
    ssh: tuple[int, int]
    mig: tuple[int, int]
    phys: tuple[int, int]

    @classmethod
    def pick(cls) -> "Ports":
        return cls(ssh=(_free_port(), _free_port()),
                   mig=(_free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_DGRAM)),
                   phys=(_free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_DGRAM)))


HOST_NAMES = ("a", "b")
#: L1 CPU model.  ``max`` (AVX2 & co under TCG) made every L2 phase ~2x slower, and 2 of 3
#: migrations with it corrupted the guest; Westmere (SSE4.2, no AVX) did neither.
L1_CPU = "Westmere"


class L1Host:
    """One L1 VM.  ``index`` is 1 or 2 (host ``lab-a`` / ``lab-b``).

    Addresses: mig 192.0.2.<index>, br0 (igb PF) 198.51.100.<index>, ssh via 127.0.0.1."""

    def __init__(self, index: int, *, qemu: OuterQemu, image: L1Image, l2: L2Assets,
                 workdir: Path, ports: Ports, numvfs: int = 2, memory_mb: int = 2048,
                 payload: Path | None = None, smp: int = 2, cpu: str = L1_CPU,
                 numa_nodes: int = 1):
        if memory_mb > 2048:
            raise LabError("L1 memory above 2 GB breaks igb VF BARs in QEMU 10.0.2 (FACTS)")
        self.index, self.name = index, f"lab-{HOST_NAMES[index - 1]}"
        self.qemu, self.image, self.l2 = qemu, image, l2
        self.workdir = workdir / self.name
        self.ports, self.numvfs, self.memory_mb, self.smp = ports, numvfs, memory_mb, smp
        self.cpu = cpu
        if numa_nodes not in (1, 2) or (numa_nodes == 2 and smp < 2):
            raise LabError("an L1 host has one NUMA node, or two with a CPU each")
        self.numa_nodes = numa_nodes
        self.payload = payload or self.workdir / "payload"
        self.proc: subprocess.Popen | None = None
        self.booted_at: float | None = None

    # paths
    overlay = property(lambda self: self.workdir / "root.qcow2")
    console_log = property(lambda self: self.workdir / "console.log")
    qemu_log = property(lambda self: self.workdir / "qemu.log")
    qmp_socket = property(lambda self: self.workdir / "qmp.sock")
    ssh_control = property(lambda self: self.workdir / "ssh.ctl")
    ssh_port = property(lambda self: self.ports.ssh[self.index - 1])

    def mac(self, nic: int) -> str:
        return f"52:54:00:1a:{self.index:02x}:{nic:02x}"

    def qemu_argv(self) -> list[str]:
        i, other = self.index - 1, 2 - self.index
        ports = self.ports

        def dgram(netdev: str, pair: tuple[int, int]) -> str:
            return (f"dgram,id={netdev},local.type=inet,local.host=127.0.0.1,"
                    f"local.port={pair[i]},remote.type=inet,remote.host=127.0.0.1,"
                    f"remote.port={pair[other]}")

        cmdline = " ".join([
            "root=/dev/vda", "rw", "console=ttyS0", "intel_iommu=on", "iommu=pt",
            "mitigations=off", "quiet", "systemd.show_status=1", "net.ifnames=1",
            f"vfmigrate_lab.index={self.index}", f"vfmigrate_lab.numvfs={self.numvfs}"])
        fs = []
        for tag, path in (("lab", HERE / "l1"), ("l2", self.l2.dir), ("payload", self.payload)):
            fs += ["-fsdev", f"local,id=fs_{tag},path={path},security_model=none,readonly=on",
                   "-device", f"virtio-9p-pci,fsdev=fs_{tag},mount_tag={tag}"]
        pf = [*self.pf_slot_args(), "-netdev", dgram("phys", ports.phys),
              "-device", f"igb,bus=rp0,netdev=phys,mac={self.mac(16)}"]
        return [
            str(self.qemu.system), *self.qemu.firmware_args(),
            "-name", self.name, "-nodefaults", "-no-user-config", "-display", "none",
            "-machine", "q35,accel=tcg", "-cpu", self.cpu, "-smp", str(self.smp),
            "-m", str(self.memory_mb),
            "-device", "intel-iommu,caching-mode=on",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", cmdline,
            "-drive", f"if=none,id=root,file={self.overlay},format=qcow2,cache=unsafe,"
                      "discard=unmap",
            "-device", "virtio-blk-pci,drive=root",
            "-netdev", f"user,id=ctl,net=198.18.0.0/24,restrict=on,"
                       f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
            "-device", f"virtio-net-pci,netdev=ctl,mac={self.mac(1)},romfile=",
            "-netdev", dgram("mig", ports.mig),
            "-device", f"virtio-net-pci,netdev=mig,mac={self.mac(2)},romfile=",
            *(pf if self.numa_nodes == 1 else []),
            *fs,
            # after every device QEMU places itself: it would put them on the expander bus
            *(pf if self.numa_nodes == 2 else []),
            "-serial", f"file:{self.console_log}",
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
        ]

    def pf_slot_args(self) -> list[str]:
        """The root port ``rp0`` the igb PF sits on: on the main PCIe bus of a one-node
        host; on a two-node host, half the memory and a CPU per node and the port on a
        ``pxb-pcie`` expander bus bound to node 1, so the PF's ``numa_node`` is 1."""
        if self.numa_nodes == 1:
            return ["-device", "pcie-root-port,id=rp0,slot=1,chassis=1"]
        half = self.memory_mb // 2
        cpus = [f"0-{self.smp // 2 - 1}", f"{self.smp // 2}-{self.smp - 1}"]
        args = []
        for node in (0, 1):
            args += ["-object", f"memory-backend-ram,id=mem{node},size={half}M",
                     "-numa", f"node,nodeid={node},cpus={cpus[node]},memdev=mem{node}"]
        return args + ["-device", "pxb-pcie,id=pxb1,bus_nr=64,numa_node=1,bus=pcie.0",
                       "-device", "pcie-root-port,id=rp0,bus=pxb1,slot=1,chassis=2"]

    def start(self) -> None:
        """Create a fresh qcow2 overlay over the cached image and start QEMU (no wait)."""
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        self.payload.mkdir(parents=True, exist_ok=True)
        run([self.qemu.img, "create", "-q", "-f", "qcow2", "-F", "raw",
             "-b", self.image.disk, self.overlay], env=self.qemu.env())
        argv = self.qemu_argv()
        (self.workdir / "qemu.argv").write_text(shlex.join(argv) + "\n")
        with self.qemu_log.open("wb") as logf:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, env=self.qemu.env(),
                                         start_new_session=True)
        self.booted_at = time.monotonic()
        log.info("%s: QEMU pid %d, ssh 127.0.0.1:%d, workdir %s", self.name, self.proc.pid,
                 self.ssh_port, self.workdir)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def console_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.console_log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def stalled(self) -> L1HostStalled | None:
        """Whether this host's kernel stalled: its console says so and ssh gets no
        answer in 60 s."""
        line = l1_stall(self.console_tail(400))
        if line is None:
            return None
        try:
            self.run(["true"], timeout=60, connect_timeout=30)
        except (CommandFailed, CommandTimeout):
            return L1HostStalled(self.name, line.strip())
        return None

    def wait_ready(self, timeout: float = 600) -> float:
        """Wait until ssh works and lab-init finished; return seconds since start."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise OuterQemuExited(self.name, self.proc.returncode if self.proc else None,
                                      self.qemu_log.read_text(errors="replace")[-2000:])
            try:
                r = self.run(["systemctl", "is-active", "vfmigrate-lab-init.service"],
                             timeout=30, check=False, connect_timeout=5)
                if r.stdout.strip() == "active":
                    break
                if r.stdout.strip() == "failed":
                    raise LabError(f"{self.name}: lab-init failed:\n" + self.run(
                        ["journalctl", "-b", "-u", "vfmigrate-lab-init", "--no-pager"],
                        check=False).stdout[-4000:])
            except (CommandFailed, CommandTimeout):
                pass
            if time.monotonic() > deadline:
                raise BootTimeout(self.name, timeout, self.console_tail())
            time.sleep(2)
        return time.monotonic() - (self.booted_at or 0)

    def ssh_argv(self, connect_timeout: float = 10) -> list[str]:
        """ssh argv (multiplexed, pinned host key) to root@L1; append ``--`` and a command."""
        return ["ssh", "-F", "/dev/null", "-i", str(self.image.ssh_key),
                "-o", f"UserKnownHostsFile={self.image.known_hosts}",
                "-o", "HostKeyAlias=vfmigrate-lab-l1", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(connect_timeout)}",
                "-o", "ControlMaster=auto", "-o", f"ControlPath={self.ssh_control}",
                "-o", "ControlPersist=600", "-o", "ServerAliveInterval=10",
                "-o", "LogLevel=ERROR", "-p", str(self.ssh_port), "root@127.0.0.1"]

    def run(self, argv: Sequence[str], *, timeout: float = 300, check: bool = True,
            input: str | bytes | None = None, connect_timeout: float = 10
            ) -> subprocess.CompletedProcess:
        """Run argv in L1 as root (over ssh); raise CommandFailed with where=<host>."""
        remote = shlex.join([os.fspath(a) for a in argv])
        full = self.ssh_argv(connect_timeout) + ["--", remote]
        text = not isinstance(input, bytes)
        try:
            proc = subprocess.run(full, capture_output=True, text=text, input=input,
                                  timeout=timeout, stdin=None if input is not None
                                  else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise CommandTimeout(argv, timeout, self.name) from None
        if proc.returncode == 255 and not text:
            raise CommandFailed(argv, 255, "", proc.stderr.decode(errors="replace"), self.name)
        if proc.returncode == 255:
            raise CommandFailed(argv, 255, proc.stdout, proc.stderr, self.name)
        if check and proc.returncode != 0:
            raise CommandFailed(argv, proc.returncode, proc.stdout, proc.stderr, self.name)
        return proc

    def put(self, local: Path | bytes | str, remote: str, mode: int = 0o644) -> None:
        """Copy a local file (or bytes/str content) to ``remote`` in L1."""
        data = local if isinstance(local, (bytes, str)) and not isinstance(local, Path) \
            else Path(local).read_bytes()
        if isinstance(data, str):
            data = data.encode()
        self.run(["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"',
                  "put", remote, f"{mode:o}"], input=data)

    def get(self, remote: str) -> bytes:
        return self.run(["cat", remote], input=b"").stdout

    def status(self) -> dict:
        """lab-init's /run/vfmigrate-lab/status.json (VFs, payload install, timings)."""
        return json.loads(self.get("/run/vfmigrate-lab/status.json"))

    def virsh(self, *args: str, timeout: float = 300, check: bool = True
              ) -> subprocess.CompletedProcess:
        return self.run(["virsh", "-c", "qemu:///system", *args], timeout=timeout, check=check)

    def start_l2(self, name: str, xml: str, timeout: float = 300) -> None:
        """Define and start an L2 guest (console file truncated first)."""
        self.run(["mkdir", "-p", L2_SERIAL_DIR])
        self.run(["rm", "-f", f"{L2_SERIAL_DIR}/{name}.console"])
        self.put(xml, f"/root/{name}.xml")
        self.virsh("define", f"/root/{name}.xml")
        self.virsh("start", name, timeout=timeout)

    def l2_console(self, name: str) -> str:
        r = self.run(["cat", f"{L2_SERIAL_DIR}/{name}.console"], check=False)
        return r.stdout

    def l2_reports(self, name: str) -> list[dict]:
        return [parse_l2_report(line) for line in self.l2_console(name).splitlines()
                if line.startswith("LAB-L2 up=")]

    def wait_l2(self, name: str, predicate, timeout: float = 600, poll: float = 5,
                silence_limit: float | None = None) -> dict:
        """Wait for an L2 console report satisfying predicate(report); return it.

        Raises :class:`L2GuestCrashed` as soon as the console shows a kernel crash, or
        when no new report came for ``silence_limit`` s (only for a guest that is up and
        reports every few seconds: a booting kernel is silent for minutes)."""
        deadline = time.monotonic() + timeout
        watch = ReportWatch(silence_limit)
        while True:
            console = self.l2_console(name)
            if watch.hung(console, time.monotonic()):
                raise L2GuestCrashed(self.name, name, console[-3000:],
                                     f"the guest hung (no report for {silence_limit:.0f} s)")
            for rep in reversed([parse_l2_report(line) for line in console.splitlines()
                                 if line.startswith("LAB-L2 up=")]):
                if predicate(rep):
                    return rep
            if guest_crash(console):
                raise L2GuestCrashed(self.name, name, console[-3000:])
            if time.monotonic() > deadline:
                raise LabError(f"{self.name}: L2 {name}: no matching report in {timeout:.0f} s; "
                               f"console:\n{self.l2_console(name)[-3000:]}")
            time.sleep(poll)

    def stop(self, timeout: float = 30) -> None:
        """Stop this host's QEMU (by its PID) and its ssh master."""
        with contextlib.suppress(Exception):
            run(self.ssh_argv()[:-1] + ["-O", "exit", "root@127.0.0.1"], timeout=10,
                check=False)
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# --------------------------------------------------------------------------- L2 guests
L2_SERIAL_DIR = "/var/log/vfmigrate-lab"


def l2_domain_xml(name: str, *, mac: str, vf_pci: str | None = None,
                  mode: str = "failover", ip: str = "198.51.100.10/24",
                  peers: Sequence[str] = ("198.51.100.1", "198.51.100.2"),
                  memory_mib: int = 256, interval: int = 5, spare_root_ports: int = 3,
                  machine: str = "q35", kernel: str = "/mnt/l2/vmlinuz",
                  initrd: str = "/mnt/l2/initrd.gz", extra_cmdline: Sequence[str] = (),
                  qemu_args: Sequence[str] = (), vhost: bool = False) -> str:
    """libvirt XML of an L2 guest (TCG, q35, kernel + initramfs from /mnt/l2).

    mode: ``hostdev`` = only ``<interface type='hostdev' managed='yes'>`` on ``vf_pci``;
    ``failover`` = that VF with ``<teaming type='transient' persistent='ua-net0'/>`` plus a
    virtio ``<interface type='bridge'>`` on br0 with ``<teaming type='persistent'/>`` and
    alias ``ua-net0`` (same MAC); ``hostdev-failover`` = the same pair with a plain
    ``<hostdev mode='subsystem' type='pci'>`` as the VF (libvirt >= 7.1; libvirt does not
    set its MAC); ``virtio`` = only the virtio interface.
    ``vhost=False`` writes ``<driver name='qemu'/>`` on the virtio interface (no vhost-net).
    The console goes to ``/var/log/vfmigrate-lab/<name>.console`` in L1."""
    import xml.etree.ElementTree as ET

    def sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
        e = ET.SubElement(parent, tag, attrs)
        if text is not None:
            e.text = text
        return e

    dom = ET.Element("domain", type="qemu")
    sub(dom, "name", name)
    sub(dom, "memory", str(memory_mib), unit="MiB")
    sub(dom, "vcpu", "1")
    os_ = sub(dom, "os")
    sub(os_, "type", "hvm", arch="x86_64", machine=machine)
    sub(os_, "kernel", kernel)
    sub(os_, "initrd", initrd)
    sub(os_, "cmdline", " ".join([
        "console=ttyS0", "quiet", "mitigations=off", "nokaslr", "tsc=reliable",
        "no_timer_check",
        f"lab.ip={ip}", f"lab.peers={','.join(peers)}", f"lab.interval={interval}",
        *extra_cmdline]))
    feats = sub(dom, "features")  # without <acpi/> libvirt passes -no-acpi: see README
    sub(feats, "acpi")
    sub(feats, "apic")
    sub(dom, "on_reboot", "destroy")
    sub(dom, "on_crash", "destroy")
    devs = sub(dom, "devices")
    sub(devs, "emulator", "/usr/bin/qemu-system-x86_64")
    sub(devs, "controller", type="usb", model="none")
    sub(devs, "controller", type="pci", index="0", model="pcie-root")
    for _ in range(spare_root_ports):
        sub(devs, "controller", type="pci", model="pcie-root-port")
    if mode in ("failover", "hostdev-failover", "virtio"):
        i = sub(devs, "interface", type="bridge")
        sub(i, "mac", address=mac)
        sub(i, "source", bridge="br0")
        sub(i, "model", type="virtio")
        if not vhost:  # userspace virtio-net: every guest-memory write is dirty-logged by QEMU
            sub(i, "driver", name="qemu")
        sub(i, "rom", enabled="no")
        if mode in ("failover", "hostdev-failover"):
            sub(i, "teaming", type="persistent")
            sub(i, "alias", name="ua-net0")
    if mode == "hostdev-failover":
        if vf_pci is None:
            raise LabError("a hostdev-failover guest needs vf_pci")
        h = sub(devs, "hostdev", mode="subsystem", type="pci", managed="yes")
        sub(sub(h, "source"), "address", **_pci_attributes(vf_pci))
        sub(h, "rom", bar="off")
        sub(h, "teaming", type="transient", persistent="ua-net0")
    if mode in ("failover", "hostdev"):
        if vf_pci is None:
            raise LabError("a hostdev/failover guest needs vf_pci")
        i = sub(devs, "interface", type="hostdev", managed="yes")
        sub(i, "mac", address=mac)
        sub(sub(i, "source"), "address", type="pci", **_pci_attributes(vf_pci))
        sub(i, "rom", bar="off")
        if mode == "failover":
            sub(i, "teaming", type="transient", persistent="ua-net0")
    ser = sub(devs, "serial", type="file")
    sub(ser, "source", path=f"{L2_SERIAL_DIR}/{name}.console")
    sub(ser, "target", port="0")
    sub(devs, "memballoon", model="none")
    if qemu_args:
        ns = "http://libvirt.org/schemas/domain/qemu/1.0"
        cl = ET.SubElement(dom, f"{{{ns}}}commandline")
        for a in qemu_args:
            ET.SubElement(cl, f"{{{ns}}}arg", value=a)
        ET.register_namespace("qemu", ns)
    return ET.tostring(dom, encoding="unicode")


def _pci_attributes(pci: str) -> dict[str, str]:
    """``DDDD:BB:SS.F`` as libvirt's address attributes."""
    domain, bus, slot_function = pci.split(":")
    slot, function = slot_function.split(".")
    return {"domain": f"0x{domain}", "bus": f"0x{bus}", "slot": f"0x{slot}",
            "function": f"0x{function}"}


def parse_l2_report(line: str) -> dict:
    """Parse one ``LAB-L2 up=… master=… ifaces=… ping=…`` console line."""
    out: dict = {}
    for word in line.split()[1:]:
        k, _, v = word.partition("=")
        out[k] = v
    # a line the console garbled (kernel messages written into it) keeps what it can parse
    out["ifaces"] = [dict(zip(("name", "driver", "mac", "state", "master"), i.split("/", 4)))
                     for i in out.get("ifaces", "").split(",") if i.count("/") == 4]
    out["ping"] = dict(p.rsplit(":", 1) for p in out.get("ping", "").split(",") if ":" in p)
    return out


class Lab:
    """One or two L1 hosts sharing the mig link and the igb "physical" segment.

    Use as a context manager; hosts are stopped on exit.  ``hosts[0]`` is lab-a."""

    def __init__(self, nhosts: int = 2, *, workdir: Path | None = None,
                 payloads: Sequence[Path | None] = (), numvfs: int = 2, smp: int = 2,
                 cpu: str = L1_CPU, numa_nodes: Sequence[int] = (),
                 kinds: Sequence[str] = ()):
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="vfmigrate-lab-"))
        with phase("cache-outer-qemu"):
            self.qemu = outer_qemu()
        kinds = list(kinds) + [L1_KIND] * nhosts
        with phase("cache-l1-image"):
            remove_unnamed_l1_images()
            images = {kind: l1_image(self.qemu, kind) for kind in set(kinds[:nhosts])}
            self.image = images[kinds[0]]
        with phase("cache-l2-assets"):
            self.l2 = l2_assets(self.image)
        ports = Ports.pick()
        payloads = list(payloads) + [None] * nhosts
        numa_nodes = list(numa_nodes) + [1] * nhosts
        self.hosts = [L1Host(i + 1, qemu=self.qemu, image=images[kinds[i]], l2=self.l2,
                             workdir=self.workdir, ports=ports, payload=payloads[i],
                             numvfs=numvfs, smp=smp, cpu=cpu, numa_nodes=numa_nodes[i])
                      for i in range(nhosts)]

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def boot(self, timeout: float = 600, attempts: int = 2) -> None:
        """Boot every host; one that is not ready in ``timeout`` s, or whose QEMU exited
        while it booted, is booted again, up to ``attempts`` boots (TCG-emulated L1s hang
        in early boot now and then: once in ~10 boots, at "Starting ssh.service"; the
        outer QEMU aborted once in CI).  Each boot again is in ``TIMINGS`` and a warning."""
        with phase("l1-boot"):
            for h in self.hosts:
                h.start()
            for h in self.hosts:
                for attempt in range(1, attempts + 1):
                    try:
                        waited = h.wait_ready(timeout)
                        break
                    except (BootTimeout, OuterQemuExited) as failed:
                        if attempt == attempts:
                            raise
                        kind = "hung" if isinstance(failed, BootTimeout) else "qemu-exited"
                        # beside the host's workdir, which its next start empties
                        kept = h.workdir.parent / f"{h.name}-console-boot{attempt}-{kind}.log"
                        log.warning("%s: %s; booting it again (its console: %s)",
                                    h.name, failed, kept)
                        TIMINGS[f"l1-boot-{kind}-{h.name}"] = attempt
                        h.stop()
                        shutil.copy2(h.console_log, kept)   # the next boot overwrites it
                        h.start()
                TIMINGS[f"l1-boot-{h.name}"] = round(waited, 1)

    def stop(self) -> None:
        for h in self.hosts:
            h.stop()


# --------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build or reuse the cached QEMU, L1 image and L2 assets")
    b = sub.add_parser("boot", help="boot the lab and keep it up until Ctrl-C")
    b.add_argument("--hosts", type=int, default=2, choices=(1, 2))
    b.add_argument("--workdir", type=Path)
    b.add_argument("--payload", type=Path, action="append", default=[],
                   help="payload dir for host 1, then host 2")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.cmd == "build":
        q = outer_qemu()
        img = l1_image(q)
        l2 = l2_assets(img)
        print(json.dumps({"qemu": str(q.root), "qemu_version": q.version(),
                          "l1": str(img.dir), "l2": str(l2.dir), "timings": TIMINGS},
                         indent=1))
        return 0
    if args.cmd == "boot":
        with Lab(args.hosts, workdir=args.workdir, payloads=args.payload) as lab:
            lab.boot()
            for h in lab.hosts:
                print(f"{h.name}: ssh {shlex.join(h.ssh_argv())}")
            print(json.dumps(TIMINGS, indent=1))
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
