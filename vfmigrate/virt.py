"""The boundary to the libvirt API: connections and error translation.

Only the listener and the CLI come here; the hook never calls libvirt.
Decisions are made on ``libvirtError.get_error_code()``, never on its text.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable

from . import running
from .errors import LibvirtFailure


def import_libvirt():
    try:
        import libvirt
    except ImportError:
        raise LibvirtFailure(operation="import libvirt",
                             problem="python3-libvirt is not installed") from None
    return libvirt


def silence_libvirt_stderr(libvirt) -> None:
    """libvirt prints every error to stderr by default; vfmigrate reports its own."""
    libvirt.registerErrorHandler(lambda context, error: None, None)


def failure(operation: str, error: Exception) -> LibvirtFailure:
    """Turn a libvirtError into vfmigrate's LibvirtFailure, keeping its code."""
    code = error.get_error_code() if hasattr(error, "get_error_code") else None
    message = error.get_error_message() if hasattr(error, "get_error_message") else str(error)
    return LibvirtFailure(operation=operation, problem=message or str(error), code=code)


def libvirt_version_probe(uri: str) -> Callable[[], tuple[int, str]] | None:
    """A function returning (version, what) of the daemon at ``uri``, or the library's."""
    try:
        libvirt = import_libvirt()
    except LibvirtFailure:
        return None

    def probe() -> tuple[int, str]:
        try:
            connection = libvirt.openReadOnly(uri)
        except libvirt.libvirtError:
            return libvirt.getVersion(), "libvirt client library (daemon not reachable)"
        try:
            return connection.getLibVersion(), f"libvirt at {uri}"
        except libvirt.libvirtError as error:
            raise failure("getLibVersion", error) from None
        finally:
            connection.close()
    return probe


class Guest(namedtuple("Guest", "uuid name persistent xml")):
    """A guest as libvirt reports it; ``xml`` is its live (or inactive) XML, bytes."""

    __slots__ = ()


