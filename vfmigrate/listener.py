"""The vfmigrate listener: what needs the libvirt API, driven by its events.

The hook may not call libvirt; this daemon (``vfmigrate-listener``, a
systemd ``Type=notify`` service) does, on the same host:

========================  ====================================================
event                     what the listener does
========================  ====================================================
STOPPED (any detail)      release the guest's claims (idempotent with the
                          hook's ``release``), then reset every released VF
                          nobody holds: MAC 0, VLAN 0, spoof check and trust
                          to host defaults, through netlink on its PF
STARTED (not MIGRATED)    label the guest's VFs with their network and their
                          VF settings in its metadata (live, and config if
                          persistent) so that a later migration carries them
STARTED (MIGRATED)        give an arriving guest's VFs the MAC of a teamed
                          ``<hostdev>`` and the recorded VLAN priority
RTM_NEWLINK on a PF       record again the VF settings of the guests holding
                          VFs of that PF (not while they migrate)
arrival (see below)       the guest arrived: its claims become ``active``; a
                          persistent guest's saved definition, which still
                          names the source's VFs, is rewritten to the VFs it
                          holds here; its metadata is labelled
DEVICE_REMOVED/ADDED      reconcile that guest: an unplugged VF is released
                          and reset, a plugged one claimed (a VF a dead
                          ``vfmigrate migrate`` unplugged is plugged back)
DEVICE_REMOVAL_FAILED     logged
JOB_COMPLETED             a migration's time and downtime are logged
udev add/remove (PCI/net) VF counts refreshed; a claimed VF that vanished is
                          logged as an error
========================  ====================================================

At start and after every reconnect the whole host is reconciled
(:mod:`vfmigrate.reconcile`); READY=1 is sent once the callbacks are
registered and that first reconcile is done.  What the listener sets on a
guest's VFs, and when it records their settings again, is
:mod:`vfmigrate.vfpolicy`.

Never harm a running guest: the listener releases a claim, resets a VF or
rewrites a definition only on positive evidence: libvirt reports the guest
shut off or migrated out, or no running guest's live XML names that VF.
Absence of evidence is not evidence:

* a running guest whose XML vfmigrate cannot read (too large, malformed, or
  metadata it rejects) is *running, unknown*: its claims stay, none of its
  VFs is reset, its definitions are not touched; one warning per guest says
  what is wrong, and everything else (READY=1 included) goes on;
* a saved definition is rewritten only for a guest that has just arrived by
  migration (the arrival event, or at start libvirt's state reason
  ``migrated`` and a saved definition not yet checked on this host), and
  only for the devices vfmigrate moved: a travelling device of the live XML,
  matched by MAC or alias (never by position), on a VF this guest holds a
  claim for here.  The check is recorded in the saved definition's metadata
  (:data:`vfmigrate.arrival.SAVED_NAMESPACE`, this host's UUID), so a later
  ``virsh edit`` of the admin stays as it is (:mod:`vfmigrate.arrival`);
* every step for one guest is fenced: a failure is logged for that guest and
  the other guests, the ledger and the status go on.

Arrival by migration: RESUMED/MIGRATED on a guest this host saw come in
(STARTED/MIGRATED) or whose state reason is ``migrated`` (on a source,
RESUMED/MIGRATED means its outgoing migration failed); or, for a guest seen
coming in, the end of its incoming migration: libvirt 9.0 sends no event for
a guest that arrives paused (``migrate --suspend``: STARTED/MIGRATED then
SUSPENDED/PAUSED, no JOB_COMPLETED on the destination, seen), so the main
thread looks every second until no migration runs on it any more.  Arrival
is idempotent.

Interrupted ``vfmigrate migrate`` (:mod:`vfmigrate.assisted`): the command
keeps a lease in the guest's live metadata.  When its process is gone and no
migration job runs on the guest, the listener of its source host plugs back
every VF the guest no longer has and restores its metadata; a VF whose
unplug completes only after the command gave up is plugged back when its
DEVICE_REMOVED arrives, instead of being released and reset.  A guest whose
command still runs is looked at every second.

Threads and supervision: :class:`Listener` is what decides, on the
connection, queue and main loop of :class:`vfmigrate.supervision.Supervisor`.
As in libvirt-python's ``examples/event-test.py``, libvirt's default event
loop runs on a daemon thread named ``libvirt-event-loop``; pyudev's observer
and the netlink link watch on their own.  Callbacks only put work on a queue;
the main thread does the work, one item at a time, so no callback ever blocks
libvirt and the ledger is used from one thread.  A failure handling an item is
logged as a sentence (``guest web1: handling its lifecycle event failed: ...``)
and the loop goes on.

Lost connection (libvirtd restarted or stopped): the listener reconnects
with bounded exponential backoff (1 s doubling to 30 s), keeps pinging the
watchdog and says ``STATUS=waiting for libvirt`` meanwhile, and reconciles
after reconnecting.  Events missed while disconnected are covered by that
reconcile.  SIGTERM/SIGINT: deregister the callbacks, close, exit 0.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TextIO

from . import (METADATA_NAMESPACE, arrival, assisted, domxml, metadata, ownership, replug,
               vfpolicy)
from .config import Config
from .errors import BadDomainXML, LibvirtFailure, VfmigrateError
from .events import Event
from .inventory import Inventory
from .ledger import Ledger
from .logs import event
from .ownership import Change
from .reconcile import Reconciler, vf_resetter
from .supervision import (DeviceChanged, JobCompleted, Lifecycle, LinkChanged, Notifier,
                          Reconcile, RemovalFailed, Supervisor, UdevEvent, Watch, link_watch,
                          pyudev_watch)
from .vfnetlink import VFSettingError
from . import vfsettings


log = logging.getLogger("vfmigrate.listener")

PRUNE_AFTER = 30 * 86400   # released, reset claims are kept this long as history


class Listener(Supervisor):
    """What the listener decides, on the connection and events its :class:`Supervisor` keeps.

    A subclass rather than a collaborator: every step works on the connection the
    supervisor reopens (``self.host``) and tells a guest's failure from a lost
    connection by asking it (``_alive()``).
    """

    def __init__(self, config: Config, *, uri: str | None = None, ledger: Ledger | None = None,
                 opener: Callable[[str], object] | None = None, libvirt_module=None,
                 udev_watch: Callable | None = pyudev_watch,
                 netlink_watch: Callable | None = link_watch, notifier: Notifier | None = None,
                 vf_netlink=None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(uri=uri or config.libvirt_uri, libvirt_module=libvirt_module,
                         opener=opener, libvirt_run_dir=config.libvirt_run_dir,
                         udev_watch=udev_watch,
                         netlink_watch=netlink_watch if config.vf_reset != "none" else None,
                         notifier=notifier, clock=clock, sleep=sleep)
        self.config = config
        self.ledger = ledger   # opened in prepare(): SQLite wants the thread that uses it
        self.vf_netlink = vf_netlink or vf_resetter(config)
        self.reconciler: Reconciler | None = None
        self.reconciled = False   # the first whole-host reconcile is done
        self.unreadable: dict[str, str] = {}   # uuid -> why its XML was rejected (warned)
        self.status_problem: str | None = None
        self.host_uuid: str | None = None
        self.incoming: dict[str, str] = {}   # uuid -> name: migrating in, not yet arrived
        self.leased: dict[str, str] = {}   # uuid -> name: a live vfmigrate migrate owns it

    # -- what the Supervisor asks --------------------------------------------------

    def prepare(self) -> None:
        if self.ledger is None:
            self.ledger = Ledger.of(self.config, self.clock)
        self.reconciler = Reconciler(self.config, self.ledger, vf_netlink=self.vf_netlink,
                                     clock=self.clock)

    def ready(self) -> bool:
        return self.reconciled

    def watching(self) -> bool:
        return bool(self.incoming or self.leased)

    def status(self) -> str:
        """Claims and pending resets; a ledger it cannot read is said, never fatal."""
        try:
            claims = self.ledger.live_claims()
            pending = len({claim.vf for claim in self.ledger.pending_resets()})
        except Exception as error:   # a malformed row raises ValueError, not only LedgerError
            problem = " ".join(str(error).split()) or type(error).__name__
            if problem != self.status_problem:
                log.error("status not updated: the ledger cannot be read (%s)", problem)
                self.status_problem = problem
            return f"ledger unreadable: {problem}"
        self.status_problem = None
        incoming = sum(1 for claim in claims if claim.state == "incoming")
        return (f"claims: {incoming} incoming, {len(claims) - incoming} active; "
                f"{pending} resets pending; {self.events_handled} events handled")

    # -- work ------------------------------------------------------------------

    def handle(self, item: tuple) -> None:
        if isinstance(item, Reconcile):
            self.reconcile_all(item.context)
        elif isinstance(item, Lifecycle):
            self._lifecycle(*item)
        elif isinstance(item, DeviceChanged):
            log.info("guest %s: device %s %s", item.name, item.alias, item.change)
            self.reconcile_guest(item.uuid, f"device-{item.change} {item.alias}")
        elif isinstance(item, RemovalFailed):
            event(log, Event.DETACHED, "guest %s refused to unplug device %s", item.name,
                  item.alias, level=logging.WARNING, domain=item.name, alias=item.alias)
        elif isinstance(item, JobCompleted):
            self._job_completed(*item)
        elif isinstance(item, UdevEvent):
            self._udev(*item)
        elif isinstance(item, LinkChanged):
            self.record_settings_on(item.ifname)
        elif isinstance(item, Watch):
            self._check_incoming()
            self._check_leased()
        else:
            log.warning("ignoring unknown work item %r", item)

    def _lifecycle(self, uuid: str, name: str, kind: int, detail: int) -> None:
        libvirt = self.libvirt
        log.debug("guest %s: lifecycle event %d detail %d", name, kind, detail)
        if kind == libvirt.VIR_DOMAIN_EVENT_STOPPED:
            self.unreadable.pop(uuid, None)
            self.incoming.pop(uuid, None)
            self.reconcile_guest(uuid, "stopped")
        elif kind == libvirt.VIR_DOMAIN_EVENT_STARTED \
                and detail == libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED:
            # The incoming QEMU runs; the VF reaches the guest only once it has arrived.
            # It arrives with RESUMED/MIGRATED, or paused (migrate --suspend) or after
            # post-copy with no event saying so: watched until its migration job ends.
            self.incoming[uuid] = name
            for what, step in (("setting the MAC of its teamed hostdevs",
                                self.configure_teamed_hostdevs),
                               ("setting its VFs' VLAN priority", self.apply_vlan_priority)):
                self._for_guest(uuid, name, what, step)
        elif kind == libvirt.VIR_DOMAIN_EVENT_STARTED:
            for what, step in (("setting the MAC of its teamed hostdevs",
                                self.configure_teamed_hostdevs),
                               ("plugging in its pending VFs", self.plug_pending_vfs),
                               ("labelling its VFs", self.label_guest)):
                self._for_guest(uuid, name, what, step)
            self.reconcile_guest(uuid, "started")
        elif kind == libvirt.VIR_DOMAIN_EVENT_RESUMED \
                and detail == libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED:
            # Also the source's event when its outgoing migration failed: arrival only if
            # this host saw it come in, or libvirt says it did (state reason migrated).
            if self.incoming.pop(uuid, None) is not None \
                    or self.host.arrived_by_migration(uuid):
                self.arrived(uuid, name)
            else:
                self.reconcile_guest(uuid, "migration failed, the guest resumed here")
        elif uuid in self.incoming:
            self._check_incoming()

    def _check_incoming(self) -> None:
        """Arrival of the guests whose incoming migration was under way: its job ended."""
        for uuid, name in list(self.incoming.items()):
            try:
                if self.host.migration_job_running(uuid):
                    continue
                active = self.host.is_active(uuid)
            except LibvirtFailure as error:
                log.warning("guest %s: cannot tell whether its incoming migration ended: %s",
                            name, error)
                continue
            del self.incoming[uuid]
            if active:
                self.arrived(uuid, name)

    def _job_completed(self, uuid: str, name: str, params: dict) -> None:
        libvirt = self.libvirt
        operation = params.get(libvirt.VIR_DOMAIN_JOB_OPERATION)
        if operation not in (libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN,
                             libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT):
            return
        direction = ("in" if operation == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN
                     else "out")
        elapsed = params.get(libvirt.VIR_DOMAIN_JOB_TIME_ELAPSED)
        downtime = params.get(libvirt.VIR_DOMAIN_JOB_DOWNTIME)
        event(log, Event.MIGRATED, "guest %s migrated %s: %s ms elapsed, %s ms downtime", name,
              direction, elapsed, downtime, domain=name, direction=direction,
              time_elapsed_ms=elapsed, downtime_ms=downtime)
        if direction == "in" and self.host.is_active(uuid):
            self.incoming.pop(uuid, None)
            self.arrived(uuid, name)

    def _udev(self, action: str, subsystem: str, sys_name: str) -> None:
        if action not in ("add", "remove"):
            return
        inventory = Inventory.of(self.config)
        counts = ", ".join(f"{network}: {len(inventory.vfs_of_network(network))} VFs"
                           for network in self.config.networks)
        log.info("udev %s %s %s; inventory now %s", action, subsystem, sys_name,
                 counts or "empty")
        present = {vf.address for network in self.config.networks
                   for vf in inventory.vfs_of_network(network)}
        for claim in self.ledger.live_claims():
            if claim.vf not in present:
                event(log, Event.VANISHED, "VF %s claimed by guest %s (%s) vanished from sysfs",
                      claim.vf, claim.domain_name, claim.state, level=logging.ERROR,
                      domain=claim.domain_name, vf=claim.vf, network=claim.network)

    # -- actions -------------------------------------------------------------

    def _log_corrections(self, corrections: list[Change], context: str) -> None:
        for correction in corrections:
            level = logging.ERROR if correction.event in (Event.CONFLICT, Event.VANISHED) \
                or correction.detail.startswith("reset failed") else logging.INFO
            event(log, correction.event, "%s: %s: %s", context, correction.subject(),
                  correction.detail, level=level, domain=correction.domain_name,
                  vf=correction.vf, network=correction.network)

    # -- one guest at a time, fenced ---------------------------------------------

    def _for_guest(self, uuid: str, name: str, what: str, step: Callable, *args):
        """Run one step for one guest; its failure is that guest's, never the listener's."""
        try:
            return step(uuid, *args)
        except BadDomainXML as error:
            self._warn_unreadable(uuid, name, error)
        except LibvirtFailure as error:
            if self.host is not None and not self._alive():
                raise   # the connection is gone: _handle_fenced reconnects
            log.error("guest %s: %s failed: %s", name, what, error)
        except VfmigrateError as error:
            log.error("guest %s: %s failed: %s", name, what, error)
        except Exception:
            log.exception("guest %s: %s failed with an unexpected error", name, what)
        return None

    def _parse(self, xml: bytes) -> domxml.DomainXML:
        return domxml.parse(xml, allow_stand_ins=self.config.allow_stand_ins)

    def _warn_unreadable(self, uuid: str, name: str, error: Exception) -> None:
        """Once per guest (and problem): a running guest vfmigrate cannot read."""
        problem = str(error)
        if self.unreadable.get(uuid) == problem:
            return
        self.unreadable[uuid] = problem
        event(log, Event.CONFLICT, "guest %s is running but vfmigrate cannot read its XML "
              "(%s); its VFs stay claimed and nothing of it is reset or rewritten until that "
              "is fixed", name, problem, level=logging.WARNING, domain=name)

    def _readable(self, guests: list) -> list:
        """The running guests whose XML vfmigrate reads; the others are warned about."""
        readable = []
        for guest in guests:
            try:
                self._parse(guest.xml)
            except BadDomainXML as error:
                self._warn_unreadable(guest.uuid, guest.name, error)
                continue
            if self.unreadable.pop(guest.uuid, None) is not None:
                log.info("guest %s: its XML can be read again", guest.name)
            readable.append(guest)
        return readable

    def _known(self, corrections: list[Change]) -> list[Change]:
        """Changes without reconcile's own report of an unreadable guest (warned)."""
        return [c for c in corrections
                if not (c.domain_uuid in self.unreadable and c.claim is None
                        and str(c.vf) == "-")]

    # -- actions -------------------------------------------------------------------

    def reconcile_all(self, context: str) -> list[Change]:
        """The whole host, each guest fenced; also the saved definitions of guests that
        arrived while the listener was not there to see them arrive, and the VFs of a
        ``vfmigrate migrate`` that died after unplugging them."""
        guests = self.host.active_guests()
        readable = self._readable(guests)
        for guest in readable:
            self._for_guest(guest.uuid, guest.name, "finishing an interrupted vfmigrate "
                            "migrate", self.recover_interrupted_migration)
        corrections: list[Change] = []
        try:
            # the function, not its result: reconcile snapshots the claims before it
            # lists the guests, so a guest starting meanwhile keeps its new claim
            corrections = self.reconciler.reconcile(self.host.active_guests)
        except LibvirtFailure:
            raise
        except Exception as error:
            log.error("reconcile after %s failed: %s; claims stay as they are until the next "
                      "reconcile", context, " ".join(str(error).split()),
                      exc_info=not isinstance(error, VfmigrateError))
        self._log_corrections(self._known(corrections), f"reconcile after {context}")
        for guest in readable:
            if guest.persistent and arrival.arrived_unchecked(self.host, guest.uuid,
                                                              self._this_host):
                self._for_guest(guest.uuid, guest.name, "fixing its saved definition",
                                self.fix_persistent_definition)
            if metadata.may_have_pending(guest.xml):
                self._for_guest(guest.uuid, guest.name, "plugging in its pending VFs",
                                self.plug_pending_vfs)
        try:
            with self.ledger.transaction():
                self.ledger.prune(self.clock() - PRUNE_AFTER)
        except Exception as error:
            log.error("could not prune old ledger rows: %s", error)
        self.reconciled = True
        return corrections

    def reconcile_guest(self, uuid: str, context: str) -> list[Change]:
        claims_before = self.reconciler.claims_before()   # before listing: see reconcile_all
        guests = self.host.active_guests()
        guest = next((g for g in guests if g.uuid == uuid), None)
        if guest is not None and not self._readable([guest]):
            return []   # running, unknown: nothing of it is released or reset
        if guest is not None:
            self._for_guest(uuid, guest.name, "finishing an interrupted vfmigrate migrate",
                            self.recover_interrupted_migration)
            claims_before = self.reconciler.claims_before()
            guests = self.host.active_guests()
        corrections = self.reconciler.reconcile(guests, only_uuid=uuid,
                                                claims_before=claims_before)
        self._log_corrections(self._known(corrections), context)
        return corrections

    def recover_interrupted_migration(self, uuid: str) -> bool:
        """Plug back the VFs a dead ``vfmigrate migrate`` unplugged (see assisted);
        a guest whose command still runs is looked at again every few seconds."""
        recovery = assisted.recover_interrupted(self.host, uuid)
        if recovery is None or recovery.state != "owned":
            self.leased.pop(uuid, None)
        if recovery is None:
            return False
        if recovery.state == "owned":
            self.leased[uuid] = recovery.name
        for line in recovery.lines:
            event(log, Event.ATTACHED, "guest %s: %s", recovery.name, line,
                  level=logging.INFO if recovery.ok else logging.ERROR, domain=recovery.name)
        return recovery.state == "recovered"

    def _check_leased(self) -> None:
        for uuid, name in list(self.leased.items()):
            if self.recover_interrupted_migration(uuid):
                self.reconcile_guest(uuid, "interrupted vfmigrate migrate finished")

    def _vf_lookups(self, inventory: Inventory):
        """``network_of``, ``pf_of`` and ``settings_of`` for
        :func:`metadata.labelled_entries`, looking each address up in sysfs once."""
        found: dict = {}

        def vf_of(address):
            if address not in found:
                found[address] = inventory.find_vf(address)
            return found[address]

        def network_of(address):
            vf = vf_of(address)
            return vf.network if vf is not None else None

        def pf_of(address):
            vf = vf_of(address)
            return vf.pf if vf is not None else None

        def settings_of(address):
            vf = vf_of(address)
            if vf is None:
                return None
            try:
                return self.vf_netlink.read_settings(vf)
            except VFSettingError as error:
                log.debug("VF settings of %s unknown: %s", address, error)
                return None   # unknown: what is recorded stays
        return network_of, pf_of, settings_of

    def label_guest(self, uuid: str) -> bool:
        """Name each VF's network in the guest's metadata; True if it changed."""
        guest = self.host.guest(uuid)
        if guest is None:
            return False
        parsed = self._parse(guest.xml)
        inventory = Inventory.of(self.config)
        entries = metadata.labelled_entries(parsed, *self._vf_lookups(inventory))
        if entries is None:
            return False
        changed = self.host.set_metadata(uuid, metadata.render(entries), METADATA_NAMESPACE,
                                         metadata.PREFIX, live=True, config=guest.persistent)
        if changed:
            labels = "; ".join(_label(entry) for entry in entries if entry.get("network"))
            event(log, Event.METADATA, "guest %s: its metadata now says %s", guest.name,
                  labels, domain=guest.name)
        return changed

    def arrived(self, uuid: str, name: str) -> None:
        """A migration finished here: activate, fix the saved definition, label."""
        for change in ownership.activate(self.ledger, uuid, "arrived: migration finished"):
            event(log, change.event, "guest %s arrived by migration: VF %s of network %s is "
                  "in use", name, change.vf, change.network,
                  domain=name, vf=change.vf, network=change.network)
        for what, step in (("fixing its saved definition", self.fix_persistent_definition),
                           ("plugging in its pending VFs", self.plug_pending_vfs),
                           ("labelling its VFs", self.label_guest)):
            self._for_guest(uuid, name, what, step)
        self.reconcile_guest(uuid, "arrived")

    def plug_pending_vfs(self, uuid: str) -> None:
        """Plug in the VFs a guest arrived without (``vfmigrate migrate``)."""
        for plugged in replug.plug_pending(self.host, uuid,
                                           allow_stand_ins=self.config.allow_stand_ins):
            guest = self.host.guest(uuid)
            name = guest.name if guest else uuid
            event(log, Event.ATTACHED, "guest %s: %s VF %s (mac %s): %s", name,
                  plugged.device or "interface", plugged.address, plugged.mac, plugged.detail,
                  level=logging.INFO if plugged.ok else logging.ERROR, domain=name,
                  vf=plugged.address)

    # -- VF settings (vfpolicy) and saved definitions (arrival), on this connection --

    def record_settings_on(self, ifname: str) -> None:
        """A netdev changed: record again the VF settings of the guests holding VFs of
        its PF (see :func:`vfpolicy.guests_to_record_again`)."""
        for guest in vfpolicy.guests_to_record_again(self.host, self.config, ifname):
            self._for_guest(guest.uuid, guest.name, "recording its VF settings",
                            self.label_guest)

    def configure_teamed_hostdevs(self, uuid: str) -> None:
        """See :func:`vfpolicy.configure_teamed_hostdevs`."""
        vfpolicy.configure_teamed_hostdevs(self.host, uuid, config=self.config,
                                           vf_netlink=self.vf_netlink)

    def apply_vlan_priority(self, uuid: str) -> None:
        """See :func:`vfpolicy.apply_vlan_priority`."""
        vfpolicy.apply_vlan_priority(self.host, uuid, config=self.config,
                                     vf_netlink=self.vf_netlink)

    def fix_persistent_definition(self, uuid: str) -> bool:
        """See :func:`arrival.fix_persistent_definition`."""
        return arrival.fix_persistent_definition(self.host, uuid, ledger=self.ledger,
                                                 config=self.config, this_host=self._this_host)

    def _this_host(self) -> str:
        """This host's UUID as libvirt reports it (its hostname if it has none)."""
        if self.host_uuid is None:
            self.host_uuid = self.host.host_uuid()
        return self.host_uuid


