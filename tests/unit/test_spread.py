"""PF spread: a guest whose VFs sat on different PFs keeps them apart (issue 16).

The host: one network with two PFs of 4 VFs each (PF A on NUMA node 0, PF B on node 1).
A guest's metadata records the spread as ``pf`` ordinals (vfmigrate.metadata).
"""

from __future__ import annotations

import pytest

from tests.fakesysfs import E810
from vfmigrate import config as configuration
from vfmigrate import domxml, metadata
from vfmigrate.errors import ConfigSyntaxError
from vfmigrate.pci import PciAddress

from .domains import teaming_guest

SOURCE_VF = "0000:5e:02.3"


@pytest.fixture
def two_pfs(host):
    host.sysfs.add_numa_node(0, "0-7")
    host.sysfs.add_numa_node(1, "8-15")
    host.pf_a = host.sysfs.add_pf(E810, "0000:18:00.0", "ens3f0", 4, numa_node=0)
    host.pf_b = host.sysfs.add_pf(E810, "0000:86:00.0", "ens4f0", 4, numa_node=1)

    def configure(**network_settings: str) -> None:
        lines = "".join(f"{key} = {value}\n" for key, value in network_settings.items())
        host.config_path.write_text(
            f"[vfmigrate]\nstate_dir = {host.state_dir}\nsysfs_root = {host.sysfs.root}\n"
            f"libvirt_run_dir = {host.run_dir}\n\n[network physnet1]\n"
            f"pfs = ens3f0, ens4f0\n{lines}")

    host.configure = configure
    configure()
    return host


def spread_guest(name: str, ordinals: list[str | None], placement: str = "") -> bytes:
    """A guest with one teamed VF per ordinal, labelled physnet1 and ``pf`` (if given)."""
    xml = teaming_guest(name, [SOURCE_VF] * len(ordinals), networks=["physnet1"] * len(ordinals))
    for index, ordinal in enumerate(ordinals):
        if ordinal is not None:
            xml = xml.replace(f"alias='ua-vf{index}' network='physnet1'".encode(),
                              f"alias='ua-vf{index}' network='physnet1' pf='{ordinal}'".encode())
    return xml.replace(b"</memory>\n", b"</memory>\n" + placement.encode(), 1)


def pfs_given(result) -> list[str]:
    assert result.code == 0, result.stderr
    return [str(device.address)[:7]
            for device in domxml.parse(result.stdout).devices]


def fill(host, vfs, prefix: str) -> None:
    for index, vf in enumerate(vfs):
        host.add_running_guest(teaming_guest(f"{prefix}{index}", [str(vf)]), f"{prefix}{index}")


A, B = "0000:18", "0000:86"


def test_without_a_recorded_spread_vfs_come_from_the_first_pf(two_pfs):
    assert pfs_given(two_pfs.hook("migrate", spread_guest("db", [None, None]))) == [A, A]


def test_vfs_that_were_on_two_pfs_get_two_pfs(two_pfs):
    assert pfs_given(two_pfs.hook("migrate", spread_guest("db", ["0", "1"]))) == [A, B]


def test_vfs_that_shared_a_pf_may_share_one(two_pfs):
    assert pfs_given(two_pfs.hook("migrate", spread_guest("db", ["0", "0", "1", "0"]))) == \
        [A, A, B, A]


def test_preferred_spread_without_room_arrives_with_a_warning(two_pfs):
    fill(two_pfs, two_pfs.pf_b, "busy")
    result = two_pfs.hook("migrate", spread_guest("db", ["0", "1"]), domain="db")
    assert pfs_given(result) == [A, A]
    warning = [line for line in result.stderr.splitlines() if "shares PF" in line]
    assert warning == [
        f"vfmigrate: guest db is arriving by migration: VF {two_pfs.pf_a[1]} of network physnet1 shares "
        "PF 0000:18:00.0 with another of its VFs, which sat on another PF on the source: no "
        "other PF of the network has a free VF here (pf_spread = preferred)"]


