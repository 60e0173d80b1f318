"""NUMA affinity: which VF the hook gives a pinned guest (vfmigrate.numa, issue 16).

The host: two NUMA nodes (CPUs 0-7 and 8-15) and one network whose two PFs sit one
on each node, 4 VFs each, as on a two-socket server with a NIC per socket.
"""

from __future__ import annotations

import pytest

from tests.fakesysfs import E810
from vfmigrate import config as configuration
from vfmigrate.errors import ConfigSyntaxError
from vfmigrate.numa import BadCpuset, format_set, parse_set

from .domains import teaming_guest

SOURCE_VF = "0000:5e:02.3"   # the source host's address: means nothing here


@pytest.fixture
def numa_host(host):
    """``host`` rebuilt as a two-node server; ``host.near`` are node 0's VFs, ``host.far``
    node 1's; ``host.set_affinity(policy)`` rewrites the config."""
    host.sysfs.add_numa_node(0, "0-7")
    host.sysfs.add_numa_node(1, "8-15")
    host.node0_vfs = host.sysfs.add_pf(E810, "0000:18:00.0", "ens3f0", 4, numa_node=0)
    host.node1_vfs = host.sysfs.add_pf(E810, "0000:86:00.0", "ens4f0", 4, numa_node=1)

    def set_affinity(policy: str | None) -> None:
        setting = f"numa_affinity = {policy}\n" if policy else ""
        host.config_path.write_text(
            f"[vfmigrate]\nstate_dir = {host.state_dir}\nsysfs_root = {host.sysfs.root}\n"
            f"libvirt_run_dir = {host.run_dir}\n\n[network physnet1]\n"
            f"pfs = ens3f0, ens4f0\n{setting}")

    host.set_affinity = set_affinity
    set_affinity(None)
    return host


def pinned(xml: bytes, placement: str) -> bytes:
    """The guest with ``placement`` (vcpu/numatune/cputune elements) after <memory>."""
    marker = b"</memory>\n"
    return xml.replace(marker, marker + placement.encode() + b"\n", 1)


ON_NODE_1 = "<vcpu placement='static'>2</vcpu><numatune><memory mode='strict' nodeset='1'/></numatune>"


def given(host, result) -> list[str]:
    from vfmigrate import domxml
    assert result.code == 0, result.stderr
    return [str(device.address) for device in domxml.parse(result.stdout).devices]


def fill(host, vfs: list, prefix: str) -> None:
    """Guests running on each of ``vfs`` (status files, as libvirt writes them)."""
    for index, vf in enumerate(vfs):
        host.add_running_guest(teaming_guest(f"{prefix}{index}", [str(vf)]), f"{prefix}{index}")


