from __future__ import annotations

import sqlite3

import pytest

from vfmigrate.errors import LedgerError
from vfmigrate.ledger import ACTIVE, INCOMING, RELEASED, Ledger
from vfmigrate.pci import PciAddress

VF = PciAddress.parse("0000:3b:01.0")


def make(tmp_path, **kwargs) -> Ledger:
    return Ledger(tmp_path / "state" / "ledger.sqlite3", **kwargs)


def test_files_are_private_and_wal(tmp_path):
    (tmp_path / "state").mkdir(mode=0o755)
    with make(tmp_path) as ledger:
        with ledger.transaction():
            ledger.add(vf=VF, network="n", domain_uuid="u", domain_name="d", state=ACTIVE,
                       reason="t")
        assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
        for path in (tmp_path / "state").iterdir():
            assert path.stat().st_mode & 0o777 == 0o600, path
        db = sqlite3.connect(ledger.path)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1


def test_one_live_claim_per_vf_is_enforced_by_the_schema(tmp_path):
    with make(tmp_path) as ledger:
        with ledger.transaction():
            first = ledger.add(vf=VF, network="n", domain_uuid="u1", domain_name="a",
                               state=INCOMING, reason="t")
        with pytest.raises(LedgerError), ledger.transaction():
            ledger.add(vf=VF, network="n", domain_uuid="u2", domain_name="b", state=ACTIVE,
                       reason="t")
        with ledger.transaction():
            ledger.set_state([first], RELEASED, "done")
            ledger.add(vf=VF, network="n", domain_uuid="u2", domain_name="b", state=ACTIVE,
                       reason="t")
        assert [(c.domain_name, c.state) for c in ledger.live_claims()] == [("b", ACTIVE)]
        assert [c.state for c in ledger.history()] == [ACTIVE, RELEASED]


def test_live_claims_are_read_through_their_index_not_the_history(tmp_path):
    """Every hook call that decides reads the live claims; the released ones it must not
    read are kept for 30 days and may be most of the table."""
    with make(tmp_path) as ledger:
        with ledger.transaction():
            for function in range(8):
                claim = ledger.add(vf=PciAddress(0, 0x3b, 1, function), network="n",
                                   domain_uuid="u", domain_name="d", state=ACTIVE, reason="t")
                if function:
                    ledger.set_state([claim], RELEASED, "gone")
        statements: list[str] = []
        ledger._db.set_trace_callback(statements.append)
        assert [c.vf for c in ledger.live_claims()] == [PciAddress(0, 0x3b, 1, 0)]
        assert list(ledger.unreadable_rows(live_only=True)) == []
        ledger._db.set_trace_callback(None)
        plans = [" ".join(row[-1] for row in ledger._db.execute("EXPLAIN QUERY PLAN " + sql))
                 for sql in statements]
        assert len(plans) == 2
        assert all("USING INDEX claims_one_live_per_vf" in plan for plan in plans), plans


def test_writes_outside_a_transaction_are_a_programming_error(tmp_path):
    with make(tmp_path) as ledger, pytest.raises(RuntimeError):
        ledger.add(vf=VF, network="n", domain_uuid="u", domain_name="d", state=ACTIVE,
                   reason="t")


def test_rollback_on_exception(tmp_path):
    with make(tmp_path) as ledger:
        with pytest.raises(ValueError), ledger.transaction():
            ledger.add(vf=VF, network="n", domain_uuid="u", domain_name="d", state=ACTIVE,
                       reason="t")
            raise ValueError("abort")
        assert ledger.live_claims() == []


def test_prune_forgets_old_released_rows_only(tmp_path):
    now = [100.0]
    with make(tmp_path, clock=lambda: now[0]) as ledger:
        with ledger.transaction():
            old = ledger.add(vf=VF, network="n", domain_uuid="u", domain_name="d",
                             state=ACTIVE, reason="t")
            ledger.set_state([old], RELEASED, "gone")
            now[0] = 200.0
            ledger.add(vf=PciAddress.parse("0000:3b:01.1"), network="n", domain_uuid="u",
                       domain_name="d", state=ACTIVE, reason="t")
        with ledger.transaction():
            assert ledger.prune(older_than=150.0) == 0   # not reset yet: kept
            assert [c.vf for c in ledger.pending_resets()] == [VF]
            assert ledger.mark_reset(VF) == 1
            assert ledger.pending_resets() == []
            assert ledger.prune(older_than=150.0) == 1
        assert len(ledger.history()) == 1
