"""The claim ledger: which local VF is reserved or used by which guest.

One SQLite database per host (``<state_dir>/ledger.sqlite3``, directory 0700,
file 0600), one row per claim::

    incoming --(guest started)--> active --(guest stopped / VF unplugged)--> released
        \\______________(migration failed or claim expired)______________/

At most one claim per VF is live (not released): a partial unique index
enforces it, and every change runs in ``BEGIN IMMEDIATE`` so concurrent hook
processes serialise on the write lock instead of racing.  Released rows stay
as history until pruned.

WAL with ``synchronous=NORMAL``: a crash of the process never loses a
committed claim; a power loss may lose the last ones, and after a power loss
no guest is running, so the next reconcile rebuilds the truth anyway.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from .errors import LedgerBusy, LedgerCorrupt, LedgerError
from .pci import PciAddress

SCHEMA_VERSION = 1
INCOMING, ACTIVE, RELEASED = "incoming", "active", "released"
LIVE_STATES = (INCOMING, ACTIVE)

_SCHEMA = """
CREATE TABLE claims (
    id INTEGER PRIMARY KEY,
    vf TEXT NOT NULL,
    network TEXT NOT NULL,
    domain_uuid TEXT NOT NULL,
    domain_name TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('incoming', 'active', 'released')),
    created REAL NOT NULL,
    updated REAL NOT NULL,
    reason TEXT NOT NULL,
    reset_at REAL
);
CREATE UNIQUE INDEX claims_one_live_per_vf ON claims (vf) WHERE state <> 'released';
CREATE INDEX claims_live_by_domain ON claims (domain_uuid) WHERE state <> 'released';
CREATE INDEX claims_reset_pending ON claims (vf) WHERE state = 'released' AND reset_at IS NULL;
"""

# SQLite's primary result codes (sqlite3 exports them only from Python 3.11).
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_CORRUPT, _SQLITE_NOTADB = 5, 6, 11, 26

_COLUMNS = "id, vf, network, domain_uuid, domain_name, state, created, updated, reason"


class Claim(namedtuple("Claim", "id vf network domain_uuid domain_name state created "
                       "updated reason")):
    """One row of the ledger; ``vf`` is a PciAddress, times are Unix seconds."""

    __slots__ = ()

    @classmethod
    def from_row(cls, row: tuple) -> Claim:
        return cls(row[0], PciAddress.parse(row[1]), *row[2:])

    def as_dict(self) -> dict:
        return {"vf": str(self.vf), "network": self.network, "domain_uuid": self.domain_uuid,
                "domain_name": self.domain_name, "state": self.state,
                "created": self.created, "updated": self.updated, "reason": self.reason}


class Ledger:
    def __init__(self, path: str | os.PathLike, *, lock_timeout: float = 10.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = os.fspath(path)
        self.lock_timeout = lock_timeout
        self.clock = clock
        _make_private_dir(os.path.dirname(self.path))
        _make_private_file(self.path)
        try:
            self._db = sqlite3.connect(self.path, timeout=lock_timeout, isolation_level=None)
        except sqlite3.Error as error:
            raise self._translate(error) from None
        try:
            self._set_up(deadline=time.monotonic() + lock_timeout)
        except BaseException:
            self._db.close()
            raise

    def _set_up(self, deadline: float) -> None:
        """WAL mode and the schema.  A new ledger that several hooks open at once can
        answer SQLITE_BUSY straight away, without the busy timeout (switching to WAL
        takes an exclusive lock): retry until the lock timeout."""
        while True:
            try:
                if self._db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = NORMAL")
                self._ensure_schema()
                return
            except sqlite3.Error as error:
                failure = self._translate(error)
            except LedgerBusy as busy:
                failure = busy
            if not isinstance(failure, LedgerBusy) or time.monotonic() >= deadline:
                raise failure
            time.sleep(0.02)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- errors ---------------------------------------------------------------

    def _translate(self, error: sqlite3.Error) -> LedgerError:
        code = getattr(error, "sqlite_errorcode", None)  # Python >= 3.11
        if code is not None:
            primary = code & 0xFF
            busy = primary in (_SQLITE_BUSY, _SQLITE_LOCKED)
            corrupt = primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
        else:
            busy = type(error) is sqlite3.OperationalError
            corrupt = type(error) is sqlite3.DatabaseError
        if busy:
            return LedgerBusy(path=self.path, timeout=self.lock_timeout)
        if corrupt:
            return LedgerCorrupt(path=self.path, problem=str(error))
        return LedgerError(path=self.path, problem=str(error))

    # -- schema ---------------------------------------------------------------

    def _ensure_schema(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        with self.transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version > SCHEMA_VERSION:
                raise LedgerError(path=self.path, problem=(
                    f"schema version {version} is newer than this vfmigrate supports "
                    f"({SCHEMA_VERSION}); upgrade vfmigrate"))

    # -- transactions ---------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator["Ledger"]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``; rolled back if the block raises."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise self._translate(error) from None
        try:
            yield self
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as error:
            self._db.execute("ROLLBACK")
            raise self._translate(error) from None

    def _write(self, sql: str, parameters: Iterable = ()) -> sqlite3.Cursor:
        if not self._db.in_transaction:
            raise RuntimeError("ledger writes must run inside Ledger.transaction()")
        try:
            return self._db.execute(sql, tuple(parameters))
        except sqlite3.Error as error:
            raise self._translate(error) from None

    def _read(self, sql: str, parameters: Iterable = ()) -> list[Claim]:
        try:
            rows = self._db.execute(sql, tuple(parameters)).fetchall()
        except sqlite3.Error as error:
            raise self._translate(error) from None
        return [Claim.from_row(row) for row in rows]

    # -- queries --------------------------------------------------------------

    def live_claims(self) -> list[Claim]:
        return self._read(f"SELECT {_COLUMNS} FROM claims WHERE state <> 'released' ORDER BY id")

    def claims_of(self, domain_uuid: str) -> list[Claim]:
        """The live claims of one guest."""
        return self._read(f"SELECT {_COLUMNS} FROM claims WHERE state <> 'released' "
                          "AND domain_uuid = ? ORDER BY id", (domain_uuid,))

    def pending_resets(self) -> list[Claim]:
        """Released claims whose VF was not reset since, oldest first."""
        return self._read(f"SELECT {_COLUMNS} FROM claims WHERE state = 'released' "
                          "AND reset_at IS NULL ORDER BY updated, id")

    def history(self, limit: int = 100) -> list[Claim]:
        return self._read(f"SELECT {_COLUMNS} FROM claims ORDER BY updated DESC, id DESC "
                          "LIMIT ?", (limit,))

    # -- changes (inside transaction()) ---------------------------------------

    def add(self, *, vf: PciAddress, network: str, domain_uuid: str, domain_name: str,
            state: str, reason: str) -> Claim:
        now = self.clock()
        cursor = self._write(
            "INSERT INTO claims (vf, network, domain_uuid, domain_name, state, created, "
            "updated, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (str(vf), network, domain_uuid, domain_name, state, now, now, reason))
        return Claim(cursor.lastrowid, vf, network, domain_uuid, domain_name, state,
                     now, now, reason)

    def set_state(self, claims: Iterable[Claim], state: str, reason: str) -> list[Claim]:
        """Move claims to ``state``; returns them as they are now."""
        now = self.clock()
        changed = []
        for claim in claims:
            self._write("UPDATE claims SET state = ?, updated = ?, reason = ? WHERE id = ?",
                        (state, now, reason, claim.id))
            changed.append(claim._replace(state=state, updated=now, reason=reason))
        return changed

    def mark_reset(self, vf: PciAddress) -> int:
        """Record that ``vf`` was reset: every pending reset of it is done."""
        cursor = self._write("UPDATE claims SET reset_at = ? WHERE vf = ? AND state = 'released' "
                             "AND reset_at IS NULL", (self.clock(), str(vf)))
        return cursor.rowcount

    def prune(self, older_than: float) -> int:
        """Forget released, reset claims last changed before ``older_than``."""
        cursor = self._write("DELETE FROM claims WHERE state = 'released' AND updated < ? "
                             "AND reset_at IS NOT NULL", (older_than,))
        return cursor.rowcount


def _make_private_dir(directory: str) -> None:
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if os.stat(directory).st_mode & 0o077:
            os.chmod(directory, 0o700)
    except OSError as error:
        raise LedgerError(path=directory, problem=error.strerror or str(error)) from None


def _make_private_file(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise LedgerError(path=path, problem=error.strerror or str(error)) from None
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
