"""Domain XML for the testbed's guests, and reading their serial logs.

Both guests are ``<domain type='qemu'>`` (TCG: /dev/kvm here cannot run guests), q35 by
default (PCIe, so later work can hot-plug into the spare ``pcie-root-port`` controllers),
with no memory balloon, no USB, no graphics. Every path in the XML must mean the same file on
every host, so pass paths outside the per-host bind mounts: the Linux image from the test
cache, serial logs under ``Testbed.shared_dir``. A serial log is opened in append mode so
that source and destination QEMU write one continuous file across a migration.

* :func:`no_os_guest_xml`: 64 MiB, no disk, no OS (SeaBIOS finds nothing to boot); starts in
  ~0.5 s; migrates in ~2 s. It never acknowledges a PCI unplug.
* :func:`linux_guest_xml`: direct kernel boot of :class:`~.linux_guest.LinuxGuestImage`
  with one virtio NIC on the hosts' ``vmbr0`` bridge (192.0.2.129/25 on every host) and the
  guest at 192.0.2.130/25 by default; the guest prints ``VFM-GUEST: ...`` lines (see
  guest_init.sh), ``VFM-GUEST: ready`` when its NIC is up, then a tick every second.
"""

from __future__ import annotations

import hashlib
import re
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from pathlib import Path

from .errors import WaitTimeout
from .host import GUEST_BRIDGE
from .linux_guest import LinuxGuestImage
from .processes import POLL_INTERVAL, file_tail

READY_LINE = "VFM-GUEST: ready"
GUEST_ADDRESS = "192.0.2.130/25"
DEFAULT_HOTPLUG_PORTS = 4


def guest_mac(name: str) -> str:
    """A stable locally administered MAC for guest ``name`` (52:54:00 is QEMU's prefix)."""
    digest = hashlib.sha256(name.encode()).digest()
    return "52:54:00:" + ":".join(f"{byte:02x}" for byte in digest[:3])


def virtio_bridge_interface_xml(mac: str, bridge: str = GUEST_BRIDGE) -> str:
    """``<interface type='bridge'>`` with a virtio NIC on ``bridge`` (present on all hosts)."""
    interface = ElementTree.Element("interface", type="bridge")
    ElementTree.SubElement(interface, "mac", address=mac)
    ElementTree.SubElement(interface, "source", bridge=bridge)
    ElementTree.SubElement(interface, "model", type="virtio")
    return ElementTree.tostring(interface, encoding="unicode")


def no_os_guest_xml(
    name: str,
    *,
    memory_mib: int = 64,
    machine: str = "q35",
    serial_log: Path | None = None,
    devices: Sequence[str] = (),
    hotplug_ports: int = 0,
) -> str:
    """A guest with no OS and no disk; ``devices`` are extra ``<devices>`` XML fragments."""
    domain, device_list = _domain_skeleton(name, memory_mib, 1, machine)
    ElementTree.SubElement(domain.find("os"), "boot", dev="hd")  # type: ignore[arg-type]
    _add_common_devices(device_list, serial_log, hotplug_ports, machine)
    _add_fragments(device_list, devices)
    return ElementTree.tostring(domain, encoding="unicode")


def linux_guest_xml(
    name: str,
    image: LinuxGuestImage,
    serial_log: Path,
    *,
    memory_mib: int = 256,
    vcpus: int = 1,
    machine: str = "q35",
    address: str | None = GUEST_ADDRESS,
    address_device: str = "eth0",
    interfaces: Sequence[str] | None = None,
    devices: Sequence[str] = (),
    hotplug_ports: int = DEFAULT_HOTPLUG_PORTS,
    kernel_args: Sequence[str] = ("loglevel=4",),
) -> str:
    """The tiny Linux guest booting ``image`` directly; its console goes to ``serial_log``.

    ``interfaces`` replaces the default single virtio NIC on ``vmbr0`` (``[]`` for none);
    ``address`` is configured by the guest on ``address_device``.
    """
    domain, device_list = _domain_skeleton(name, memory_mib, vcpus, machine)
    os_element = domain.find("os")
    assert os_element is not None
    ElementTree.SubElement(os_element, "kernel").text = str(image.kernel)
    ElementTree.SubElement(os_element, "initrd").text = str(image.initrd)
    arguments = ["console=ttyS0", "panic=-1", *kernel_args]
    if address:
        arguments += [f"vfm.ip={address}", f"vfm.dev={address_device}"]
    ElementTree.SubElement(os_element, "cmdline").text = " ".join(arguments)
    if interfaces is None:
        interfaces = [virtio_bridge_interface_xml(guest_mac(name))]
    _add_fragments(device_list, interfaces)
    _add_common_devices(device_list, serial_log, hotplug_ports, machine)
    _add_fragments(device_list, devices)
    return ElementTree.tostring(domain, encoding="unicode")


