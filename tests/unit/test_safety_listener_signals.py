"""``vfmigrate migrate``'s signal guard and lease, with real signals and a /proc tree.

The e2e tier signals and kills the real command (tests/e2e/test_safety_assisted.py);
these pin the two pieces it relies on.
"""

from __future__ import annotations

import os
import signal

import pytest

from vfmigrate.assisted import Interrupted, Lease, LeasedVF, process_start, signals_raise
from vfmigrate.pci import PciAddress


def test_the_first_signal_interrupts_and_a_held_one_is_only_noted():
    before = signal.getsignal(signal.SIGHUP)
    with signals_raise() as guard:
        with pytest.raises(Interrupted) as interrupted:
            os.kill(os.getpid(), signal.SIGTERM)
        assert str(interrupted.value) == "interrupted by SIGTERM"
        guard.hold = True   # the rollback runs
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGHUP)
        assert guard.ignored == ["SIGINT", "SIGHUP"]
    assert signal.getsignal(signal.SIGHUP) is before


def test_a_signal_during_a_rollback_that_no_signal_started_does_not_cut_it_short():
    with signals_raise() as guard:
        guard.hold = True
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.ignored == ["SIGTERM"]


def fake_proc(root, pid: int, start: int, boot: str = "b00t", state: str = "S"):
    (root / "sys/kernel/random").mkdir(parents=True, exist_ok=True)
    (root / "sys/kernel/random/boot_id").write_text(boot + "\n")
    (root / str(pid)).mkdir(exist_ok=True)
    fields = [state] + ["0"] * 18 + [str(start)] + ["0"] * 10
    (root / str(pid) / "stat").write_text(f"{pid} (python3 -m vfm) x) {' '.join(fields)}\n")


def test_the_lease_names_its_process_and_survives_the_round_trip(tmp_path):
    fake_proc(tmp_path, 4242, 987654)
    lease = Lease("5b1c-host", 4242, 987654, "b00t", [{"mac": "52:54:00:aa:bb:cc",
                                                       "network": "physnet1"}],
                  [LeasedVF("ua-vf0", "52:54:00:aa:bb:cc",
                            "<interface type='hostdev'><mac address='52:54:00:aa:bb:cc'/>"
                            "</interface>", PciAddress.parse("0000:3b:02.1"))])
    parsed = Lease.parse(lease.render())
    assert parsed.host == "5b1c-host" and parsed.original == lease.original
    assert parsed.vfs[0].element == lease.vfs[0].element
    assert parsed.owner_alive(tmp_path)
    assert process_start(4242, tmp_path) == 987654


def test_a_lease_of_a_dead_reused_or_other_boot_process_has_no_owner(tmp_path):
    fake_proc(tmp_path, 4242, 111)          # the pid now belongs to another process
    assert not Lease("h", 4242, 987654, "b00t", []).owner_alive(tmp_path)
    assert not Lease("h", 4343, 987654, "b00t", []).owner_alive(tmp_path)   # gone
    fake_proc(tmp_path, 4444, 5, state="Z")   # a zombie
    assert not Lease("h", 4444, 5, "b00t", []).owner_alive(tmp_path)
    fake_proc(tmp_path, 4545, 7)
    assert not Lease("h", 4545, 7, "other-boot", []).owner_alive(tmp_path)
    assert not Lease("h", 0, 0, "b00t", []).owner_alive(tmp_path)   # handed to the listener