def test_required_spread_without_room_refuses_and_claims_nothing(two_pfs):
    two_pfs.configure(pf_spread="required")
    fill(two_pfs, two_pfs.pf_b, "busy")
    result = two_pfs.hook("migrate", spread_guest("db", ["0", "1"]), domain="db")
    assert (result.code, result.stdout) == (1, b"")
    assert result.stderr == (
        "vfmigrate: guest 'db' had its VFs in network 'physnet1' on different PFs on the "
        f"source, and this host has no free VF for interface ua-vf1 (VF {SOURCE_VF} on the "
        "source) on a PF other than 0000:18:00.0, which its other VFs there took "
        "(pf_spread = required); free a VF on another PF of the network, or set pf_spread "
        "= preferred\n")
    assert two_pfs.live_claims() == []


def test_required_spread_with_no_vf_at_all_is_the_plain_refusal(two_pfs):
    two_pfs.configure(pf_spread="required")
    fill(two_pfs, two_pfs.pf_a[1:] + two_pfs.pf_b, "busy")
    result = two_pfs.hook("migrate", spread_guest("db", ["0", "1"]), domain="db")
    assert result.code == 1
    assert result.stderr.startswith("vfmigrate: no free VF in network 'physnet1' on this host")


NODE_1 = "<numatune><memory mode='strict' nodeset='1'/></numatune>\n"


def test_numa_comes_before_spread_where_spread_is_only_preferred(two_pfs):
    result = two_pfs.hook("migrate", spread_guest("db", ["0", "1"], NODE_1), domain="db")
    assert pfs_given(result) == [B, B]
    assert "shares PF 0000:86:00.0" in result.stderr


def test_required_spread_goes_to_the_other_node_when_numa_is_only_preferred(two_pfs):
    two_pfs.configure(pf_spread="required")
    result = two_pfs.hook("migrate", spread_guest("db", ["0", "1"], NODE_1))
    assert pfs_given(result) == [B, A]


def test_the_recorded_spread_is_the_intent_and_travels_unchanged(two_pfs):
    fill(two_pfs, two_pfs.pf_b, "busy")
    result = two_pfs.hook("migrate", spread_guest("db", ["0", "1"]))
    entries = domxml.parse(result.stdout).metadata_entries
    assert [entry.get("pf") for entry in entries] == ["0", "1"]


def test_the_listener_records_the_spread_of_a_guest_started_here():
    first, second, third = "0000:18:01.0", "0000:86:01.0", "0000:18:01.1"
    parsed = domxml.parse(teaming_guest("db", [first, second, third]))
    pf_of = {PciAddress.parse(first): "A", PciAddress.parse(second): "B",
             PciAddress.parse(third): "A"}.get
    entries = metadata.labelled_entries(parsed, lambda address: "physnet1", pf_of)
    assert [(entry["network"], entry["pf"]) for entry in entries] == \
        [("physnet1", "0"), ("physnet1", "1"), ("physnet1", "0")]
    relabelled = domxml.parse(parsed.data.replace(
        b"</devices>", b"</devices><metadata><vfmigrate:vfs xmlns:vfmigrate='"
        + metadata_namespace() + b"'>" + "".join(
            f"<vfmigrate:vf mac='{e['mac']}' network='physnet1' pf='{e['pf']}'/>"
            for e in entries).encode() + b"</vfmigrate:vfs></metadata>"))
    # recorded once: a later start on other PFs does not rewrite the intent
    assert metadata.labelled_entries(relabelled, lambda address: "physnet1",
                                     lambda address: "C") is None


def test_one_vf_of_a_network_records_no_spread():
    parsed = domxml.parse(teaming_guest("web", ["0000:18:01.0"]))
    entries = metadata.labelled_entries(parsed, lambda address: "physnet1", lambda a: "A")
    assert "pf" not in entries[0]


def metadata_namespace() -> bytes:
    from vfmigrate import METADATA_NAMESPACE
    return METADATA_NAMESPACE.encode()


def test_a_pf_ordinal_that_is_not_one_is_bad_input(two_pfs):
    result = two_pfs.hook("migrate", spread_guest("db", ["0", "x"]), domain="db")
    assert result.code == 3
    assert "pf 'x' is not a PF ordinal 0-63" in result.stderr


def test_the_spread_policy_is_one_of_two(two_pfs):
    two_pfs.configure(pf_spread="always")
    with pytest.raises(ConfigSyntaxError) as refused:
        configuration.load(two_pfs.config_path)
    assert "pf_spread" in str(refused.value) and "required, preferred" in str(refused.value)
