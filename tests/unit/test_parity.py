"""VF settings parity (issue 16): the source's trust, spoof checking, rates and link
state travel in the metadata and are applied to the destination's VF, per the
network's ``settings_parity``; released VFs are reset.

The PFs' netlink side is :mod:`tests.fakenetlink` (no SR-IOV hardware here); the
SR-IOV lab checks the same with ``ip link`` on igb.
"""

from __future__ import annotations

import pytest

from tests.fakenetlink import FakePFs
from vfmigrate import domxml, metadata, vfsettings
from vfmigrate.inventory import Inventory
from vfmigrate.vfnetlink import VFNetlink

from .domains import teaming_guest

SOURCE_VF = "0000:5e:02.3"


@pytest.fixture
def kernel(host):
    pfs = FakePFs()
    pfs.add("ens1f0", 8)
    pfs.add("enp175s0f0", 4)
    host.kernel = pfs
    return pfs


def netlink_for(host):
    return lambda: VFNetlink(host.sysfs.root, host.kernel.iproute)


def arriving(name: str, settings: str, hostdev: bool = False) -> bytes:
    xml = teaming_guest(name, [SOURCE_VF], networks=["physnet1"], hostdev=hostdev)
    return xml.replace(b"alias='ua-vf0' network='physnet1'",
                       f"alias='ua-vf0' network='physnet1' {settings}".encode())


def configure(host, **network_settings: str) -> None:
    lines = "".join(f"{key} = {value}\n" for key, value in network_settings.items())
    host.config_path.write_text(
        f"[vfmigrate]\nstate_dir = {host.state_dir}\nsysfs_root = {host.sysfs.root}\n"
        f"libvirt_run_dir = {host.run_dir}\n\n[network physnet1]\npfs = ens1f0\n{lines}")


def test_arriving_vf_gets_the_sources_trust_and_rate(host, kernel):
    result = host.hook("migrate", arriving("vrrp", "trust='on' max-tx-rate='100'"),
                       netlink_factory=netlink_for(host))
    assert result.code == 0, result.stderr
    [device] = [d for d in domxml.parse(result.stdout).devices if d.address is not None]
    vf = Inventory.of(host.config()).find_vf(device.address)
    applied = kernel.vf("ens1f0", vf.index)
    assert (applied.trust, applied.max_tx_rate, applied.min_tx_rate) == (1, 100, 0)
    assert [(netdev, index) for netdev, index, _ in kernel.requests] == [
        ("ens1f0", vf.index)] * 2
    assert (f"guest vrrp is arriving by migration: VF {vf.address} (PF 0000:3b:00.0 vf "
            f"{vf.index}) has the source's trust on, maximum tx rate 100 Mbit/s") \
        in result.stderr
    others = [v for v in kernel.pfs["ens1f0"].vfs if v.index != vf.index]
    assert all(v.trust == 0 and v.max_tx_rate == 0 for v in others)


def test_trust_the_destination_cannot_give_refuses_and_leaves_nothing(host, kernel):
    kernel.pfs["ens1f0"].lacks.add("trust")
    result = host.hook("migrate", arriving("vrrp", "trust='on' max-tx-rate='100'"),
                       netlink_factory=netlink_for(host))
    assert result.code == 1
    assert result.stdout == b""
    [line] = result.stderr.splitlines()
    assert line.startswith("vfmigrate: guest 'vrrp' had trust on, maximum tx rate 100 "
                           "Mbit/s on its VF in network 'physnet1' on the source, and PF "
                           "0000:3b:00.0 of this host cannot give VF 0000:3b:")
    assert "trust (Operation not supported) while the network has settings_parity = trust" \
        in line
    assert line.endswith("or set settings_parity = preferred to let it arrive without")
    assert host.live_claims() == []