def test_libvirt_sets_are_read_as_libvirt_reads_them():
    assert parse_set("0-3,^2,8") == {0, 1, 3, 8}
    assert parse_set(" 1 ") == {1}
    assert format_set({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    for bad in ("", "a", "1-", "3-1", "^1", "1,,2", "٣", "0-99999", "1-^2"):
        with pytest.raises(BadCpuset):
            parse_set(bad)


def test_an_unpinned_guest_gets_the_lowest_free_vf_whatever_the_policy(numa_host):
    for policy in ("required", "preferred", "none"):
        numa_host.set_affinity(policy)
        result = numa_host.hook("migrate", teaming_guest(f"free-{policy}", [SOURCE_VF]))
        assert given(numa_host, result) == [str(numa_host.node0_vfs[0])]
        numa_host.hook("release", result.stdout)


@pytest.mark.parametrize("placement", [
    ON_NODE_1,
    "<vcpu placement='static' cpuset='8-11'>2</vcpu>",
    "<vcpu placement='static'>2</vcpu><cputune><vcpupin vcpu='0' cpuset='9'/>"
    "<vcpupin vcpu='1' cpuset='10-11'/></cputune>",
], ids=["numatune memory", "vcpu cpuset", "vcpupin"])
def test_a_guest_pinned_to_node_1_gets_a_vf_of_the_pf_on_node_1(numa_host, placement):
    result = numa_host.hook("migrate", pinned(teaming_guest("db", [SOURCE_VF]), placement))
    assert given(numa_host, result) == [str(numa_host.node1_vfs[0])]


def test_memory_placement_wins_over_vcpu_pins(numa_host):
    placement = ("<vcpu placement='static' cpuset='0-3'>2</vcpu>"
                 "<numatune><memory mode='strict' nodeset='1'/></numatune>")
    result = numa_host.hook("migrate", pinned(teaming_guest("db", [SOURCE_VF]), placement))
    assert given(numa_host, result) == [str(numa_host.node1_vfs[0])]


def test_preferred_falls_back_to_the_other_node_when_its_node_is_full(numa_host):
    fill(numa_host, numa_host.node1_vfs, "busy")
    result = numa_host.hook("migrate", pinned(teaming_guest("db", [SOURCE_VF]), ON_NODE_1))
    assert given(numa_host, result) == [str(numa_host.node0_vfs[0])]


def test_required_refuses_with_one_line_naming_the_node_and_claims_nothing(numa_host):
    numa_host.set_affinity("required")
    fill(numa_host, numa_host.node1_vfs[:3], "busy")
    xml = pinned(teaming_guest("db", [SOURCE_VF, SOURCE_VF]), ON_NODE_1)
    result = numa_host.hook("migrate", xml, domain="db")
    assert (result.code, result.stdout) == (1, b"")
    assert result.stderr == (
        "vfmigrate: no free VF in network 'physnet1' on NUMA node 1 of this host, where "
        "guest 'db' runs, and the network has numa_affinity = required (4 VFs there, 3 "
        "claimed or in use, 1 already given to this guest's other device); free a VF "
        "there, or set numa_affinity = preferred\n")
    assert numa_host.live_claims() == []


def test_required_with_room_gives_every_device_a_vf_on_the_node(numa_host):
    numa_host.set_affinity("required")
    xml = pinned(teaming_guest("db", [SOURCE_VF] * 4), ON_NODE_1)
    assert given(numa_host, numa_host.hook("migrate", xml)) == \
        [str(vf) for vf in numa_host.node1_vfs]


def test_preferred_spills_over_to_the_other_node_for_more_devices_than_its_node_has(numa_host):
    xml = pinned(teaming_guest("db", [SOURCE_VF] * 5), ON_NODE_1)
    assert given(numa_host, numa_host.hook("migrate", xml)) == \
        [str(vf) for vf in numa_host.node1_vfs] + [str(numa_host.node0_vfs[0])]


def test_none_ignores_the_node(numa_host):
    numa_host.set_affinity("none")
    result = numa_host.hook("migrate", pinned(teaming_guest("db", [SOURCE_VF]), ON_NODE_1))
    assert given(numa_host, result) == [str(numa_host.node0_vfs[0])]


def test_an_address_already_free_here_is_kept_only_on_the_guests_node(numa_host):
    off_node = str(numa_host.node0_vfs[2])
    result = numa_host.hook("migrate", pinned(teaming_guest("db", [off_node]), ON_NODE_1))
    assert given(numa_host, result) == [str(numa_host.node1_vfs[0])]
    on_node = str(numa_host.node1_vfs[2])
    result = numa_host.hook("migrate", pinned(teaming_guest("web", [on_node]), ON_NODE_1))
    assert (result.code, result.stdout) == (0, b"")   # kept: nothing to rewrite


def test_a_pf_without_a_node_is_on_no_node_of_a_two_node_host(numa_host):
    (numa_host.sysfs.root / "bus/pci/devices/0000:86:00.0/numa_node").write_text("-1\n")
    numa_host.set_affinity("required")
    result = numa_host.hook("migrate", pinned(teaming_guest("db", [SOURCE_VF]), ON_NODE_1),
                            domain="db")
    assert result.code == 1
    assert "on NUMA node 1 of this host" in result.stderr and "(0 VFs there)" in result.stderr


def test_on_a_one_node_host_a_pf_without_a_node_is_on_that_node(host):
    host.sysfs.add_numa_node(0, "0-3")
    (host.sysfs.root / "bus/pci/devices/0000:3b:00.0/numa_node").write_text("-1\n")
    host.write_config({"physnet1": "ens1f0"})
    with host.config_path.open("a") as config:
        config.write("numa_affinity = required\n")
    placement = "<numatune><memory mode='strict' nodeset='0'/></numatune>"
    result = host.hook("migrate", pinned(teaming_guest("db", [SOURCE_VF]), placement))
    assert given(host, result) == [str(host.physnet1_vfs[0])]


def test_a_malformed_cpuset_is_bad_input_naming_the_element(numa_host):
    placement = "<vcpu placement='static' cpuset='8-x'>2</vcpu>"
    result = numa_host.hook("migrate", pinned(teaming_guest("db", [SOURCE_VF]), placement),
                            domain="db")
    assert result.code == 3
    assert result.stderr == ("vfmigrate: domain XML rejected: guest 'db': <vcpu cpuset> "
                             "'8-x' is not a list like 0-3,^2,8\n")
    assert numa_host.live_claims() == []


def test_the_policy_is_one_of_three(numa_host):
    numa_host.set_affinity("strict")
    with pytest.raises(ConfigSyntaxError) as refused:
        configuration.load(numa_host.config_path)
    assert "numa_affinity" in str(refused.value)
    assert "must be one of required, preferred, none" in str(refused.value)
    numa_host.set_affinity("required")
    assert configuration.load(numa_host.config_path).networks["physnet1"].numa_affinity == \
        "required"
