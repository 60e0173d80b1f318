"""Fake sysfs trees shaped like real SR-IOV cards, under any root directory.

The host kernel here has no SR-IOV, so tests, benchmarks and the namespaced
testbed give vfmigrate a root (``sysfs_root``) holding the same links and
files a real ``/sys`` has::

    devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0/        PF
        vendor device numa_node sriov_numvfs sriov_totalvfs
        driver -> ../../../../bus/pci/drivers/ice
        virtfn0 -> ../0000:3b:01.0
        net/ens1f0/
    devices/pci0000:3a/0000:3a:00.0/0000:3b:01.0/        VF
        physfn -> ../0000:3b:00.0   driver -> …/iavf   net/ens1f0v0/   iommu_group
    bus/pci/devices/0000:3b:00.0 -> ../../../devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0
    bus/pci/drivers/{ice,iavf,vfio-pci}/
    class/net/ens1f0 -> ../../devices/…/0000:3b:00.0/net/ens1f0
    kernel/iommu_groups/N/devices/<vf> -> …

VF routing IDs follow the card's ``First VF Offset`` and ``VF Stride`` as
the real cards report them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vfmigrate.pci import PciAddress


@dataclass(frozen=True)
class Card:
    model: str
    vendor: int
    pf_device: int
    vf_device: int
    pf_driver: str
    vf_driver: str
    vf_offset: int
    vf_stride: int
    total_vfs: int
    pci_class: int = 0x020000   # Ethernet controller


E810 = Card("Intel E810-C", 0x8086, 0x1593, 0x1889, "ice", "iavf", 0x8, 1, 256)
X710 = Card("Intel X710", 0x8086, 0x1572, 0x154C, "i40e", "iavf", 0x10, 1, 64)
CONNECTX5 = Card("Mellanox ConnectX-5", 0x15B3, 0x1017, 0x1018, "mlx5_core", "mlx5_core",
                 0x2, 1, 127)
IGB_82576 = Card("Intel 82576 (QEMU igb)", 0x8086, 0x10C9, 0x10CA, "igb", "igbvf", 0x80, 2, 7)
# Not a NIC: an NVMe SSD with SR-IOV (virtual functions are NVMe controllers).
NVME_PM1733 = Card("Samsung PM1733 NVMe", 0x144D, 0xA824, 0xA824, "nvme", "nvme", 0x1, 1, 32,
                   pci_class=0x010802)


class FakeSysfs:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._next_iommu_group = 100
        for directory in ("bus/pci/devices", "bus/pci/drivers/vfio-pci", "class/net",
                          "kernel/iommu_groups"):
            (self.root / directory).mkdir(parents=True, exist_ok=True)

    def add_numa_node(self, node: int, cpulist: str) -> None:
        """A NUMA node with its CPUs (``devices/system/node/nodeN/cpulist``)."""
        directory = self.root / "devices" / "system" / "node" / f"node{node}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cpulist").write_text(f"{cpulist}\n")

    def add_pf(self, card: Card, address: str, netdev: str, num_vfs: int, *,
               numa_node: int = 0, vfio_vfs: int = 0) -> list[PciAddress]:
        """Add a PF with ``num_vfs`` VFs; the first ``vfio_vfs`` are bound to vfio-pci.

        Returns the VF addresses in VF index order.
        """
        pf = PciAddress.parse(address)
        bridge = f"pci{pf.domain:04x}:{pf.bus - 1 & 0xFF:02x}"
        parent = self.root / "devices" / bridge / f"{pf.domain:04x}:{pf.bus - 1 & 0xFF:02x}:00.0"
        pf_dir = self._device(parent, pf, card, card.pf_device, card.pf_driver, numa_node)
        (pf_dir / "sriov_totalvfs").write_text(f"{card.total_vfs}\n")
        (pf_dir / "sriov_numvfs").write_text(f"{num_vfs}\n")
        (pf_dir / "sriov_offset").write_text(f"{card.vf_offset}\n")
        (pf_dir / "sriov_stride").write_text(f"{card.vf_stride}\n")
        if card.pci_class >> 16 == 0x02:
            self._netdev(pf_dir, netdev)
        routing_id = (pf.bus << 8) | (pf.slot << 3) | pf.function
        vfs = []
        for index in range(num_vfs):
            rid = routing_id + card.vf_offset + index * card.vf_stride
            vf = PciAddress(pf.domain, rid >> 8, (rid >> 3) & 0x1F, rid & 7)
            driver = "vfio-pci" if index < vfio_vfs else card.vf_driver
            vf_dir = self._device(parent, vf, card, card.vf_device, driver, numa_node)
            os.symlink(f"../{pf}", vf_dir / "physfn")
            os.symlink(f"../{vf}", pf_dir / f"virtfn{index}")
            if driver != "vfio-pci" and card.pci_class >> 16 == 0x02:
                self._netdev(vf_dir, f"{netdev}v{index}")
            self._iommu_group(vf_dir, vf)
            vfs.append(vf)
        return vfs

    def remove_vfs(self, pf_address: str) -> None:
        """What ``echo 0 > sriov_numvfs`` does: the PF's VFs vanish."""
        pf_dir = (self.root / "bus/pci/devices" / pf_address).resolve()
        for link in sorted(pf_dir.glob("virtfn*")):
            vf_dir = (pf_dir / os.readlink(link)).resolve()
            link.unlink()
            for net in (vf_dir / "net").glob("*") if (vf_dir / "net").exists() else ():
                (self.root / "class/net" / net.name).unlink(missing_ok=True)
            (self.root / "bus/pci/devices" / vf_dir.name).unlink()
            _remove_tree(vf_dir)
        (pf_dir / "sriov_numvfs").write_text("0\n")

    # -- pieces -------------------------------------------------------------

    def _device(self, parent: Path, address: PciAddress, card: Card, device: int,
                driver: str, numa_node: int) -> Path:
        directory = parent / str(address)
        directory.mkdir(parents=True)
        (directory / "vendor").write_text(f"0x{card.vendor:04x}\n")
        (directory / "class").write_text(f"0x{card.pci_class:06x}\n")
        (directory / "device").write_text(f"0x{device:04x}\n")
        (directory / "numa_node").write_text(f"{numa_node}\n")
        driver_dir = self.root / "bus/pci/drivers" / driver
        driver_dir.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(driver_dir, directory), directory / "driver")
        os.symlink(os.path.relpath(directory, self.root / "bus/pci/devices"),
                   self.root / "bus/pci/devices" / str(address))
        return directory

    def _netdev(self, device_dir: Path, name: str) -> None:
        net = device_dir / "net" / name
        net.mkdir(parents=True)
        os.symlink("../../../" + device_dir.name, net / "device")
        os.symlink(os.path.relpath(net, self.root / "class/net"), self.root / "class/net" / name)

    def _iommu_group(self, device_dir: Path, address: PciAddress) -> None:
        group = self.root / "kernel/iommu_groups" / str(self._next_iommu_group)
        self._next_iommu_group += 1
        (group / "devices").mkdir(parents=True)
        os.symlink(os.path.relpath(device_dir, group / "devices"), group / "devices" / str(address))
        os.symlink(os.path.relpath(group, device_dir), device_dir / "iommu_group")


def _remove_tree(path: Path) -> None:
    for child in path.iterdir():
        if child.is_symlink() or child.is_file():
            child.unlink()
        else:
            _remove_tree(child)
    path.rmdir()
