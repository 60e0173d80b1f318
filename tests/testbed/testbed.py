"""N real libvirt hosts on one machine, for migration tests.

Contract:

* ``Testbed(host_count)`` then ``create()`` lays out per-host directories and configuration
  (nothing runs); the caller may then fill ``host.etc_vfmigrate``, ``host.state_dir``,
  ``host.root`` and install hooks (``host.install_hook``). ``start()`` brings up, per host, a
  network namespace wired to a shared hub bridge (hosts at 192.0.2.1, .2, ... /25), a holder
  process owning a private mount + UTS namespace with the per-host directories bound over
  the libvirt and vfmigrate system paths, optionally a systemd-journald, and a real libvirtd
  listening on TCP without auth. ``teardown()`` stops exactly what was started (by PID),
  destroys guests, deletes the namespaces (their mounts go with them) and the work directory.
  As a context manager: ``__enter__`` does create() + start() (``start_on_enter=False`` to
  prepare hosts first and call ``start()`` yourself), ``__exit__`` tears down.
* A failing ``start()`` tears down before raising; an ``atexit`` handler tears down a testbed
  left running at interpreter exit; a testbed whose owning process died (SIGKILL) is found by
  its lock file and namespace prefix and removed by the next ``create()`` (or by
  ``python -m tests.testbed down --all``).
* Instances are named ``<prefix>-<4 hex>``; namespaces ``<instance>-<host>`` and
  ``<instance>-hub``. Two testbeds can run at once; only namespaces of dead instances with the
  same prefix are ever cleaned, and only processes inside those namespaces are killed.
* The QEMU capabilities cache is kept in the test cache directory
  (``$VFMIGRATE_TEST_CACHE``, default /var/cache/vfmigrate-tests) and copied into each host,
  which saves libvirtd's ~8 s QEMU probe per host; libvirt re-probes if it is stale.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import TeardownIncomplete, TestbedError
from .flavours import LibvirtFlavour, system_flavour
from .host import HOST_BIND_MOUNTS, JOURNAL_BIND_MOUNTS, JOURNALD, Host
from .processes import pids_in_namespace, run_checked, terminate_all

log = logging.getLogger(__name__)

#: Lock and state files of every testbed instance on this machine, whatever its work dir.
REGISTRY_DIR = Path("/run/vfmigrate-testbed")
DEFAULT_WORK_ROOT = REGISTRY_DIR / "work"
DEFAULT_PREFIX = "vfmt"
HOST_NAMES = "abcdefghijklmnopqrstuvwxyz"
NETNS_DIR = Path("/run/netns")
#: libvirt's QEMU capabilities cache, relative to /var/cache/libvirt.
CAPABILITIES_SUBDIR = Path("qemu") / "capabilities"


def default_cache_dir() -> Path:
    """Where testbed artefacts are cached between runs (capabilities, guest images)."""
    return Path(os.environ.get("VFMIGRATE_TEST_CACHE", "/var/cache/vfmigrate-tests"))


class Testbed:
    """N libvirt hosts in namespaces on this machine (see the module docstring)."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        host_count: int = 2,
        *,
        prefix: str = DEFAULT_PREFIX,
        work_root: Path | None = None,
        cache_dir: Path | None = None,
        journald: bool = True,
        share_capabilities: bool = True,
        keep_workdir: bool = False,
        start_on_enter: bool = True,
        start_timeout: float = 120.0,
        libvirtd_conf_extra: Mapping[str, object] | None = None,
        qemu_conf_extra: Mapping[str, object] | None = None,
        flavours: Sequence[LibvirtFlavour] | LibvirtFlavour | None = None,
    ) -> None:
        if not 1 <= host_count <= len(HOST_NAMES):
            raise ValueError(f"host_count must be 1..{len(HOST_NAMES)}, not {host_count}")
        if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", prefix):
            raise ValueError(f"prefix must be 1-8 lowercase letters/digits, not {prefix!r}")
        self.host_count = host_count
        self.prefix = prefix
        self.work_root = work_root or DEFAULT_WORK_ROOT
        self.cache_dir = cache_dir or default_cache_dir()
        self.journald = journald and Path(JOURNALD).exists()
        self.share_capabilities = share_capabilities
        self.keep_workdir = keep_workdir
        self.start_on_enter = start_on_enter
        self.start_timeout = start_timeout
        self._libvirtd_conf_extra = dict(libvirtd_conf_extra or {})
        self._qemu_conf_extra = dict(qemu_conf_extra or {})
        if flavours is None or isinstance(flavours, LibvirtFlavour):
            flavours = [flavours or system_flavour()] * host_count
        if len(flavours) != host_count:
            raise ValueError(f"{len(flavours)} libvirt flavours for {host_count} hosts")
        #: Per host, the libvirt and QEMU it runs (tests/testbed/flavours.py).
        self.flavours = tuple(flavours)

        self.instance_id = ""
        self.directory = Path()
        self.hosts: tuple[Host, ...] = ()
        #: Seconds each start-up step took, e.g. ``{"libvirtd a": 8.1, "libvirtd b": 1.4}``.
        self.timings: dict[str, float] = {}
        self._lock_fd: int | None = None
        self._created_netns: list[str] = []
        self._created_mountpoints: list[str] = []
        self._started = False
        self._torn_down = False

    # ------------------------------------------------------------------ public API

    @property
    def hub_netns(self) -> str:
        return f"{self.instance_id}-hub"

    @property
    def shared_dir(self) -> Path:
        """A directory seen at the same path by every host (guest serial logs, images)."""
        return self.directory / "shared"

    @property
    def guest_machine(self) -> str | None:
        """``pc-q35-X.Y`` of the oldest QEMU when hosts run different ones, else None."""
        if len(set(self.flavours)) < 2:
            return None
        versions = [tuple(int(part) for part in f.qemu_version.split(".")[:2])
                    for f in self.flavours]
        major, minor = min(versions)
        return f"pc-q35-{major}.{minor}"

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def create(self) -> Testbed:
        """Clean stale testbeds, claim an instance name, lay out directories (no processes)."""
        if self.instance_id:
            raise TestbedError(f"testbed {self.instance_id} already created")
        _require_root()
        try:
            clean_stale_instances(self.prefix)
            self._claim_instance()
            self.directory = self.work_root / self.instance_id
            self.directory.mkdir(parents=True)
            self.shared_dir.mkdir()
            self.hosts = tuple(
                Host(
                    instance_id=self.instance_id,
                    name=HOST_NAMES[index],
                    index=index,
                    directory=self.directory / "hosts" / HOST_NAMES[index],
                    journald=self.journald,
                    libvirtd_conf_extra=self._libvirtd_conf_extra,
                    qemu_conf_extra=self._qemu_conf_extra,
                    flavour=self.flavours[index],
                )
                for index in range(self.host_count)
            )
            for host in self.hosts:
                host.guest_machine = self.guest_machine
            for host in self.hosts:
                host.create_directories()
                socket_path = str(host.run_libvirt / "libvirt-sock")
                if len(socket_path) > 100:
                    raise TestbedError(f"work_root too deep: socket path {socket_path} > 100 chars")
            atexit.register(self._teardown_at_exit)
            self._save_state()
        except BaseException:
            self._teardown_quietly()
            raise
        return self

    def start(self) -> Testbed:
        """Bring up namespaces, mounts, journald and libvirtd on every host; wait for them.

        On failure everything started is torn down before the exception propagates.
        """
        if not self.instance_id:
            self.create()
        if self._started:
            raise TestbedError(f"testbed {self.instance_id} already started")
        self._started = True
        try:
            self._start_network()
            self._ensure_mountpoints()
            for host in self.hosts:
                host.start_namespace_holder(self.hub_netns)
                host.mount_host_directories(journald=self.journald)
                if self.journald:
                    host.start_journald()
                self._save_state()
            self._start_libvirtds()
            self._save_state()
        except BaseException:
            self._teardown_quietly()
            raise
        return self

    def teardown(self) -> None:
        """Stop everything started, remove namespaces, mountpoints we created and work dir.

        Idempotent. Raises :class:`TeardownIncomplete` listing steps that failed (all steps
        are attempted whatever fails).
        """
        if self._torn_down or not self.instance_id:
            return
        self._torn_down = True
        atexit.unregister(self._teardown_at_exit)
        failures: list[str] = []
        for host in self.hosts:
            failures += host.stop_started_processes()
        for netns in reversed(self._created_netns):
            try:
                _delete_netns(netns)
            except Exception as error:
                failures.append(f"delete netns {netns}: {error}")
        try:
            _release_mountpoints(self.instance_id)
        except Exception as error:
            failures.append(f"remove mountpoints: {error}")
        if not self.keep_workdir and self.directory.name == self.instance_id:
            shutil.rmtree(self.directory, ignore_errors=True)
        _remove_instance_files(self.instance_id)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if failures:
            raise TeardownIncomplete(failures)

    def detach(self) -> None:
        """Leave the testbed running after this process exits (``python -m tests.testbed up``).

        The next automatic stale cleanup skips it; ``down`` removes it.
        """
        atexit.unregister(self._teardown_at_exit)
        self._save_state(detached=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._torn_down = True

    def __enter__(self) -> Testbed:
        self.create()
        if self.start_on_enter:
            self.start()
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            self.teardown()
        else:
            self._teardown_quietly()

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary: instance, work dir, and per host its addresses and PIDs."""
        hosts = []
        for host in self.hosts:
            hosts.append(
                {
                    "name": host.name,
                    "hostname": host.hostname,
                    "netns": host.netns,
                    "address": host.address,
                    "uri": host.uri,
                    "local_uri": host.local_uri,
                    "directory": str(host.directory),
                    "pids": host.started_pids() if self._started else [],
                }
            )
        return {
            "instance": self.instance_id,
            "directory": str(self.directory),
            "shared_dir": str(self.shared_dir),
            "netns": list(self._created_netns),
            "created_mountpoints": list(self._created_mountpoints),
            "owner_pid": os.getpid(),
            "hosts": hosts,
        }

    # ------------------------------------------------------------------ internals

    def _claim_instance(self) -> None:
        REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            candidate = f"{self.prefix}-{secrets.token_hex(2)}"
            if (NETNS_DIR / f"{candidate}-hub").exists():
                continue
            fd = _lock_instance(candidate, create=True)
            if fd is None:
                continue
            if _state_file(candidate).exists():  # a detached instance owns the name
                os.close(fd)
                continue
            self.instance_id = candidate
            self._lock_fd = fd
            return
        raise TestbedError("could not claim a free testbed instance name")

    def _save_state(self, *, detached: bool = False) -> None:
        state = self.describe()
        state["detached"] = detached
        path = _state_file(self.instance_id)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=2))
        temporary.replace(path)

    def _start_network(self) -> None:
        run_checked(["ip", "netns", "add", self.hub_netns])
        self._created_netns.append(self.hub_netns)
        run_checked(["ip", "-n", self.hub_netns, "link", "add", "br0", "type", "bridge"])
        run_checked(["ip", "-n", self.hub_netns, "link", "set", "br0", "up"])
        for host in self.hosts:
            self._created_netns.append(host.netns)  # before creation: teardown deletes it
        self._save_state()

    def _ensure_mountpoints(self) -> None:
        wanted = [mount_point for _, mount_point in HOST_BIND_MOUNTS]
        if self.journald:
            wanted += [mount_point for _, mount_point in JOURNAL_BIND_MOUNTS]
        self._created_mountpoints = _claim_mountpoints(self.instance_id, wanted)
        self._save_state()

    def _start_libvirtds(self) -> None:
        """Start every libvirtd; per flavour, hosts start from the seed of its QEMU
        capabilities cache, or (no seed yet) the first probes QEMU and the others copy it."""
        groups: dict[LibvirtFlavour, list[Host]] = {}
        for host in self.hosts:
            groups.setdefault(host.flavour, []).append(host)
        first_wave: list[Host] = []
        probers: list[tuple[Host, list[Host], Path]] = []
        for flavour, hosts in groups.items():
            seed = self.cache_dir / _capabilities_seed_name(flavour)
            if self.share_capabilities and any(seed.glob("*.xml")):
                for host in hosts:
                    _copy_capabilities(seed, host.cache_dir / CAPABILITIES_SUBDIR)
                first_wave += hosts
            elif not self.share_capabilities:
                first_wave += hosts
            else:
                first_wave.append(hosts[0])
                probers.append((hosts[0], hosts[1:], seed))
        self._start_wave(first_wave)
        for prober, _, seed in probers:
            _save_capabilities(prober.cache_dir / CAPABILITIES_SUBDIR, seed)
        for prober, followers, _ in probers:
            for host in followers:
                _copy_capabilities(prober.cache_dir / CAPABILITIES_SUBDIR,
                                   host.cache_dir / CAPABILITIES_SUBDIR)
        self._start_wave([host for _, followers, _ in probers for host in followers])

    def _start_wave(self, hosts: list[Host]) -> None:
        for host in hosts:
            host.start_libvirtd()
        for host in hosts:
            self.timings[f"libvirtd {host.name}"] = host.wait_libvirtd_ready(self.start_timeout)
            log.info("host %s: libvirtd answers after %.1f s", host.name,
                     self.timings[f"libvirtd {host.name}"])

    def _teardown_quietly(self) -> None:
        try:
            self.teardown()
        except Exception:
            log.exception("testbed %s: teardown after failure", self.instance_id)

    def _teardown_at_exit(self) -> None:
        log.warning("testbed %s still running at exit: tearing down", self.instance_id)
        self._teardown_quietly()


# ---------------------------------------------------------------------- module helpers


def _require_root() -> None:
    if os.geteuid() != 0:
        raise TestbedError("the testbed needs root (namespaces, mounts, libvirtd)")


def _state_file(instance_id: str) -> Path:
    return REGISTRY_DIR / f"{instance_id}.json"


def _remove_instance_files(instance_id: str) -> None:
    for suffix in (".json", ".lock"):
        (REGISTRY_DIR / f"{instance_id}{suffix}").unlink(missing_ok=True)


def _lock_instance(instance_id: str, *, create: bool = False) -> int | None:
    """Take the instance's lock without waiting: its fd, or None if another process has it.

    Whoever removes an instance unlinks its lock file while holding the lock, so a lock
    taken on a file that is no longer at the path is worthless: check the inode after.
    """
    path = REGISTRY_DIR / f"{instance_id}.lock"
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        except FileNotFoundError:
            if create:
                raise
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and current.st_ino == os.fstat(fd).st_ino:
            return fd
        os.close(fd)  # removed under us; try again on the new file
        if not create:
            return None
    raise TestbedError(f"lock file {path} keeps changing")


def _instance_is_owned(instance_id: str) -> bool:
    """True while the process that created the instance holds its lock."""
    if not (REGISTRY_DIR / f"{instance_id}.lock").exists():
        return False
    fd = _lock_instance(instance_id)
    if fd is None:
        return (REGISTRY_DIR / f"{instance_id}.lock").exists()
    os.close(fd)
    return False


def _read_state(instance_id: str) -> dict[str, Any]:
    try:
        return dict(json.loads(_state_file(instance_id).read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _instance_of_netns(netns: str) -> str:
    prefix, suffix = netns.split("-")[:2]
    return f"{prefix}-{suffix}"


def list_instances(prefix: str = DEFAULT_PREFIX) -> dict[str, dict[str, Any]]:
    """Known instances with this prefix: {instance: {"owned": bool, "detached": bool, ...}}."""
    names: set[str] = set()
    if REGISTRY_DIR.is_dir():
        names |= {path.stem for path in REGISTRY_DIR.glob(f"{prefix}-*.lock")}
        names |= {path.stem for path in REGISTRY_DIR.glob(f"{prefix}-*.json")}
    if NETNS_DIR.is_dir():
        names |= {_instance_of_netns(path.name) for path in NETNS_DIR.glob(f"{prefix}-*-*")}
    result = {}
    for name in sorted(names):
        state = _read_state(name)
        result[name] = {
            "owned": _instance_is_owned(name),
            "detached": bool(state.get("detached")),
            "directory": state.get("directory"),
            "hosts": state.get("hosts", []),
        }
    return result


def clean_stale_instances(
    prefix: str = DEFAULT_PREFIX, *, include_detached: bool = False
) -> list[str]:
    """Remove instances whose owner died (and detached ones if asked); return their names."""
    removed = []
    for name, info in list_instances(prefix).items():
        if info["owned"] or (info["detached"] and not include_detached):
            continue
        has_lock_file = (REGISTRY_DIR / f"{name}.lock").exists()
        fd = _lock_instance(name) if has_lock_file else None
        if has_lock_file and fd is None:
            continue  # claimed meanwhile
        try:
            log.warning("removing stale testbed %s", name)
            destroy_instance(name)  # unlinks the lock file while we hold the lock
        finally:
            if fd is not None:
                os.close(fd)
        removed.append(name)
    return removed


def destroy_instance(instance_id: str) -> None:
    """Remove an instance not owned by this process: kill what runs in its namespaces,
    delete the namespaces, its mountpoints, work directory and registry files."""
    state = _read_state(instance_id)
    namespaces = sorted(
        path.name for path in NETNS_DIR.glob(f"{instance_id}-*")
    ) if NETNS_DIR.is_dir() else []
    for netns in namespaces:
        terminate_all(pids_in_namespace(NETNS_DIR / netns))
    for netns in namespaces:
        _delete_netns(netns)
    _release_mountpoints(instance_id)
    directory = state.get("directory")
    if directory and Path(directory).name == instance_id:
        shutil.rmtree(directory, ignore_errors=True)
    _remove_instance_files(instance_id)


def _delete_netns(netns: str) -> None:
    if not (NETNS_DIR / netns).exists():
        return
    leftovers = pids_in_namespace(NETNS_DIR / netns)
    if leftovers:
        terminate_all(leftovers)
    run_checked(["ip", "netns", "delete", netns])


# Mountpoints (e.g. /etc/vfmigrate) are created on the real root only if absent, shared by
# all instances, and removed when the last instance that needed them goes away.
_MOUNTPOINTS_FILE = REGISTRY_DIR / "created-mountpoints.json"


@contextmanager
def _registry_locked() -> Iterator[dict[str, Any]]:
    REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(REGISTRY_DIR / "mountpoints.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            registry: dict[str, Any] = json.loads(_MOUNTPOINTS_FILE.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            registry = {}
        registry.setdefault("created", [])
        registry.setdefault("users", [])
        yield registry
        _MOUNTPOINTS_FILE.write_text(json.dumps(registry, indent=2))
    finally:
        os.close(fd)


def _claim_mountpoints(instance_id: str, wanted: list[str]) -> list[str]:
    """Create missing mountpoints; return the directories this call created."""
    created = []
    with _registry_locked() as registry:
        for mount_point in wanted:
            path = Path(mount_point)
            top_missing = None
            for candidate in [path, *path.parents]:
                if candidate.exists():
                    break
                top_missing = candidate
            if top_missing is None:
                continue
            path.mkdir(parents=True)
            created.append(str(top_missing))
        registry["created"] = sorted(set(registry["created"]) | set(created))
        registry["users"] = sorted(set(registry["users"]) | {instance_id})
    return created


def _release_mountpoints(instance_id: str) -> None:
    """Drop this instance's claim; the last live instance out removes created mountpoints."""
    with _registry_locked() as registry:
        users = [
            user
            for user in registry["users"]
            if user != instance_id
            and (_instance_is_owned(user) or _read_state(user).get("detached"))
        ]
        registry["users"] = users
        if users:
            return
        for directory in sorted(registry["created"], key=len, reverse=True):
            path = Path(directory)
            try:
                for subdir in sorted(path.rglob("*"), key=lambda p: len(str(p)), reverse=True):
                    subdir.rmdir()
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError as error:
                log.warning("left mountpoint %s in place: %s", path, error)
        registry["created"] = []


def _capabilities_seed_name(flavour: LibvirtFlavour) -> str:
    if flavour.name == "system":
        return "libvirt-qemu-capabilities"
    return f"libvirt-qemu-capabilities-{flavour.name}-{flavour.libvirt_version}"


def _copy_capabilities(source: Path, destination: Path) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    for cache_file in source.glob("*.xml"):
        shutil.copy2(cache_file, destination / cache_file.name)


def _save_capabilities(source: Path, destination: Path) -> None:
    """Refresh the persistent seed from a host's cache (atomic per file)."""
    if not any(source.glob("*.xml")):
        return
    destination.mkdir(parents=True, exist_ok=True)
    for cache_file in source.glob("*.xml"):
        temporary = destination / f".{cache_file.name}.{os.getpid()}"
        shutil.copy2(cache_file, temporary)
        temporary.replace(destination / cache_file.name)

