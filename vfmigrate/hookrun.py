"""The part of the hook that runs only for guests that may hold VFs.

Kept apart from :mod:`vfmigrate.hook` so that the common path (no VF) imports
nothing but ``os`` and ``sys``.  The contract is documented there.

This path stays import-light too (no logging, pathlib, dataclasses or
typing): it runs synchronously inside libvirt's migration and start paths.
"""

from __future__ import annotations

from . import config as configuration
from . import domxml, ownership
from .errors import (ConfigMissing, EXIT_INTERNAL, NotConfigured, VfmigrateError,
                     exit_code_for)
from .events import (ERROR, INFO, JOURNAL_SOCKET, WARNING, Event, HookLog,
                     default_sender)
from .ledger import Ledger

# started/stopped/release need the ledger alone: what claims and the inventory cost to
# import is spent only by the operations that decide over the host (see _claims).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .claims import Claims
    from .inventory import Inventory
    from .ownership import Change

# What the guest is doing when libvirt runs the hook, as the journal says it.
_DOING = {"migrate": "is arriving by migration", "restore": "is being restored",
          "prepare": "is starting", "start": "is starting", "started": "is running",
          "reconnect": "is running (libvirt reconnected to it)"}

# The shut-off reason libvirt >= 10.5 passes to stopped/release ("-" before).
_HOW_STOPPED = {"shutdown": "shut down", "destroyed": "was destroyed", "crashed": "crashed",
                "migrated": "migrated to another host", "saved": "was saved to a file",
                "failed": "failed to start", "from snapshot": "was reverted to a snapshot",
                "daemon": "was stopped by libvirt"}


def how_stopped(extra: str) -> str:
    return _HOW_STOPPED.get(extra, "stopped")