def _domain_skeleton(
    name: str, memory_mib: int, vcpus: int, machine: str
) -> tuple[ElementTree.Element, ElementTree.Element]:
    domain = ElementTree.Element("domain", type="qemu")
    ElementTree.SubElement(domain, "name").text = name
    ElementTree.SubElement(domain, "memory", unit="MiB").text = str(memory_mib)
    ElementTree.SubElement(domain, "vcpu").text = str(vcpus)
    os_element = ElementTree.SubElement(domain, "os")
    ElementTree.SubElement(os_element, "type", arch="x86_64", machine=machine).text = "hvm"
    features = ElementTree.SubElement(domain, "features")
    ElementTree.SubElement(features, "acpi")
    ElementTree.SubElement(features, "apic")
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        ElementTree.SubElement(domain, event).text = "destroy"
    devices = ElementTree.SubElement(domain, "devices")
    return domain, devices


def _add_common_devices(
    devices: ElementTree.Element, serial_log: Path | None, hotplug_ports: int, machine: str
) -> None:
    ElementTree.SubElement(devices, "controller", type="usb", model="none")
    if machine.startswith("q35") or machine.startswith("pc-q35"):
        # Indexes 1..N (0 is pcie-root); libvirt adds more ports for the guest's devices.
        for index in range(1, hotplug_ports + 1):
            ElementTree.SubElement(
                devices, "controller", type="pci", index=str(index), model="pcie-root-port"
            )
    if serial_log is not None:
        serial = ElementTree.SubElement(devices, "serial", type="file")
        ElementTree.SubElement(serial, "source", path=str(serial_log), append="on")
        ElementTree.SubElement(serial, "target", port="0")
    ElementTree.SubElement(devices, "memballoon", model="none")


def _add_fragments(devices: ElementTree.Element, fragments: Sequence[str]) -> None:
    for fragment in fragments:
        devices.append(ElementTree.fromstring(fragment))


class SerialLog:
    """A guest's serial log file (append mode, so it spans migrations)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def text(self) -> str:
        try:
            return self.path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def guest_lines(self) -> list[str]:
        """The ``VFM-GUEST: ...`` lines, without the prefix."""
        return [
            line.split("VFM-GUEST: ", 1)[1].strip()
            for line in self.text().splitlines()
            if "VFM-GUEST: " in line
        ]

    def wait_for(self, pattern: str, *, timeout: float, after: int = 0) -> re.Match[str]:
        """Wait until regex ``pattern`` matches the log from byte offset ``after`` on."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.path.open("rb") as handle:
                    handle.seek(after)
                    match = compiled.search(handle.read().decode(errors="replace"))
            except FileNotFoundError:
                match = None
            if match:
                return match
            if time.monotonic() >= deadline:
                raise WaitTimeout(
                    what=f"{pattern!r} in serial log {self.path}",
                    timeout=timeout,
                    details=file_tail(self.path, 30),
                )
            time.sleep(POLL_INTERVAL * 2)

    def wait_ready(self, *, timeout: float = 90.0, after: int = 0) -> re.Match[str]:
        return self.wait_for(re.escape(READY_LINE), timeout=timeout, after=after)

    def last_tick(self) -> int:
        """The highest ``tick N`` the guest has printed (0 if none yet)."""
        ticks = re.findall(r"VFM-GUEST: tick (\d+)", self.text())
        return int(ticks[-1]) if ticks else 0