class LibvirtHost:
    """The calls vfmigrate makes on one libvirt connection, errors translated.

    A guest that disappears while being looked at is ``None``, not an error.
    """

    def __init__(self, connection, libvirt_module=None, *,
                 status_dir: str | None = None) -> None:
        self.connection = connection
        self.libvirt = libvirt_module or import_libvirt()
        #: libvirt's directory of running guests' status files, on a local connection: the
        #: live XML of a guest paused by a migration is read there (see :meth:`_guest`).
        self.status_dir = status_dir

    @classmethod
    def open(cls, uri: str, opener: Callable[[str], object] | None = None) -> "LibvirtHost":
        libvirt = import_libvirt()
        silence_libvirt_stderr(libvirt)
        try:
            connection = (opener or libvirt.open)(uri)
        except libvirt.libvirtError as error:
            raise failure(f"connect to {uri}", error) from None
        return cls(connection, libvirt)

    def close(self) -> None:
        try:
            self.connection.close()
        except self.libvirt.libvirtError:
            pass

    def _gone(self, error: Exception) -> bool:
        return error.get_error_code() == self.libvirt.VIR_ERR_NO_DOMAIN

    def _guest(self, domain, inactive: bool = False) -> Guest | None:
        flags = self.libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        try:
            xml = None
            if not inactive and self.status_dir is not None \
                    and self._paused_by_migration(*domain.state()):
                # libvirt 11 makes a live XMLDesc wait for the migration's job to end
                # (up to 30 s, seen on the destination); the status file holds the same
                # live definition and needs no job.
                xml = running.status_domain_xml(self.status_dir, domain.name())
            if xml is None:
                xml = domain.XMLDesc(flags).encode()
            return Guest(domain.UUIDString(), domain.name(), bool(domain.isPersistent()), xml)
        except self.libvirt.libvirtError as error:
            if self._gone(error):
                return None
            raise failure("read domain XML", error) from None

    def _paused_by_migration(self, state: int, reason: int) -> bool:
        """libvirt's state and reason say an incoming or outgoing migration paused it."""
        libvirt = self.libvirt
        return state == libvirt.VIR_DOMAIN_PAUSED and reason in (
            libvirt.VIR_DOMAIN_PAUSED_MIGRATION, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP,
            libvirt.VIR_DOMAIN_PAUSED_POSTCOPY)

    def active_guests(self) -> list[Guest]:
        try:
            domains = self.connection.listAllDomains(
                self.libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        except self.libvirt.libvirtError as error:
            raise failure("list domains", error) from None
        return [guest for guest in map(self._guest, domains) if guest is not None]

    def _lookup(self, uuid: str):
        try:
            return self.connection.lookupByUUIDString(uuid)
        except self.libvirt.libvirtError as error:
            if self._gone(error):
                return None
            raise failure(f"look up domain {uuid}", error) from None

    def lookup_name(self, name: str):
        try:
            return self.connection.lookupByName(name)
        except self.libvirt.libvirtError as error:
            raise failure(f"look up domain '{name}'", error) from None

    def guest(self, uuid: str, inactive: bool = False) -> Guest | None:
        """The guest if it is defined or running; its live XML unless ``inactive``."""
        domain = self._lookup(uuid)
        return None if domain is None else self._guest(domain, inactive)

    def is_active(self, uuid: str) -> bool:
        domain = self._lookup(uuid)
        try:
            return domain is not None and bool(domain.isActive())
        except self.libvirt.libvirtError as error:
            if self._gone(error):
                return False
            raise failure("isActive", error) from None

    def set_metadata(self, uuid: str, element: str, namespace: str, prefix: str, *,
                     live: bool, config: bool) -> bool:
        """Replace vfmigrate's metadata element; False if the guest is gone."""
        domain = self._lookup(uuid)
        if domain is None:
            return False
        flags = ((self.libvirt.VIR_DOMAIN_AFFECT_LIVE if live else 0)
                 | (self.libvirt.VIR_DOMAIN_AFFECT_CONFIG if config else 0))
        try:
            domain.setMetadata(self.libvirt.VIR_DOMAIN_METADATA_ELEMENT, element, prefix,
                               namespace, flags)
        except self.libvirt.libvirtError as error:
            if self._gone(error):
                return False
            raise failure("setMetadata", error) from None
        return True

    def remove_metadata(self, uuid: str, namespace: str, *, live: bool, config: bool) -> bool:
        """Drop the metadata element of ``namespace``; False if the guest is gone."""
        domain = self._lookup(uuid)
        if domain is None:
            return False
        try:
            domain.setMetadata(self.libvirt.VIR_DOMAIN_METADATA_ELEMENT, None, None, namespace,
                               self._flags(live, config))
        except self.libvirt.libvirtError as error:
            if self._gone(error):
                return False
            raise failure("setMetadata", error) from None
        return True

    def metadata(self, uuid: str, namespace: str, *, inactive: bool = False) -> str | None:
        """The metadata element of ``namespace`` (live, or of the saved definition)."""
        domain = self._lookup(uuid)
        if domain is None:
            return None
        flags = self.libvirt.VIR_DOMAIN_AFFECT_CONFIG if inactive else 0
        try:
            return domain.metadata(self.libvirt.VIR_DOMAIN_METADATA_ELEMENT, namespace, flags)
        except self.libvirt.libvirtError as error:
            if self._gone(error) or error.get_error_code() == \
                    self.libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                return None
            raise failure("read metadata", error) from None

    def state(self, uuid: str) -> tuple[int, int] | None:
        """libvirt's (state, reason) of the guest, None if it is gone."""
        domain = self._lookup(uuid)
        if domain is None:
            return None
        try:
            state, reason = domain.state()
        except self.libvirt.libvirtError as error:
            if self._gone(error):
                return None
            raise failure("read domain state", error) from None
        return state, reason

    def arrived_by_migration(self, uuid: str) -> bool:
        """libvirt's own word that the running guest came here by an incoming migration
        and has not been paused or resumed since: state reason ``migrated``)."""
        libvirt = self.libvirt
        return self.state(uuid) == (libvirt.VIR_DOMAIN_RUNNING,
                                    libvirt.VIR_DOMAIN_RUNNING_MIGRATED)

    def migration_job_running(self, uuid: str) -> bool:
        """Whether libvirt runs a job on the guest (a migration in or out, a save …) or
        it is still paused by an incoming migration."""
        libvirt = self.libvirt
        domain = self._lookup(uuid)
        if domain is None:
            return False
        try:
            state, reason = domain.state()
            stats = domain.jobStats()
        except libvirt.libvirtError as error:
            if self._gone(error):
                return False
            if error.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
                return False   # a driver without jobs runs no migration (libvirt's test driver)
            if error.get_error_code() == libvirt.VIR_ERR_OPERATION_UNSUPPORTED:
                # libvirt 9.0 on the destination of a running incoming migration:
                # "migration statistics are available only on the source host" (seen).
                return True
            raise failure("read job stats", error) from None
        if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) != libvirt.VIR_DOMAIN_JOB_NONE:
            return True
        return self._paused_by_migration(state, reason)

    def host_uuid(self) -> str:
        """This host's UUID from libvirt's capabilities (its hostname if none)."""
        import xml.etree.ElementTree as ElementTree
        if getattr(self, "_host_uuid", None):
            return self._host_uuid
        try:
            capabilities = self.connection.getCapabilities()
            uuid = ElementTree.fromstring(capabilities).findtext("host/uuid")
            self._host_uuid = (uuid or self.connection.getHostname()).strip()
        except self.libvirt.libvirtError as error:
            raise failure("read capabilities", error) from None
        return self._host_uuid

    def define(self, xml: bytes) -> None:
        try:
            self.connection.defineXML(xml.decode())
        except self.libvirt.libvirtError as error:
            raise failure("defineXML", error) from None

    def _flags(self, live: bool, config: bool) -> int:
        return ((self.libvirt.VIR_DOMAIN_AFFECT_LIVE if live else 0)
                | (self.libvirt.VIR_DOMAIN_AFFECT_CONFIG if config else 0))

    def _required(self, uuid: str):
        domain = self._lookup(uuid)
        if domain is None:
            raise LibvirtFailure(operation=f"look up domain {uuid}", problem="no such domain",
                                 code=self.libvirt.VIR_ERR_NO_DOMAIN)
        return domain

    def attach_device(self, uuid: str, xml: str, *, live: bool, config: bool) -> None:
        try:
            self._required(uuid).attachDeviceFlags(xml, self._flags(live, config))
        except self.libvirt.libvirtError as error:
            raise failure("attach device", error) from None

    def detach_device_alias(self, uuid: str, alias: str, *, live: bool, config: bool) -> None:
        """Ask the guest to unplug a device; DEVICE_REMOVED says when it did."""
        try:
            self._required(uuid).detachDeviceAlias(alias, self._flags(live, config))
        except self.libvirt.libvirtError as error:
            raise failure(f"detach device {alias}", error) from None

    def versions(self) -> tuple[int, int]:
        """(libvirt daemon version, hypervisor version), as numbers like 9000000."""
        try:
            return self.connection.getLibVersion(), self.connection.getVersion()
        except self.libvirt.libvirtError as error:
            raise failure("read versions", error) from None

    def node_device_xmls(self, capability: int) -> list[str]:
        try:
            devices = self.connection.listAllDevices(capability)
            return [device.XMLDesc(0) for device in devices]
        except self.libvirt.libvirtError as error:
            raise failure("list node devices", error) from None

    def numa_cells(self) -> dict[int, frozenset[int]]:
        """The host's NUMA cells and their CPU ids, from its capabilities ({} if none
        are reported)."""
        import xml.etree.ElementTree as ElementTree
        try:
            root = ElementTree.fromstring(self.connection.getCapabilities())
        except self.libvirt.libvirtError as error:
            raise failure("read capabilities", error) from None
        cells: dict[int, frozenset[int]] = {}
        for cell in root.iterfind("host/topology/cells/cell"):
            try:
                cells[int(cell.get("id", ""))] = frozenset(
                    int(cpu.get("id", "")) for cpu in cell.iterfind("cpus/cpu"))
            except ValueError:
                continue
        return cells

    def hostdev_networks(self) -> dict[str, list[str]]:
        """libvirt networks with ``<forward mode='hostdev'>``: name -> PF netdevs."""
        import xml.etree.ElementTree as ElementTree
        result: dict[str, list[str]] = {}
        try:
            networks = self.connection.listAllNetworks()
            for network in networks:
                root = ElementTree.fromstring(network.XMLDesc(0))
                forward = root.find("forward")
                if forward is not None and forward.get("mode") == "hostdev":
                    result[network.name()] = [pf.get("dev") for pf in forward.findall("pf")]
        except self.libvirt.libvirtError as error:
            raise failure("list networks", error) from None
        return result

    def migrate(self, uuid: str, destination_uri: str, *, p2p: bool, persistent: bool,
                undefine_source: bool, bandwidth_mib: int | None,
                destination: "LibvirtHost | None" = None) -> None:
        """A live migration (libvirt's migrateToURI3 for p2p, migrate3 otherwise)."""
        libvirt = self.libvirt
        flags = libvirt.VIR_MIGRATE_LIVE
        if p2p:
            flags |= libvirt.VIR_MIGRATE_PEER2PEER
        if persistent:
            flags |= libvirt.VIR_MIGRATE_PERSIST_DEST
        if undefine_source:
            flags |= libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        params = {}
        if bandwidth_mib:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(bandwidth_mib)
        domain = self._required(uuid)
        try:
            if p2p:
                domain.migrateToURI3(destination_uri, params, flags)
            else:
                if destination is None:
                    raise ValueError("a direct migration needs the destination's connection")
                domain.migrate3(destination.connection, params, flags)
        except libvirt.libvirtError as error:
            raise failure(f"migrate to {destination_uri}", error) from None

    def abort_job(self, uuid: str) -> bool:
        """Abort the guest's running job (a migration); False if none ran or it is gone."""
        domain = self._lookup(uuid)
        if domain is None:
            return False
        try:
            domain.abortJob()
        except self.libvirt.libvirtError as error:
            if self._gone(error) \
                    or error.get_error_code() == self.libvirt.VIR_ERR_OPERATION_INVALID:
                return False
            raise failure("abort job", error) from None
        return True

    def suspend(self, uuid: str) -> None:
        """Pause the guest (virsh migrate --timeout does this so a migration converges)."""
        try:
            self._required(uuid).suspend()
        except self.libvirt.libvirtError as error:
            raise failure("suspend", error) from None