def _label(entry: dict[str, str]) -> str:
    """``52:54:00:6d:90:02 is in network physnet1 with trust on``"""
    text = f"{entry.get('mac') or entry.get('alias')} is in network {entry['network']}"
    settings = vfsettings.recorded(entry)
    return f"{text} with {vfsettings.describe(settings)}" if settings else text


def main(argv: list[str], stdout: TextIO, stderr: TextIO, *,
         environ: dict[str, str] | None = None) -> int:
    import argparse

    from . import config as configuration
    from . import logs
    from .errors import UsageError, exit_code_for

    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="vfmigrate-listener",
        description="Release and reset SR-IOV VFs after libvirt migrations; "
                    "keep vfmigrate's ledger true. Runs under systemd (Type=notify).")
    parser.add_argument("--config", help="config file (default: $VFMIGRATE_CONFIG or "
                                         f"{configuration.DEFAULT_CONFIG_PATH})")
    parser.add_argument("--uri", help="libvirt URI (default: libvirt_uri of the config)")
    parser.add_argument("--debug", action="store_true", help="log debug messages")
    args = parser.parse_args(argv[1:])
    logs.setup(stream=stderr, level=logging.DEBUG if args.debug else logging.INFO)
    try:
        config = configuration.load(configuration.config_path(args.config, environ))
        listener = Listener(config, uri=args.uri)
    except (VfmigrateError, UsageError) as error:
        stderr.write(f"vfmigrate-listener: {error}\n")
        return exit_code_for(error)
    signal.signal(signal.SIGTERM, listener.request_stop)
    signal.signal(signal.SIGINT, listener.request_stop)
    event(log, Event.LISTENER, "listener starting (config %s, libvirt %s)", config.path,
          listener.uri)
    return listener.run()


def run() -> int:
    return main(sys.argv, sys.stdout, sys.stderr)
