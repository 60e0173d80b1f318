"""Reconcile against guests given as libvirt reports them, on a fake host."""

from __future__ import annotations

import errno

import pytest

from vfmigrate.events import Event
from vfmigrate.ledger import ACTIVE, INCOMING
from vfmigrate.reconcile import Reconciler
from vfmigrate.vfnetlink import VFNetlink
from vfmigrate.virt import Guest

from .domains import guest_uuid, teaming_guest


class FakeIPRoute:
    """Records rtnetlink requests; fails with an errno where told to."""

    def __init__(self, calls: list, failures: dict | None = None) -> None:
        self.calls = calls
        self.failures = failures or {}

    def link_lookup(self, ifname: str) -> list[int]:
        return [7] if ifname in ("ens1f0", "enp175s0f0") else []

    def link(self, command: str, **kwargs) -> None:
        setting = next(key for key in kwargs["vf"] if key != "vf")
        if setting in self.failures:
            error = OSError(self.failures[setting], "refused")
            raise error
        self.calls.append((command, kwargs["index"], kwargs["vf"]))

    def close(self) -> None:
        self.calls.append("close")


@pytest.fixture
def netlink_calls():
    return []


@pytest.fixture
def reconciler(host, netlink_calls):
    def reconciler_for(failures=None):
        ledger = host.ledger()
        netlink = VFNetlink(host.sysfs.root, lambda: FakeIPRoute(netlink_calls, failures))
        return Reconciler(host.config(), ledger, vf_netlink=netlink)
    return reconciler_for


def running(name, vfs):
    return Guest(guest_uuid(name), name, True, teaming_guest(name, [str(v) for v in vfs]))


def test_stopped_guest_claims_are_released_and_vfs_reset(host, reconciler, netlink_calls):
    vf = host.physnet1_vfs[5]
    host.hook("start", teaming_guest("gone", [str(vf)]), domain="gone")
    corrections = reconciler().reconcile([])
    assert [(c.event, str(c.vf), c.detail) for c in corrections] == [
        (Event.CORRECTED, str(vf), "the guest is not running"),
        (Event.RESET, str(vf), "reset on PF 0000:3b:00.0 vf 5: MAC 0, VLAN 0, spoofchk on, "
                               "trust off")]
    assert host.live_claims() == []
    assert netlink_calls == [("set", 7, {"vf": 5, "mac": "00:00:00:00:00:00"}),
                             ("set", 7, {"vf": 5, "vlan": 0}),
                             ("set", 7, {"vf": 5, "spoofchk": 1}),
                             ("set", 7, {"vf": 5, "trust": 0}), "close"]
    assert reconciler().reconcile([]) == []   # idempotent: nothing pending any more


def test_missing_claim_is_added_and_young_incoming_kept(host, reconciler):
    host.hook("migrate", teaming_guest("arriving", ["0000:5e:02.3"], networks=["physnet2"]))
    survivor = running("survivor", [host.physnet1_vfs[2]])
    corrections = reconciler().reconcile([survivor])
    assert [(c.event, c.detail) for c in corrections] == [
        (Event.CORRECTED, "held without a claim: claim added")]
    states = sorted((c.domain_name, c.state) for c in host.live_claims())
    assert states == [("arriving", INCOMING), ("survivor", ACTIVE)]


def test_expired_incoming_claim_is_released(host, reconciler):
    host.write_config(reservation_timeout=1)
    host.hook("migrate", teaming_guest("lost", ["0000:5e:02.3"], networks=["physnet2"]),
              clock=lambda: 100.0)
    corrections = reconciler().reconcile([])
    assert corrections[0].event is Event.EXPIRED
    assert host.live_claims() == []


def test_unplugged_vf_is_released(host, reconciler):
    first, second = host.physnet1_vfs[1], host.physnet1_vfs[2]
    host.hook("start", teaming_guest("g", [str(first), str(second)]), domain="g")
    corrections = reconciler().reconcile([running("g", [first])])
    assert [(str(c.vf), c.detail) for c in corrections if c.event is Event.CORRECTED] == [
        (str(second), "the guest no longer holds this VF")]
    assert [str(c.vf) for c in host.live_claims()] == [str(first)]


