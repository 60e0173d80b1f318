"""The one rule of who holds a VF (vfmigrate.ownership), judged over real ledger claims."""

from __future__ import annotations

import pytest

from vfmigrate.ledger import ACTIVE, INCOMING, RESET_FAILED, RESETTING, Ledger
from vfmigrate.ownership import Snapshot
from vfmigrate.running import RunningGuest

from .domains import guest_uuid

NOW = 10_000.0
LOCK_TIMEOUT = 5.0


@pytest.fixture
def ledger(host):
    """The host's real ledger; ``at(age)`` writes claims ``age`` seconds before NOW."""
    path = host.state_dir / "ledger.sqlite3"

    def at(age: float) -> Ledger:
        return Ledger(path, clock=lambda: NOW - age)
    return at


@pytest.fixture
def make_claim(ledger):
    def make(vf, name, state=ACTIVE, *, age=0.0):
        with ledger(age) as at_age, at_age.transaction():
            return at_age.add(vf=vf, network="physnet1", domain_uuid=guest_uuid(name),
                              domain_name=name, state=state, reason="test")
    return make


@pytest.fixture
def reset_claim(ledger):
    def make(vf, reason, *, age=0.0):
        with ledger(age) as at_age, at_age.transaction():
            return at_age.add_reset_claim(vf, "physnet1", reason)
    return make


def running(name, *vfs):
    return RunningGuest(guest_uuid(name), name, frozenset(vfs))


def snapshot(host, claims, guests):
    return Snapshot(host.config(), claims, {guest.uuid: guest for guest in guests}, NOW,
                    LOCK_TIMEOUT)


def test_a_claim_is_stale_when_its_guest_is_not_running_and_not_awaited(host, make_claim):
    vfs = host.physnet1_vfs
    arriving = make_claim(vfs[0], "arriving", INCOMING, age=299)
    lost = make_claim(vfs[1], "lost", INCOMING, age=301)
    landed = make_claim(vfs[2], "landed", INCOMING, age=301)
    stopped = make_claim(vfs[3], "stopped", ACTIVE)
    runs = make_claim(vfs[4], "runs", ACTIVE, age=3600)
    host_now = snapshot(host, [arriving, lost, landed, stopped, runs],
                        [running("landed", vfs[2]), running("runs", vfs[4])])
    assert [host_now.is_stale(claim) for claim in (arriving, lost, landed, stopped, runs)] == [
        False, True, False, True, False]


def test_holders_and_the_vfs_a_guest_cannot_be_given(host, make_claim, reset_claim):
    vfs = host.physnet1_vfs
    claimed = make_claim(vfs[0], "a")
    resetting = reset_claim(vfs[1], f"{RESETTING}: now")
    a, b = running("a", vfs[0], vfs[2]), running("b", vfs[2], vfs[3])
    host_now = snapshot(host, [claimed, resetting], [a, b])
    assert host_now.holders == {vfs[0]: [a], vfs[2]: [a, b], vfs[3]: [b]}
    assert host_now.taken_from(a.uuid) == {vfs[0], vfs[1], vfs[2], vfs[3]}
    assert host_now.taken_from(b.uuid) == {vfs[0], vfs[1], vfs[2]}
    assert host_now.taken_from(guest_uuid("new")) == {vfs[0], vfs[1], vfs[2], vfs[3]}


def test_its_own_claim_and_another_guests_claim(host, make_claim):
    vfs = host.physnet1_vfs
    own = make_claim(vfs[0], "g", INCOMING)
    other = make_claim(vfs[1], "other", ACTIVE)
    host_now = snapshot(host, [own, other], [running("intruder", vfs[0], vfs[1])])
    for starting in (True, False):
        assert host_now.standing(vfs[0], guest_uuid("g"), starting=starting) == (
            own, None, None)
        assert host_now.standing(vfs[1], guest_uuid("g"), starting=starting) == (
            None, None, "claimed by guest 'other' (active)")


def test_a_running_guest_that_holds_the_vf_stops_only_a_starting_guest(host):
    vf = host.physnet1_vfs[0]
    host_now = snapshot(host, [], [running("a", vf), running("b", vf)])
    assert host_now.standing(vf, guest_uuid("new"), starting=True) == (
        None, None, "in use by running guest 'a'")
    assert host_now.standing(vf, guest_uuid("b"), starting=True) == (
        None, None, "in use by running guest 'a'")
    assert host_now.standing(vf, guest_uuid("a"), starting=False) == (None, None, None)
    assert host_now.standing(host.physnet1_vfs[1], guest_uuid("new"), starting=True) == (
        None, None, None)


def test_a_reset_claim_gives_way_to_a_running_guest_and_to_a_start_once_no_reset_runs(
        host, reset_claim):
    vfs = host.physnet1_vfs
    resetting = reset_claim(vfs[0], f"{RESETTING}: now")
    abandoned = reset_claim(vfs[1], f"{RESETTING}: long ago", age=3600)
    failed = reset_claim(vfs[2], f"{RESET_FAILED}: EIO")
    host_now = snapshot(host, [resetting, abandoned, failed], [running("other", vfs[2])])
    g = guest_uuid("g")
    assert host_now.standing(vfs[0], g, starting=False) == (None, resetting, None)
    assert host_now.standing(vfs[0], g, starting=True) == (
        None, None, "being reset by vfmigrate right now (retry in a few seconds)")
    assert host_now.standing(vfs[1], g, starting=True) == (None, abandoned, None)
    assert host_now.standing(vfs[2], g, starting=True) == (
        None, failed, "in use by running guest 'other'")


def test_running_guests_are_read_only_when_a_rule_needs_them(host, make_claim):
    vfs = host.physnet1_vfs
    reads = []

    def read_running():
        reads.append(1)
        return {}
    own = make_claim(vfs[0], "g", INCOMING)
    other = make_claim(vfs[1], "other")
    host_now = Snapshot(host.config(), [own, other], read_running, NOW, LOCK_TIMEOUT)
    assert host_now.is_stale(own) is False
    assert host_now.standing(vfs[0], guest_uuid("g"), starting=True)[0] == own
    assert host_now.standing(vfs[1], guest_uuid("g"), starting=True)[2] is not None
    assert host_now.standing(vfs[2], guest_uuid("g"), starting=False) == (None, None, None)
    assert reads == []
    assert host_now.standing(vfs[2], guest_uuid("g"), starting=True) == (None, None, None)
    assert reads == [1]
