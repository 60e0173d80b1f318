"""vfmigrate's multi-host libvirt testbed and tiny guests (test support, needs root).

``Testbed`` (testbed.py) runs N real libvirtd hosts in network + mount + UTS namespaces on
this machine; ``Host`` (host.py) is one of them; guests.py returns domain XML for a no-OS
guest and a tiny Linux guest whose kernel + initramfs linux_guest.py builds from Debian
packages and caches. fixtures.py has pytest fixtures; ``python -m tests.testbed`` a CLI.
"""

from .errors import CommandFailed, TeardownIncomplete, TestbedError, WaitTimeout
from .guests import SerialLog, linux_guest_xml, no_os_guest_xml
from .host import GUEST_BRIDGE, GUEST_BRIDGE_ADDRESS, Host, MigrationResult
from .linux_guest import LinuxGuestImage, build_linux_guest
from .testbed import Testbed, clean_stale_instances, default_cache_dir, destroy_instance

__all__ = [
    "GUEST_BRIDGE",
    "GUEST_BRIDGE_ADDRESS",
    "CommandFailed",
    "Host",
    "LinuxGuestImage",
    "MigrationResult",
    "SerialLog",
    "TeardownIncomplete",
    "Testbed",
    "TestbedError",
    "WaitTimeout",
    "build_linux_guest",
    "clean_stale_instances",
    "default_cache_dir",
    "destroy_instance",
    "linux_guest_xml",
    "no_os_guest_xml",
]