def test_conflicts_are_reported_not_changed(host, reconciler):
    vf = host.physnet1_vfs[3]
    host.hook("start", teaming_guest("owner", [str(vf)]), domain="owner")
    corrections = reconciler().reconcile([running("owner", [vf]), running("intruder", [vf])])
    assert [(c.event, c.domain_name) for c in corrections] == [
        (Event.CONFLICT, "intruder, owner")]
    corrections = reconciler().reconcile([running("intruder", [vf])])
    kinds = [(c.event, c.domain_name, c.detail) for c in corrections]
    assert (Event.CONFLICT, "intruder",
            "held by this guest but claimed by guest 'owner' (active)") in kinds


def test_released_vf_in_use_again_is_not_reset(host, reconciler, netlink_calls):
    vf = host.physnet1_vfs[4]
    xml = teaming_guest("a", [str(vf)])
    host.hook("start", xml, domain="a")
    host.hook("release", xml, domain="a")
    host.hook("start", teaming_guest("b", [str(vf)]), domain="b")
    corrections = reconciler().reconcile([running("b", [vf])])
    assert corrections == []
    assert netlink_calls == []


def test_vanished_vf_is_reported(host, reconciler):
    vf = host.physnet2_vfs[0]
    host.hook("start", teaming_guest("g", [str(vf)]), domain="g")
    host.sysfs.remove_vfs("0000:af:00.0")
    corrections = reconciler().reconcile([running("g", [vf])])
    assert [(c.event, c.detail) for c in corrections] == [
        (Event.VANISHED, "claimed VF is missing from sysfs")]


def test_failed_reset_stays_pending_and_unsupported_options_are_noted(host, reconciler,
                                                                      netlink_calls):
    vf = host.physnet1_vfs[6]
    xml = teaming_guest("g", [str(vf)])
    host.hook("start", xml, domain="g")
    host.hook("release", xml, domain="g")
    [failed] = reconciler({"vlan": errno.EIO}).reconcile([])
    assert failed.detail.startswith(f"reset failed: cannot set vlan of VF {vf} (PF "
                                    "0000:3b:00.0 vf 6): Input/output error")
    [done] = reconciler({"trust": errno.EOPNOTSUPP}).reconcile([])
    assert done.detail.endswith("(trust not supported by the driver)")
    assert reconciler().reconcile([]) == []


def test_dry_run_changes_nothing(host, reconciler, netlink_calls):
    host.hook("start", teaming_guest("gone", [str(host.physnet1_vfs[5])]), domain="gone")
    before = host.live_claims()
    corrections = reconciler().reconcile([], dry_run=True)
    assert [c.event for c in corrections] == [Event.CORRECTED]
    assert host.live_claims() == before
    assert netlink_calls == []


def test_unplugged_vf_with_its_label_left_behind_is_released(host, reconciler):
    first, second = host.physnet1_vfs[1], host.physnet1_vfs[2]
    host.hook("start", teaming_guest("g", [str(first), str(second)],
                                     networks=["physnet1", "physnet1"]), domain="g")
    # The admin unplugged ua-vf1: its metadata label (with its address) stays behind.
    after = teaming_guest("g", [str(first)], networks=["physnet1"]).replace(
        b"</vfmigrate:vfs>",
        f"<vfmigrate:vf alias='ua-vf1' network='physnet1' address='{second}'/>"
        "</vfmigrate:vfs>".encode())
    corrections = reconciler().reconcile([Guest(guest_uuid("g"), "g", True, after)])
    assert [(str(c.vf), c.detail) for c in corrections if c.event is Event.CORRECTED] == [
        (str(second), "the guest no longer holds this VF")]
    assert [str(c.vf) for c in host.live_claims()] == [str(first)]