def test_preferred_lets_the_guest_arrive_without_and_warns(host, kernel):
    kernel.pfs["ens1f0"].lacks.add("trust")
    configure(host, settings_parity="preferred")
    result = host.hook("migrate", arriving("vrrp", "trust='on' max-tx-rate='100'"),
                       netlink_factory=netlink_for(host))
    assert result.code == 0, result.stderr
    [claim] = host.live_claims()
    assert claim.domain_name == "vrrp"
    index = Inventory.of(host.config()).find_vf(claim.vf).index
    assert kernel.vf("ens1f0", index).max_tx_rate == 100
    assert "did not get the source's trust on (Operation not supported), and the guest " \
           "arrives without, as settings_parity = preferred allows" in result.stderr


def test_every_netlink_session_is_closed_whatever_it_met(host, kernel):
    """Given, refused by the driver, and on a PF whose netdev netlink does not know: each
    IPRoute the hook opened is closed again."""
    configure(host, settings_parity="preferred")
    assert host.hook("migrate", arriving("one", "trust='on'"),
                     netlink_factory=netlink_for(host)).code == 0
    kernel.pfs["ens1f0"].lacks.add("trust")
    assert host.hook("migrate", arriving("two", "trust='on'"),
                     netlink_factory=netlink_for(host)).code == 0
    del kernel.pfs["ens1f0"]
    result = host.hook("migrate", arriving("three", "trust='on'"),
                       netlink_factory=netlink_for(host))
    assert result.code == 0, result.stderr
    assert "netdev ens1f0 not found" in result.stderr
    assert kernel.opened == kernel.closed == 3


@pytest.mark.parametrize("policy, refused", [("trust", False), ("required", True),
                                             ("preferred", False)])
def test_a_missing_link_state_refuses_only_under_required(host, kernel, policy, refused):
    kernel.pfs["ens1f0"].lacks.add("link_state")
    configure(host, settings_parity=policy)
    result = host.hook("migrate", arriving("down", "link-state='disable'"),
                       netlink_factory=netlink_for(host))
    assert (result.code == 1) is refused, result.stderr
    assert bool(host.live_claims()) is not refused
    if refused:
        assert "cannot give VF" in result.stderr and "link state" in result.stderr


def test_trust_off_on_the_source_is_not_required(host, kernel):
    kernel.pfs["ens1f0"].lacks.add("trust")
    result = host.hook("migrate", arriving("plain", "trust='off' spoofchk='off'"),
                       netlink_factory=netlink_for(host))
    assert result.code == 0, result.stderr
    assert "did not get the source's trust off (Operation not supported)" in result.stderr


def test_vf_reset_none_refuses_a_guest_that_needs_trust(host, kernel):
    configure(host)
    host.config_path.write_text(host.config_path.read_text().replace(
        "[network", "vf_reset = none\n\n[network", 1))
    result = host.hook("migrate", arriving("vrrp", "trust='on'"),
                       netlink_factory=netlink_for(host))
    assert result.code == 1
    assert "vf_reset = none leaves VF settings to the admin" in result.stderr
    assert kernel.requests == [] and host.live_claims() == []


def test_a_guest_without_recorded_settings_opens_no_netlink(host, kernel):
    def no_netlink():
        raise AssertionError("netlink opened for a guest without settings")
    result = host.hook("migrate", arriving("plain", ""), netlink_factory=no_netlink)
    assert result.code == 0, result.stderr
    assert len(host.live_claims()) == 1


@pytest.mark.parametrize("attribute", ["trust='yes'", "max-tx-rate='-1'",
                                       "max-tx-rate='99999999999'", "link-state='up'",
                                       "vlan-qos='8'", "vlan-proto='802.1x'"])
def test_bad_settings_in_the_metadata_are_bad_input(host, kernel, attribute):
    result = host.hook("migrate", arriving("bad", attribute),
                       netlink_factory=netlink_for(host))
    assert result.code == 3
    name = attribute.split("=")[0]
    [line] = result.stderr.splitlines()
    assert f"<vfmigrate:vf> entry 1 in <metadata>: {name} " in line
    assert kernel.requests == [] and host.live_claims() == []


