"""Kinds of event, their journal fields, and the hook's lightweight sender.

Every record about a VF carries structured journal fields so that
``journalctl VFMIGRATE_DOMAIN=web1`` or ``journalctl MESSAGE_ID=…`` finds it:

* ``VFMIGRATE_DOMAIN``, ``VFMIGRATE_VF``, ``VFMIGRATE_NETWORK``,
  ``VFMIGRATE_ACTION`` (the :class:`Event` name, lower case);
* ``MESSAGE_ID``: one per kind of event, explained by the journald catalog
  (``systemd/vfmigrate.catalog``; ``journalctl -x`` shows it).

The listener and the CLI log through :mod:`logging` and python-systemd's
``JournalHandler`` (:mod:`vfmigrate.logs`).  The hook runs inside libvirt's
synchronous path on every VF guest's start, stop and migration, where
importing ``logging`` and ``systemd.journal`` would cost more than the whole
claim; it sends the same fields through python-systemd's C ``sendv`` with
:class:`HookLog` instead.
"""

from __future__ import annotations

import os
from io import TextIOBase

from . import __version__

IDENTIFIER = "vfmigrate"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
ERROR, WARNING, INFO = 3, 4, 6   # syslog priorities


class EventKind:
    """One kind of event: its ``name`` (``RESERVED``) and journald ``MESSAGE_ID``."""

    __slots__ = ("name", "message_id")

    def __init__(self, name: str, message_id: str) -> None:
        self.name, self.message_id = name, message_id

    def __repr__(self) -> str:
        return f"Event.{self.name}"


class _Kinds(type):
    def __iter__(cls):
        return iter(cls.ALL)


class Event(metaclass=_Kinds):
    """The kinds of event (``for kind in Event`` lists them).  A plain class, not an
    :class:`enum.Enum`: the hook would import ``enum`` for it."""

    # incoming claim made, XML rewritten
    RESERVED = EventKind("RESERVED", "2116d4f0a90d494a8a5d45d8bdc4cfab")
    # claim became active
    ACTIVATED = EventKind("ACTIVATED", "9ef0a1bde2f842e7a13b72f635451e34")
    # claim released
    RELEASED = EventKind("RELEASED", "4760036efa7a47f38f6181af75c33ac9")
    # migration or start refused
    REFUSED = EventKind("REFUSED", "0b4900f32c7a4139bb301efd446c9365")
    # stale incoming claim dropped
    EXPIRED = EventKind("EXPIRED", "f700e0ac5c964d23b87c04247eba9fe8")
    # VF MAC/VLAN reset on its PF
    RESET = EventKind("RESET", "7138d2b23c4a4d868223740d6c3c15cc")
    # reconcile fixed the ledger
    CORRECTED = EventKind("CORRECTED", "4132176e668b408d9e57b67fd995cc0a")
    # a VF is named by two guests
    CONFLICT = EventKind("CONFLICT", "9261fa8fae7d41148adb96d777b8aa2b")
    # migration job completed
    MIGRATED = EventKind("MIGRATED", "69afe97beb464d3680922ef3f6e36c4b")
    # a claimed VF left sysfs
    VANISHED = EventKind("VANISHED", "d87576d8cb514b50aa84accace367d5c")
    # guest metadata updated
    METADATA = EventKind("METADATA", "edeb2456afc7420aade3dbf40b94139b")
    # VF plugged into a guest
    ATTACHED = EventKind("ATTACHED", "c27ab41d3831412192a38a6595978a8e")
    # VF unplugged from a guest
    DETACHED = EventKind("DETACHED", "0ad7ee91f61545498644a1a7aa89a119")
    # listener started/stopped/reconnected
    LISTENER = EventKind("LISTENER", "4bfacb2dc9984b559e85da0e928e6e08")
    # VF settings set on its PF: a teamed <hostdev>'s MAC/VLAN, an arriving guest's settings
    CONFIGURED = EventKind("CONFIGURED", "445ed6f424c74e21bd605136cc6a3561")
    # an arriving guest's VFs share a PF that were on different PFs on the source
    SPREAD = EventKind("SPREAD", "7211190c21c04066be8f63c1dbbe6593")
    # an arriving guest's VF did not get a setting it had on the source
    UNAPPLIED = EventKind("UNAPPLIED", "a6b0b03a1c8e4dd7a0a55c4ecb69e049")

    ALL: tuple[EventKind, ...] = ()


Event.ALL = tuple(kind for kind in vars(Event).values() if isinstance(kind, EventKind))


def journal_fields(kind: EventKind, *, domain: str | None = None, vf: object = None,
                   network: str | None = None, **extra: object) -> dict[str, str]:
    fields = {"MESSAGE_ID": kind.message_id, "VFMIGRATE_ACTION": kind.name.lower(),
              "VFMIGRATE_VERSION": __version__}   # which code acted, across upgrades
    if domain is not None:
        fields["VFMIGRATE_DOMAIN"] = domain
    if vf is not None:
        fields["VFMIGRATE_VF"] = str(vf)
    if network is not None:
        fields["VFMIGRATE_NETWORK"] = network
    for name, value in extra.items():
        fields["VFMIGRATE_" + name.upper()] = str(value)
    return fields


# A Sender is python-systemd's journal.send(MESSAGE, **fields), or what stands in for it.

def default_sender(socket_path: str = JOURNAL_SOCKET) -> "Sender | None":
    """A journal sender if journald listens and python-systemd is installed."""
    if not os.path.exists(socket_path):
        return None
    try:
        from systemd._journal import sendv   # the C half of systemd.journal.send
    except ImportError:
        return None

    def send(MESSAGE: str, **fields: object) -> None:
        sendv(f"MESSAGE={MESSAGE}", *(f"{key}={value}" for key, value in fields.items()))
    return send


class HookLog:
    """The hook's logger: structured journal entries, else lines on stderr."""

    def __init__(self, stream: TextIOBase, sender: "Sender | None") -> None:
        self.stream = stream
        self.sender = sender

    @property
    def to_journal(self) -> bool:
        return self.sender is not None

    def event(self, kind: EventKind, message: str, *, priority: int = INFO,
              journal_only: bool = False, **fields: object) -> None:
        """Log one event; ``journal_only`` for what is also written elsewhere."""
        if self.sender is not None:
            try:
                self.sender(message, PRIORITY=str(priority), SYSLOG_IDENTIFIER=IDENTIFIER,
                            **journal_fields(kind, **fields))
                return
            except OSError:   # journald went away: fall back to stderr
                pass
        if not journal_only:
            self.stream.write(f"{IDENTIFIER}: {message}\n")
