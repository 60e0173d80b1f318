"""The boundary to the libvirt API: connections and error translation.

Only the listener and the CLI come here; the hook never calls libvirt.
Decisions are made on ``libvirtError.get_error_code()``, never on its text.
"""

from __future__ import annotations

from typing import Callable

from .errors import LibvirtFailure


def import_libvirt():
    try:
        import libvirt
    except ImportError:
        raise LibvirtFailure(operation="import libvirt",
                             problem="python3-libvirt is not installed") from None
    return libvirt


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
