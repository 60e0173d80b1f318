"""Inventory over fake sysfs trees shaped like real cards."""

from __future__ import annotations

import pytest

from tests.fakesysfs import CONNECTX5, E810, IGB_82576, X710, FakeSysfs
from vfmigrate.config import NetworkConfig
from vfmigrate.inventory import Inventory
from vfmigrate.pci import PciAddress


@pytest.fixture
def sysfs(tmp_path) -> FakeSysfs:
    return FakeSysfs(tmp_path / "sys")


@pytest.mark.parametrize("card, pf, first_vfs", [
    (E810, "0000:3b:00.0", ["0000:3b:01.0", "0000:3b:01.1"]),
    (X710, "0000:5e:00.1", ["0000:5e:02.1", "0000:5e:02.2"]),
    (CONNECTX5, "0000:af:00.0", ["0000:af:00.2", "0000:af:00.3"]),
    (IGB_82576, "0000:01:00.0", ["0000:01:10.0", "0000:01:10.2"]),
])
def test_vfs_of_real_card_shapes(sysfs, card, pf, first_vfs):
    vfs = sysfs.add_pf(card, pf, "enp1", 2, numa_node=1, vfio_vfs=1)
    assert [str(vf) for vf in vfs] == first_vfs
    inventory = Inventory(sysfs.root, [NetworkConfig("net", ("enp1",))])
    found = inventory.vfs_of_network("net")
    assert [(str(vf.address), str(vf.pf), vf.index) for vf in found] == \
        [(first_vfs[0], pf, 0), (first_vfs[1], pf, 1)]
    bound, unbound = (inventory.details(vf.address) for vf in found)
    assert (bound.driver, bound.netdevs) == ("vfio-pci", ())
    assert (unbound.driver, unbound.netdevs) == (card.vf_driver, ("enp1v1",))
    assert (unbound.vendor, unbound.device, unbound.numa_node) == \
        (f"0x{card.vendor:04x}", f"0x{card.vf_device:04x}", 1)
    [pf_details] = inventory.pf_details("net")
    assert (pf_details.num_vfs, pf_details.total_vfs) == (2, card.total_vfs)


def test_pf_by_address_and_missing_pf(sysfs):
    sysfs.add_pf(E810, "0000:3b:00.0", "ens1f0", 2)
    inventory = Inventory(sysfs.root, [NetworkConfig("n", ("0000:3b:00.0", "ens9", "0000:99:00.0"))])
    assert [str(pf) for pf in inventory.pfs_of_network("n")] == ["0000:3b:00.0"]
    assert inventory.missing_pfs["n"] == ["ens9", "0000:99:00.0"]


def test_find_vf_maps_an_address_to_its_network(sysfs):
    sysfs.add_pf(E810, "0000:3b:00.0", "ens1f0", 2)
    vfs = sysfs.add_pf(X710, "0000:5e:00.0", "ens2f0", 2)
    inventory = Inventory(sysfs.root, [NetworkConfig("a", ("ens1f0",)),
                                       NetworkConfig("b", ("ens2f0",))])
    assert inventory.find_vf(vfs[1]).network == "b"
    assert inventory.find_vf(PciAddress.parse("0000:3b:00.0")) is None   # a PF
    assert inventory.find_vf(PciAddress.parse("0000:01:00.0")) is None   # absent


def test_vfs_vanish_when_sriov_numvfs_drops(sysfs):
    vfs = sysfs.add_pf(E810, "0000:3b:00.0", "ens1f0", 2)
    sysfs.remove_vfs("0000:3b:00.0")
    inventory = Inventory(sysfs.root, [NetworkConfig("a", ("ens1f0",))])
    assert inventory.vfs_of_network("a") == []
    assert inventory.find_vf(vfs[0]) is None


@pytest.mark.parametrize("first, second", [("ens1f0", "0000:3b:00.0"),
                                           ("0000:3B:00.0", "ens1f0")])
def test_a_pf_in_two_networks_by_name_and_address_is_a_config_error(sysfs, first, second):
    from vfmigrate.errors import ConfigError, exit_code_for
    vfs = sysfs.add_pf(E810, "0000:3b:00.0", "ens1f0", 2)
    sysfs.add_pf(X710, "0000:5e:00.0", "ens2f0", 2)
    inventory = Inventory(sysfs.root, [NetworkConfig("physnet1", (first,)),
                                       NetworkConfig("physnet2", ("ens2f0", second))])
    for look in (lambda: inventory.vfs_of_network("physnet2"),
                 lambda: inventory.find_vf(vfs[0]), lambda: inventory.pf_details("physnet1")):
        with pytest.raises(ConfigError) as caught:
            look()
        assert str(caught.value) == (
            f"PF 0000:3b:00.0 is in network 'physnet1' (as {first}) and in network "
            f"'physnet2' (as {second}); a PF may be in one network only: remove it from "
            "one [network] section")
        assert exit_code_for(caught.value) == 4


def test_the_same_pf_twice_in_one_network_gives_its_vfs_once(sysfs):
    vfs = sysfs.add_pf(E810, "0000:3b:00.0", "ens1f0", 2)
    inventory = Inventory(sysfs.root, [NetworkConfig("n", ("ens1f0", "0000:3b:00.0"))])
    assert [vf.address for vf in inventory.vfs_of_network("n")] == vfs
