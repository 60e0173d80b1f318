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

A VF being reset is held by a *reset claim*: an ``active`` claim whose owner
is vfmigrate itself (``domain_uuid`` :data:`RESET_OWNER`, never a libvirt
UUID).  Because it is an ordinary live claim, every path that respects claims
(VF selection, ``prepare``, status, an older vfmigrate after a downgrade)
keeps the VF out of use without knowing about resets, and the schema stays as
it is.  Its reason says ``resetting: …`` while the reset runs (taken over
after the reset timeout if the process that started it died) and ``reset
failed: …`` after a failure or a timeout: the VF stays out of the free pool
until a later reset succeeds, which releases the reset claim.

A row that cannot be read (a ``vf`` that is not a PCI address, a time that is
not a number: written by hand or by something else) is an error naming the
ledger and the row id (:class:`LedgerBadRow`, exit 5).  Readers that can
work around it (status, reconcile, the release of a stopping guest) pass
``strict=False``: such rows are skipped and listed in :attr:`Ledger.bad_rows`.
A *live* row we cannot read may name any VF, possibly one in use, so the
decisions that hand out a VF read strictly and refuse until it is fixed.

The schema's version is SQLite's ``user_version`` (:data:`SCHEMA_VERSION`).  A
newer one is refused with one line when the ledger is opened *and* in every
transaction, so code older than the file changes nothing, also a listener that
still runs the old code after an upgrade moved the schema under it.  A release
that changes the schema adds a migration from the previous version that runs in
one transaction when the new code first opens the ledger.

