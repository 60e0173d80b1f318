"""Logging for the listener and the CLI: journald first, stderr else.

Records about VFs carry the structured fields of :mod:`vfmigrate.events`;
:func:`event` attaches them.  (The hook has its own lighter sender there.)
"""

from __future__ import annotations

import logging
import os
from typing import Callable, TextIO

from .events import IDENTIFIER, JOURNAL_SOCKET, Event, journal_fields

_HANDLER_MARK = "_vfmigrate_handler"


def event(logger: logging.Logger, kind: Event, message: str, *args: object,
          level: int = logging.INFO, domain: str | None = None, vf: object = None,
          network: str | None = None, **fields: object) -> None:
    """Log one event with its structured journal fields."""
    logger.log(level, message, *args,
               extra=journal_fields(kind, domain=domain, vf=vf, network=network, **fields))


def setup(*, stream: TextIO, journal_socket: str = JOURNAL_SOCKET,
          sender: Callable[..., None] | None = None, level: int = logging.INFO,
          identifier: str = IDENTIFIER) -> bool:
    """Send the ``vfmigrate`` loggers to journald if it listens, else to ``stream``.

    Returns whether the journal is used.  Calling it again replaces the handler
    it installed before (tests run ``main()`` many times in one process).
    """
    root = logging.getLogger("vfmigrate")
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler: logging.Handler | None = None
    if sender is not None or os.path.exists(journal_socket):
        handler = _journal_handler(identifier, sender)
    use_journal = handler is not None
    if handler is None:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(f"{identifier}: %(message)s"))
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    return use_journal


def _journal_handler(identifier: str, sender: Callable[..., None] | None) -> logging.Handler | None:
    try:
        from systemd import journal
    except ImportError:
        return None
    if sender is not None:
        return journal.JournalHandler(sender_function=sender, SYSLOG_IDENTIFIER=identifier)
    return journal.JournalHandler(SYSLOG_IDENTIFIER=identifier)