class HookCall:
    """One hook invocation; see :func:`vfmigrate.hook.main` for the parameters."""

    def __init__(self, *, domain_name, operation, sub_operation, extra, xml, stdout, stderr,
                 environ, config, sysfs_root, ledger, clock, journal_sender,
                 journal_socket, netlink_factory=None) -> None:
        self.domain_name = domain_name
        self.operation = operation
        self.sub_operation = sub_operation
        self.extra = extra
        self.xml = xml
        self.stdout = stdout
        self.stderr = stderr
        self.environ = environ
        self.config = config
        self.sysfs_root = sysfs_root
        self.ledger = ledger
        self.opened_ledger = False   # by this call, which then closes it
        self.clock = clock
        self.netlink_factory = netlink_factory   # tests: a VFNetlink over a fake PF
        sender = journal_sender
        if sender is None:
            sender = default_sender(journal_socket or JOURNAL_SOCKET)
        self.log = HookLog(stderr, sender)

    def run(self) -> int:
        try:
            return self._answer()
        finally:
            if self.opened_ledger:   # closed here, not by the interpreter's teardown
                self.ledger.close()

    def _answer(self) -> int:
        try:
            return self._dispatch()
        except VfmigrateError as error:
            if self.operation == "reconnect":
                self.log.event(Event.CONFLICT, f"reconnect of guest {self.domain_name}: "
                               f"{error} (ignored: the guest keeps running)",
                               priority=ERROR, domain=self.domain_name)
                return 0
            return self._fail(str(error), exit_code_for(error))
        except Exception as error:  # a bug: one line for libvirt, traceback for the journal
            import traceback
            self.log.event(Event.REFUSED, f"internal error in {self.operation} hook for "
                           f"guest {self.domain_name}: {traceback.format_exc()}",
                           priority=ERROR, domain=self.domain_name, journal_only=True)
            if self.operation == "reconnect":
                return 0
            return self._fail(f"internal error: {type(error).__name__}: {error}; "
                              "please report it with the journal's traceback", EXIT_INTERNAL)

    def _fail(self, message: str, code: int) -> int:
        line = " ".join(message.split())
        self.log.event(Event.REFUSED, f"{self.operation} of guest {self.domain_name} "
                       f"refused: {line}", priority=ERROR, domain=self.domain_name,
                       journal_only=True)
        self.stderr.write(f"vfmigrate: {line}\n")
        self.stderr.flush()
        return code

    # -- set-up -------------------------------------------------------------

    def _load_config(self) -> configuration.Config:
        if self.config is not None:
            return self.config
        return configuration.load(configuration.config_path(None, self.environ))

    def _ledger(self, config: configuration.Config) -> Ledger:
        if self.ledger is None:
            self.ledger = Ledger.of(config, self.clock)
            self.opened_ledger = True
        return self.ledger

    def _claims(self, config: configuration.Config) -> Claims:
        from .claims import Claims
        return Claims.of(config, self._ledger(config), self.clock, sysfs_root=self.sysfs_root,
                         on_unreadable=lambda problem: self.log.event(
                             Event.CONFLICT, problem, priority=WARNING,
                             domain=self.domain_name))

    # -- operations ---------------------------------------------------------

    def _dispatch(self) -> int:
        domain = domxml.parse(self.xml)
        if self.operation in ("migrate", "restore"):
            return self._incoming(domain)
        try:
            config = self._load_config()
        except ConfigMissing:
            return 0  # not configured: vfmigrate manages no VF on this host
        if domain.test_only and config.allow_stand_ins:
            domain = domxml.parse(self.xml, allow_stand_ins=True)
        if self.operation == "started":
            self._log(domain, ownership.activate(self._ledger(config), domain.uuid,
                                                 "started: the guest is running"))
            return 0
        if self.operation in ("stopped", "release"):
            how = how_stopped(self.extra)
            self._log(domain, ownership.release(self._ledger(config), domain.uuid,
                                                f"{self.operation}: guest {how}"), doing=how)
            return 0
        claims = self._claims(config)
        if self.operation in ("prepare", "start"):
            self._log(domain, claims.claim_for_start(domain))
        elif self.operation == "reconnect":
            changes, conflicts = claims.reassert(domain)
            self._log(domain, changes)
            for conflict in conflicts:
                self.log.event(Event.CONFLICT, f"reconnect of guest {domain.name}: {conflict}",
                               priority=ERROR, domain=domain.name,
                               vf=conflict.fields.get("vf"))
        self._log_skipped(claims.inventory)
        return 0

    def _incoming(self, domain: domxml.DomainXML) -> int:
        if not domain.travelling_devices and not domain.test_only:
            return 0
        try:
            config = self._load_config()
        except ConfigMissing as missing:
            raise NotConfigured(domain=domain.name,
                                count=len(domain.travelling_devices) + len(domain.test_only),
                                config_path=missing.path) from None
        if domain.test_only:
            if not config.allow_stand_ins:
                domain.refuse_test_only(config.path)
            domain = domxml.parse(self.xml, allow_stand_ins=True)
        claims = self._claims(config)
        assignments, changes = claims.reserve_incoming(domain, self.operation)
        rewritten = domain.rewrite([(a.device, a.vf.address) for a in assignments])
        try:
            applied, unapplied = self._apply_settings(config, domain, assignments)
        except VfmigrateError:
            ownership.release(claims.ledger, domain.uuid, f"{self.operation}: its VF settings "
                                                          "could not be applied")
            raise
        try:
            if rewritten != self.xml:
                self.stdout.write(rewritten)
                self.stdout.flush()
        except OSError:
            ownership.release(claims.ledger, domain.uuid,
                              f"{self.operation}: could not hand the XML to libvirt")
            raise
        self._log(domain, changes)
        self._log_settings(domain, applied, unapplied)
        self._log_skipped(claims.inventory)
        return 0

    def _apply_settings(self, config, domain, assignments):
        """The source's VF settings on the chosen VFs (:mod:`vfmigrate.parity`)."""
        if not any(a.device.entry for a in assignments):
            return [], []
        from . import parity
        wanted = parity.wanted_settings(assignments)
        if not wanted:
            return [], []
        from .rtnl import RouteSocket
        from .vfnetlink import VFNetlink
        sysfs_root = self.sysfs_root or config.sysfs_root
        return parity.apply_on_arrival(
            config, domain, wanted,
            self.netlink_factory or (lambda: VFNetlink(sysfs_root, RouteSocket)))

    def _log_settings(self, domain, applied, unapplied) -> None:
        from .vfsettings import describe
        doing = _DOING.get(self.operation, self.operation)
        for done in applied:
            self.log.event(Event.CONFIGURED, f"guest {domain.name} {doing}: VF {done.vf.address} "
                           f"(PF {done.vf.pf} vf {done.vf.index}) has the source's "
                           f"{describe(done.settings)}", domain=domain.name,
                           vf=done.vf.address, network=done.vf.network)
        for missing in unapplied:
            self.log.event(Event.UNAPPLIED, f"guest {domain.name} {doing}: "
                           f"{missing.sentence()}", priority=WARNING, domain=domain.name,
                           vf=missing.vf.address, network=missing.vf.network)

    def _log(self, domain: domxml.DomainXML, changes: list[Change], doing: str = "") -> None:
        """One sentence per change: "guest web1 is running: VF … of network … is in use"."""
        doing = doing or _DOING.get(self.operation, self.operation)
        for change in changes:
            # Another guest's claim this call ended (it never arrived) is told as its own.
            others = change.domain_uuid is not None and change.domain_uuid != domain.uuid
            about = change.domain_name if others else domain.name
            self.log.event(change.event, ("" if others else f"guest {domain.name} {doing}: ")
                           + f"VF {change.vf} of network {change.network} {change.detail}",
                           domain=about, vf=change.vf, network=change.network,
                           priority=WARNING if change.event is Event.SPREAD else INFO)

    def _log_skipped(self, inventory: Inventory) -> None:
        for problem in inventory.skipped:
            self.log.event(Event.VANISHED, f"skipped unreadable VF link {problem}",
                           priority=WARNING, domain=self.domain_name)