SQLite errors are translated at this boundary: busy/locked (retried up to the
lock timeout), corrupt, disk full, read-only, anything else; see
:func:`classify`.
"""

from __future__ import annotations

import os
import stat
import time


def _import_sqlite():
    """The ``_sqlite3`` C module: the sqlite3 package is it plus datetime adapters the
    ledger does not use, which would pull datetime and collections onto the hook's path.

    Python >= 3.11's ``_sqlite3`` fetches ``functools.lru_cache`` as it loads, for its
    cache of prepared statements, and functools imports collections: ~2.5 ms of a hook
    call that libvirt waits for, six calls per migration.  Where functools is not loaded
    yet, ``_sqlite3`` loads beside a functools whose ``lru_cache`` is a plain dictionary
    emptied when full (the ledger has a handful of statements), which is then
    forgotten: whoever imports functools later gets the real one.
    """
    import sys
    if "functools" in sys.modules:
        import _sqlite3
        return _sqlite3

    def lru_cache(maxsize=128, typed=False):
        def decorate(function):
            cache: dict = {}

            def cached(*key):
                value = cache.get(key)
                if value is None:
                    if len(cache) >= max(maxsize or 0, 1):
                        cache.clear()
                    value = cache[key] = function(*key)
                return value
            return cached
        return decorate

    functools = type(sys)("functools")
    functools.lru_cache = lru_cache
    sys.modules["functools"] = functools
    try:
        import _sqlite3
    except Exception:   # a _sqlite3 that wants more of functools: the plain import
        sys.modules.pop("_sqlite3", None)
        del sys.modules["functools"]
        import _sqlite3
    else:
        del sys.modules["functools"]
    return _sqlite3


try:
    sqlite3 = _import_sqlite()
except ImportError:   # not CPython
    import sqlite3

from .errors import LedgerBusy, LedgerCorrupt, LedgerError
from .pci import PciAddress
from .records import record

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

# The live claims through their partial index.  Left to itself, SQLite reads them with
# "ORDER BY id" by scanning the whole table in rowid order, and the table keeps released
# claims for 30 days (listener.PRUNE_AFTER): every hook call that decides over the host
# would read them all.
_LIVE_ROWS = "claims INDEXED BY claims_one_live_per_vf WHERE state <> 'released'"

# SQLite's primary result codes (sqlite3 exports them only from Python 3.11).
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY, _SQLITE_IOERR = 5, 6, 8, 10
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 11, 13, 14, 26
BUSY, CORRUPT, FULL, READONLY, CANTOPEN, OTHER = (
    "busy", "corrupt", "full", "read-only", "cannot open", "other")
_KIND_OF_CODE = {_SQLITE_BUSY: BUSY, _SQLITE_LOCKED: BUSY, _SQLITE_CORRUPT: CORRUPT,
                 _SQLITE_NOTADB: CORRUPT, _SQLITE_FULL: FULL, _SQLITE_READONLY: READONLY,
                 _SQLITE_CANTOPEN: CANTOPEN}
# Before Python 3.11 an sqlite3 error carries no result code, only the text of
# sqlite3_errmsg(), and sqlite3.OperationalError covers BUSY and LOCKED but also
# READONLY, IOERR, FULL, CANTOPEN ...  Reading every OperationalError as "busy"
# made an unwritable state dir wait out the whole lock timeout and then blame a
# lock.  So on those versions we have to decide on the text: SQLite's messages
# for BUSY and LOCKED ("database is locked", "database table is locked",
# "database schema is locked: <db>") have been the same since SQLite 3.0; FULL,
# READONLY and CORRUPT only choose the advice in the message, so a mismatch
# there costs a less helpful line, never a wait or a wrong decision.  Anything
# not recognised is "other": reported at once, never retried.
_KIND_OF_MESSAGE = (
    (("database is locked", "database table is locked", "database schema is locked"), BUSY),
    (("database or disk is full",), FULL),
    (("readonly database", "read-only file system"), READONLY),
    (("unable to open database file",), CANTOPEN),
    (("database disk image is malformed", "file is not a database"), CORRUPT))

# The owner of a reset claim (see the module docstring): not a UUID libvirt gives.
RESET_OWNER = "vfmigrate-reset"
RESET_OWNER_NAME = "vfmigrate (VF reset)"
RESETTING, RESET_FAILED = "resetting", "reset failed"

_COLUMNS = "id, vf, network, domain_uuid, domain_name, state, created, updated, reason"


class LedgerBadRow(LedgerError):
    msg_fmt = ("ledger {path}: claim row {row} is unreadable ({problem}); correct or delete "
               "it with sqlite3 (while it is there, vfmigrate hands out no VF)")


class LedgerFull(LedgerError):
    msg_fmt = ("ledger {path}: the file system is full ({problem}); nothing was changed: "
               "free space under {directory}")


class LedgerReadOnly(LedgerError):
    msg_fmt = ("ledger {path} cannot be written ({problem}); nothing was changed: make "
               "{directory} writable for root (is its file system mounted read-only?)")


class LedgerCannotOpen(LedgerError):
    msg_fmt = ("ledger {path} cannot be opened ({problem}); SQLite creates its -wal and "
               "-shm files next to it: make {directory} writable for root (is its file "
               "system mounted read-only?)")


def classify(error: sqlite3.Error) -> str:
    """What kind of failure ``error`` is: BUSY, CORRUPT, FULL, READONLY, CANTOPEN or OTHER.

    Decided on the SQLite result code where Python gives it (>= 3.11), else on
    the exception class and SQLite's message (see ``_KIND_OF_MESSAGE``).
    """
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return _KIND_OF_CODE.get(code & 0xFF, OTHER)
    text = str(error)
    for phrases, kind in _KIND_OF_MESSAGE:
        if any(phrase in text for phrase in phrases):
            return kind
    # DatabaseError itself (not a subclass) is what SQLITE_CORRUPT/NOTADB raise.
    return CORRUPT if type(error) is sqlite3.DatabaseError else OTHER


class Claim(record("Claim", "id vf network domain_uuid domain_name state created updated "
                   "reason")):
    """One row of the ledger; ``vf`` is a PciAddress, times are Unix seconds."""

    __slots__ = ()

    @classmethod
    def from_row(cls, row: tuple) -> Claim:
        """The claim of a row; ValueError naming the first field that is wrong."""
        row_id, vf, network, domain_uuid, domain_name, state, created, updated, reason = row
        for name, value in (("network", network), ("domain_uuid", domain_uuid),
                            ("domain_name", domain_name), ("state", state),
                            ("reason", reason)):
            if not isinstance(value, str):
                raise ValueError(f"{name} is {value!r}, not text")
        for name, value in (("created", created), ("updated", updated)):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"{name} is {value!r}, not a time")
        if not isinstance(vf, str):
            raise ValueError(f"vf is {vf!r}, not a PCI address")
        return cls(row_id, PciAddress.parse(vf), network, domain_uuid, domain_name, state,
                   created, updated, reason)

    @property
    def is_reset(self) -> bool:
        """A reset claim: vfmigrate holds the VF while it resets it, or after that failed."""
        return self.domain_uuid == RESET_OWNER

    @property
    def reset_state(self) -> str | None:
        """RESETTING or RESET_FAILED for a reset claim, else None."""
        if not self.is_reset:
            return None
        return RESET_FAILED if self.reason.startswith(RESET_FAILED) else RESETTING

    def as_dict(self) -> dict:
        return {"vf": str(self.vf), "network": self.network, "domain_uuid": self.domain_uuid,
                "domain_name": self.domain_name, "state": self.state,
                "created": self.created, "updated": self.updated, "reason": self.reason}


class Ledger:
    @classmethod
    def of(cls, config, clock: "Callable[[], float]" = time.time) -> Ledger:
        """The host's ledger, as its config places and times it."""
        return cls(config.ledger_path, lock_timeout=config.lock_timeout, clock=clock)

    def __init__(self, path: str | os.PathLike, *, lock_timeout: float = 10.0,
                 clock: "Callable[[], float]" = time.time) -> None:
        self.path = os.fspath(path)
        self.lock_timeout = lock_timeout
        self.clock = clock
        self.bad_rows: dict[int, str] = {}   # row id -> problem, seen by lenient reads
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
                self._refuse_newer_schema()   # before anything writes to a newer ledger
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
        kind = classify(error)
        directory = os.path.dirname(self.path)
        if kind == BUSY:
            return LedgerBusy(path=self.path, timeout=self.lock_timeout)
        if kind == CORRUPT:
            return LedgerCorrupt(path=self.path, problem=str(error))
        if kind == FULL:
            return LedgerFull(path=self.path, problem=str(error), directory=directory)
        if kind == READONLY:
            return LedgerReadOnly(path=self.path, problem=str(error), directory=directory)
        if kind == CANTOPEN:
            return LedgerCannotOpen(path=self.path, problem=str(error), directory=directory)
        return LedgerError(path=self.path, problem=str(error))

    # -- schema ---------------------------------------------------------------

    def _refuse_newer_schema(self) -> None:
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as error:
            raise self._translate(error) from None
        if version > SCHEMA_VERSION:
            raise LedgerError(path=self.path, problem=(
                f"schema version {version} is newer than this vfmigrate supports "
                f"({SCHEMA_VERSION}); upgrade vfmigrate (the ledger is kept as it is)"))

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
            elif version != SCHEMA_VERSION:   # no migration exists from that version
                raise LedgerError(path=self.path, problem=(
                    f"schema version {version} is older than this vfmigrate reads "
                    f"({SCHEMA_VERSION}) and has no migration; keep the file and report it"))

    # -- transactions ---------------------------------------------------------

    def transaction(self) -> _Transaction:
        """``with ledger.transaction():`` ``BEGIN IMMEDIATE`` … ``COMMIT``; rolled back if
        the block raises."""
        return _Transaction(self)

    def _rollback(self) -> None:
        """Roll back what is left of the transaction.  After some errors (SQLITE_FULL,
        IOERR, NOMEM …) SQLite has already rolled back by itself: a ROLLBACK then fails
        with "no transaction is active" and would hide the error that matters, so it is
        sent only while a transaction is open, and a failure of it is not reported (the
        connection is closed soon; SQLite rolls back an open transaction then)."""
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _write(self, sql: str, parameters: "Iterable" = ()) -> sqlite3.Cursor:
        if not self._db.in_transaction:
            raise RuntimeError("ledger writes must run inside Ledger.transaction()")
        try:
            return self._db.execute(sql, tuple(parameters))
        except sqlite3.Error as error:
            raise self._translate(error) from None

    def _read(self, sql: str, parameters: "Iterable" = (), *,
              strict: bool = True) -> list[Claim]:
        """The claims of the rows ``sql`` selects.  A row that cannot be read raises
        LedgerBadRow, or, not ``strict``, is skipped and noted in :attr:`bad_rows`."""
        try:
            rows = self._db.execute(sql, tuple(parameters)).fetchall()
        except sqlite3.Error as error:
            raise self._translate(error) from None
        claims = []
        for row in rows:
            try:
                claims.append(Claim.from_row(row))
            except (ValueError, TypeError) as error:
                if strict:
                    raise LedgerBadRow(path=self.path, row=row[0], problem=str(error)) from None
                self.bad_rows[row[0]] = str(error)
        return claims

    def unreadable_rows(self, *, live_only: bool = False) -> dict[int, str]:
        """Rows that cannot be read, by id, with what is wrong (for status and reconcile)."""
        self.bad_rows = {}
        self._read(f"SELECT {_COLUMNS} FROM {_LIVE_ROWS if live_only else 'claims'} ORDER BY id",
                   strict=False)
        return dict(self.bad_rows)

    # -- queries --------------------------------------------------------------

    def live_claims(self, *, strict: bool = True) -> list[Claim]:
        return self._read(f"SELECT {_COLUMNS} FROM {_LIVE_ROWS} ORDER BY id", strict=strict)

    def claims_of(self, domain_uuid: str, *, strict: bool = True) -> list[Claim]:
        """The live claims of one guest."""
        return self._read(f"SELECT {_COLUMNS} FROM claims WHERE state <> 'released' "
                          "AND domain_uuid = ? ORDER BY id", (domain_uuid,), strict=strict)

    def pending_resets(self, *, strict: bool = True) -> list[Claim]:
        """Released claims whose VF was not reset since, oldest first."""
        return self._read(f"SELECT {_COLUMNS} FROM claims WHERE state = 'released' "
                          "AND reset_at IS NULL ORDER BY updated, id", strict=strict)

    def history(self, limit: int = 100, *, strict: bool = True) -> list[Claim]:
        return self._read(f"SELECT {_COLUMNS} FROM claims ORDER BY updated DESC, id DESC "
                          "LIMIT ?", (limit,), strict=strict)

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

    def set_state(self, claims: "Iterable[Claim]", state: str, reason: str) -> list[Claim]:
        """Move claims to ``state``; returns them as they are now."""
        now = self.clock()
        changed = []
        for claim in claims:
            self._write("UPDATE claims SET state = ?, updated = ?, reason = ? WHERE id = ?",
                        (state, now, reason, claim.id))
            changed.append(claim._replace(state=state, updated=now, reason=reason))
        return changed

    def add_reset_claim(self, vf: PciAddress, network: str, reason: str) -> Claim:
        """Hold ``vf`` for vfmigrate itself while it is reset (see the module docstring)."""
        return self.add(vf=vf, network=network, domain_uuid=RESET_OWNER,
                        domain_name=RESET_OWNER_NAME, state=ACTIVE, reason=reason)

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
    """Create the ledger file 0600, or make an existing one 0600, without opening it.

    An existing ledger is never opened here: closing any descriptor of a file drops
    all of this process's POSIX locks on it, the locks through which SQLite tells
    other processes that a connection of ours has it open (a hook closing its
    connection would then checkpoint and truncate the WAL under ours: "disk I/O
    error" on our next read)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except FileExistsError:
        fd = None
    except OSError as error:
        raise LedgerError(path=path, problem=error.strerror or str(error)) from None
    if fd is not None:
        os.close(fd)   # new: no connection of ours can hold locks on it yet
    try:
        status = os.lstat(path)
        if stat.S_ISLNK(status.st_mode) or not stat.S_ISREG(status.st_mode):
            raise LedgerError(path=path, problem="not a regular file (a symlink?); "
                                                 "move it aside")
        if status.st_mode & 0o077:
            os.chmod(path, 0o600)
    except OSError as error:
        raise LedgerError(path=path, problem=error.strerror or str(error)) from None


class _Transaction:
    """What :meth:`Ledger.transaction` returns (a class, not contextlib: the hook's
    imports stay light)."""

    __slots__ = ("ledger",)

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def __enter__(self) -> Ledger:
        try:
            self.ledger._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise self.ledger._translate(error) from None
        try:
            # A newer vfmigrate may have moved the schema since this connection opened
            # (a listener still running the old code during an upgrade).
            self.ledger._refuse_newer_schema()
        except BaseException:
            self.ledger._rollback()
            raise
        return self.ledger

    def __exit__(self, kind, error, traceback) -> bool:
        if kind is not None:
            self.ledger._rollback()
            return False
        try:
            self.ledger._db.execute("COMMIT")
        except sqlite3.Error as failure:
            self.ledger._rollback()
            raise self.ledger._translate(failure) from None
        return False