def test_read_settings_reports_what_differs_from_a_reset_vf(host, kernel):
    vf = Inventory.of(host.config()).find_vf(host.physnet1_vfs[3])
    fake = kernel.vf("ens1f0", 3)
    fake.trust, fake.max_tx_rate, fake.qos = 1, 250, 5
    current = VFNetlink(host.sysfs.root, kernel.iproute).read_settings(vf)
    assert current == {"trust": "on", "spoofchk": "on", "min-tx-rate": "0",
                       "max-tx-rate": "250", "link-state": "auto", "vlan-qos": "5",
                       "vlan-proto": "802.1Q"}
    assert vfsettings.differing(current) == {"trust": "on", "max-tx-rate": "250",
                                             "vlan-qos": "5"}


def test_a_driver_that_does_not_report_trust_leaves_it_out(host, kernel):
    kernel.pfs["ens1f0"].lacks.add("trust")
    vf = Inventory.of(host.config()).find_vf(host.physnet1_vfs[0])
    assert "trust" not in VFNetlink(host.sysfs.root, kernel.iproute).read_settings(vf)


def test_reset_clears_rate_and_link_state_only_where_set(host, kernel):
    inventory = Inventory.of(host.config())
    netlink = VFNetlink(host.sysfs.root, kernel.iproute)
    fake = kernel.vf("ens1f0", 2)
    fake.trust, fake.max_tx_rate, fake.link_state, fake.qos = 1, 100, 2, 3
    assert netlink.reset(inventory.find_vf(host.physnet1_vfs[2])) == []
    assert (fake.trust, fake.max_tx_rate, fake.link_state, fake.qos, fake.spoofchk) == \
        (0, 0, 0, 0, 1)
    kernel.requests.clear()
    kernel.pfs["ens1f0"].lacks.update({"rate", "link_state"})
    assert netlink.reset(inventory.find_vf(host.physnet1_vfs[4])) == []
    assert [sorted(request) for _, _, request in kernel.requests] == [
        ["mac"], ["vlan"], ["spoofchk"], ["trust"]]


def test_labelling_records_settings_and_forgets_them_once_reset():
    xml = teaming_guest("vrrp", ["0000:3b:02.1"], networks=["physnet1"])
    domain = domxml.parse(xml)
    address = domain.devices[1].address if domain.devices[0].address is None \
        else domain.devices[0].address
    settings = {"trust": "on", "max-tx-rate": "100"}
    reported = dict(vfsettings.RESET_STATE, **settings)
    entries = metadata.labelled_entries(domain, lambda a: "physnet1", lambda a: None,
                                        lambda a: reported if a == address else None)
    assert [vfsettings.recorded(e) for e in entries] == [settings]
    assert 'trust="on" max-tx-rate="100"' in metadata.render(entries)

    relabelled = domxml.parse(xml.replace(b"network='physnet1'",
                                          b"network='physnet1' trust='on' max-tx-rate='100'"))
    assert metadata.labelled_entries(relabelled, lambda a: "physnet1", lambda a: None,
                                     lambda a: None) is None   # unknown: kept
    assert metadata.labelled_entries(relabelled, lambda a: "physnet1", lambda a: None,
                                     lambda a: reported) is None   # unchanged
    hides_trust = {name: value for name, value in vfsettings.RESET_STATE.items()
                   if name != "trust"}
    [kept] = metadata.labelled_entries(relabelled, lambda a: "physnet1", lambda a: None,
                                       lambda a: hides_trust)
    assert vfsettings.recorded(kept) == {"trust": "on"}   # not reported: unknown, kept
    [reset] = metadata.labelled_entries(relabelled, lambda a: "physnet1", lambda a: None,
                                        lambda a: vfsettings.RESET_STATE)
    assert vfsettings.recorded(reset) == {} and reset["network"] == "physnet1"
