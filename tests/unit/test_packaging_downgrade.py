"""A downgrade (or a rollback of an upgrade): the older code meets a ledger that a
newer vfmigrate wrote.  It must refuse with one line and keep the newer data
(issue 17).  test_bad_input.py::test_newer_ledger_schema_is_refused covers the
hook's exit code and message; this adds what is kept and what the CLI says."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys

import pytest

from vfmigrate.errors import LedgerError
from vfmigrate.ledger import SCHEMA_VERSION
from vfmigrate.pci import PciAddress

from .domains import teaming_guest

GUEST = teaming_guest("web1", ["0000:5e:02.3"], networks=["physnet1"])
NEWER = SCHEMA_VERSION + 1


def _as_if_newer(path, *, journal_mode: str = "wal") -> None:
    """What a newer vfmigrate might leave: a higher user_version, a table of its own."""
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA journal_mode = {journal_mode}")
    db.execute("CREATE TABLE future (x)")
    db.execute("INSERT INTO future VALUES (42)")
    db.execute(f"PRAGMA user_version = {NEWER}")
    db.commit()
    db.close()


def _contents(path) -> tuple:
    db = sqlite3.connect(path)
    try:
        return (db.execute("PRAGMA user_version").fetchone()[0],
                db.execute("SELECT x FROM future").fetchall(),
                db.execute("SELECT count(*) FROM claims").fetchone()[0])
    finally:
        db.close()


def test_older_code_refuses_a_newer_ledger_with_one_line_and_keeps_its_data(host):
    assert host.hook("migrate", GUEST).code == 0          # one live claim
    path = host.state_dir / "ledger.sqlite3"
    _as_if_newer(path)
    kept = _contents(path)
    hook = host.hook("migrate", GUEST)
    assert hook.code == 5
    assert hook.stderr.count("\n") == 1
    assert f"schema version {NEWER} is newer than this vfmigrate supports " \
           f"({SCHEMA_VERSION}); upgrade vfmigrate" in hook.stderr
    status = subprocess.run([sys.executable, "-m", "vfmigrate", "--config",
                             str(host.config_path), "status"],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode != 0 and status.stdout == ""
    assert status.stderr.count("\n") == 1 and f"schema version {NEWER}" in status.stderr
    assert _contents(path) == kept == (NEWER, [(42,)], 1)


def test_refusing_a_newer_ledger_leaves_its_file_byte_for_byte(host):
    host.ledger().close()
    path = host.state_dir / "ledger.sqlite3"
    _as_if_newer(path, journal_mode="delete")   # a newer version may choose otherwise
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    assert host.hook("migrate", GUEST).code == 5
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_an_open_ledger_refuses_to_write_once_a_newer_version_moved_its_schema(host):
    """An upgrade's window between unpack and the listener's restart: the old
    listener's connection was opened before the schema moved under it."""
    path = host.state_dir / "ledger.sqlite3"
    with host.ledger() as ledger:
        _as_if_newer(path)
        kept = _contents(path)
        with pytest.raises(LedgerError) as refused:
            with ledger.transaction():
                ledger.add(vf=PciAddress.parse("0000:5e:02.3"), network="physnet1",
                           domain_uuid="0e7d3a56-2f0b-4d71-8a4c-54b2a0f6c001",
                           domain_name="web1", state="incoming", reason="test")
        assert str(refused.value) == (
            f"ledger {path}: schema version {NEWER} is newer than this vfmigrate "
            f"supports ({SCHEMA_VERSION}); upgrade vfmigrate (the ledger is kept as it is)")
    assert _contents(path) == kept == (NEWER, [(42,)], 0)
