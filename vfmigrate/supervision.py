"""What keeps the listener's process going, apart from what it decides.

* :class:`Supervisor`: the libvirt connection (opened with bounded exponential
  backoff, its close callback, keepalive and domain event callbacks registered,
  reopened when lost), the systemd watchdog, and the main loop that takes the
  work items off the queue and hands each, fenced, to what decides
  (:class:`vfmigrate.listener.Listener`);
* libvirt's default event loop, one per process, on a daemon thread (as in
  libvirt-python's ``examples/event-test.py``): :func:`start_libvirt_event_loop`,
  also used by the CLI (``vfmigrate migrate`` waits for device events);
* systemd's notification socket (READY, STATUS, WATCHDOG, STOPPING): :class:`Notifier`;
* pyudev's observer of PCI and net devices: :func:`pyudev_watch`;
* rtnetlink's link notifications, which say a PF's VF settings changed:
  :func:`link_watch`;
* the typed work items the callbacks put on the listener's queue.  Callbacks only
  make these; the listener's main thread does the work, one item at a time.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from . import __version__
from .errors import LibvirtFailure, VfmigrateError
from .events import Event
from .logs import event
from .records import record
from .virt import LibvirtHost, import_libvirt, silence_libvirt_stderr

# The listener's journal entries name one logger, whichever module writes them.
log = logging.getLogger("vfmigrate.listener")

BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0
KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 5, 3
WATCH_INTERVAL = 1.0   # s between Watch items while the work wants them

# Work for the main thread.  libvirt's and udev's callbacks only make these and queue them.
Reconcile = record("Reconcile", "context")                       # everything, after `context`
Lifecycle = record("Lifecycle", "uuid name kind detail")         # a domain lifecycle event
DeviceChanged = record("DeviceChanged", "uuid name alias change")  # change: removed/added
RemovalFailed = record("RemovalFailed", "uuid name alias")       # the guest kept a device
JobCompleted = record("JobCompleted", "uuid name params")        # a (migration) job ended
ConnectionClosed = record("ConnectionClosed", "reason")          # libvirt closed on us
UdevEvent = record("UdevEvent", "action subsystem sys_name")     # a PCI device came or went
LinkChanged = record("LinkChanged", "ifname")                    # a netdev's settings changed
Watch = record("Watch", "")      # once a second while migrations or leases are watched

_WHAT_WORK = {
    Reconcile: "reconciling the host after {0.context}",
    Lifecycle: "guest {0.name}: handling its lifecycle event",
    DeviceChanged: "guest {0.name}: handling device {0.alias} ({0.change})",
    RemovalFailed: "guest {0.name}: handling its refusal to unplug device {0.alias}",
    JobCompleted: "guest {0.name}: handling the end of its job",
    ConnectionClosed: "reconnecting after libvirt closed the connection (reason {0.reason})",
    UdevEvent: "handling udev's {0.action} of {0.subsystem} device {0.sys_name}",
    LinkChanged: "recording the VF settings of the guests on {0.ifname}",
    Watch: "looking at incoming migrations and vfmigrate migrate commands",
}


def what_work(item: object) -> str:
    """What handling a work item does, as an admin's log line starts: ``guest web1:
    handling its lifecycle event`` (then `` failed: ...``)."""
    wording = _WHAT_WORK.get(type(item))
    return wording.format(item) if wording is not None else f"handling work item {item!r}"


_event_loop_lock = threading.Lock()
_event_loop_started = False


def start_libvirt_event_loop(libvirt) -> None:
    """Register libvirt's default event implementation and run it on a daemon thread.

    libvirt allows one default implementation per process, registered before
    the first connection is opened; this is that process-wide start.
    """
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run_forever() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run_forever, name="libvirt-event-loop", daemon=True).start()
        _event_loop_started = True


class Notifier:
    """sd_notify: READY, STATUS, WATCHDOG, STOPPING (no-op outside systemd)."""

    def __init__(self, send: Callable[[str], object] | None = None,
                 environ: dict[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        if send is None and environ.get("NOTIFY_SOCKET"):
            try:
                from systemd import daemon
                send = daemon.notify
            except ImportError:
                send = None
        self.send = send
        usec = environ.get("WATCHDOG_USEC", "")
        self.watchdog_interval = int(usec) / 1e6 / 3 if usec.isdigit() else None

    def notify(self, state: str) -> None:
        if self.send is not None:
            self.send(state)


def pyudev_watch(on_event: Callable[[str, str, str], None]) -> Callable[[], None]:
    """Watch PCI and net devices with pyudev; returns a function that stops it."""
    import pyudev

    context = pyudev.Context()
    monitor = pyudev.Monitor.from_netlink(context)
    monitor.filter_by("pci")
    monitor.filter_by("net")

    def deliver(device) -> None:
        on_event(device.action or "", device.subsystem or "", device.sys_name or "")

    observer = pyudev.MonitorObserver(monitor, callback=deliver, name="udev-monitor")
    observer.daemon = True
    observer.start()
    return observer.stop


def link_watch(on_change: Callable[[str], None]) -> Callable[[], None]:
    """Call ``on_change(ifname)`` on a thread for every RTM_NEWLINK (a VF setting
    changed on its PF, among others); returns a function that stops it."""
    from pyroute2 import IPRoute

    iproute = IPRoute()
    iproute.bind()   # RTMGRP_LINK among pyroute2's default groups
    stopped = threading.Event()

    def watch() -> None:
        while not stopped.is_set():
            try:
                messages = iproute.get()
            except Exception:   # closed by stop(), or the socket failed: the watch ends
                if not stopped.is_set():
                    log.exception("netlink link watch failed; VF settings are recorded "
                                  "only when guests start or arrive")
                return
            for message in messages:
                if message.get("event") == "RTM_NEWLINK":
                    name = message.get_attr("IFLA_IFNAME")
                    if name:
                        on_change(name)

    thread = threading.Thread(target=watch, name="netlink-link-watch", daemon=True)
    thread.start()

    def stop() -> None:
        stopped.set()
        iproute.close()
    return stop


class Supervisor(ABC):
    """A libvirt connection kept open, and the work its events make, done one item at a time.

    Callbacks (libvirt's event-loop thread, the udev and netlink watches) only queue
    work items.  :meth:`run` takes them off the queue on the calling thread and hands
    each to :meth:`handle`, fenced: a failure is logged and the loop goes on, and one
    that lost the connection reconnects.  The first item is ``Reconcile("start")``;
    ``Reconcile("reconnect")`` follows every reconnect, covering the events missed.
    A subclass says what the work is: :meth:`prepare`, :meth:`handle`, :meth:`ready`,
    :meth:`watching` and :meth:`status`.
    """

    def __init__(self, *, uri: str, libvirt_module=None,
                 opener: Callable[[str], object] | None = None,
                 libvirt_run_dir: str | None = None,
                 udev_watch: Callable | None = pyudev_watch,
                 netlink_watch: Callable | None = link_watch, notifier: Notifier | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.uri = uri
        self.libvirt = libvirt_module or import_libvirt()
        self.opener = opener or self.libvirt.open
        self.libvirt_run_dir = libvirt_run_dir
        self.udev_watch = udev_watch
        self.netlink_watch = netlink_watch
        self.stop_udev: Callable[[], None] | None = None
        self.stop_netlink: Callable[[], None] | None = None
        self.links_pending: set[str] = set()   # netdevs queued as LinkChanged, not yet handled
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.sleep = sleep
        self.work: queue.Queue = queue.Queue()
        self.host: LibvirtHost | None = None
        self.callback_ids: list[int] = []
        self.stopping = False
        self.events_handled = 0
        self.last_watchdog = 0.0
        self.last_watch = 0.0

    # -- what the work is (the subclass) ---------------------------------------

    @abstractmethod
    def prepare(self) -> None:
        """Open what the work needs, on the thread that :meth:`run` runs on."""

    @abstractmethod
    def handle(self, item: tuple) -> None:
        """Do one work item (never a ConnectionClosed: reconnecting is supervision's)."""

    @abstractmethod
    def ready(self) -> bool:
        """The work can be relied upon (READY=1 goes out the first time it can)."""

    @abstractmethod
    def watching(self) -> bool:
        """Something must be looked at every second: a Watch item is handled."""

    @abstractmethod
    def status(self) -> str:
        """What STATUS= says after ``connected to URI;``."""

    # -- libvirt callbacks (event-loop thread): enqueue only ----------------

    def _on_lifecycle(self, conn, dom, kind, detail, opaque) -> None:
        self.work.put(Lifecycle(dom.UUIDString(), dom.name(), kind, detail))

    def _on_device_removed(self, conn, dom, alias, opaque) -> None:
        self.work.put(DeviceChanged(dom.UUIDString(), dom.name(), alias, "removed"))

    def _on_device_added(self, conn, dom, alias, opaque) -> None:
        self.work.put(DeviceChanged(dom.UUIDString(), dom.name(), alias, "added"))

    def _on_device_removal_failed(self, conn, dom, alias, opaque) -> None:
        self.work.put(RemovalFailed(dom.UUIDString(), dom.name(), alias))

    def _on_job_completed(self, conn, dom, params, opaque) -> None:
        self.work.put(JobCompleted(dom.UUIDString(), dom.name(), dict(params)))

    def _on_close(self, conn, reason, opaque) -> None:
        self.work.put(ConnectionClosed(reason))

    def _on_udev(self, action: str, subsystem: str, sys_name: str) -> None:
        self.work.put(UdevEvent(action, subsystem, sys_name))

    def _on_link(self, ifname: str) -> None:
        if ifname not in self.links_pending:   # a burst of changes is looked at once
            self.links_pending.add(ifname)
            self.work.put(LinkChanged(ifname))

    # -- connection ----------------------------------------------------------

    def _connect(self) -> None:
        """Open the connection and register every callback; backoff until it works."""
        delay = BACKOFF_FIRST
        while not self.stopping:
            try:
                connection = self.opener(self.uri)
                self.host = LibvirtHost(connection, self.libvirt,
                                        status_dir=self.libvirt_run_dir)
                self._register(connection)
                event(log, Event.LISTENER, "connected to %s, %d callbacks registered",
                      self.uri, len(self.callback_ids))
                return
            except self.libvirt.libvirtError as error:
                self._disconnect()
                self.notifier.notify(f"STATUS=waiting for libvirt at {self.uri}: "
                                     f"{error.get_error_message()}")
                log.warning("cannot connect to %s (%s); retrying in %.0f s", self.uri,
                            error.get_error_message(), delay)
            self._wait(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    def _register(self, connection) -> None:
        libvirt = self.libvirt
        connection.registerCloseCallback(self._on_close, None)
        try:
            connection.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
        except libvirt.libvirtError as error:
            if error.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                raise
            log.debug("%s has no keepalive (a local driver)", self.uri)
        for event_id, callback in (
                (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle),
                (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, self._on_device_removed),
                (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, self._on_device_added),
                (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED,
                 self._on_device_removal_failed),
                (libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, self._on_job_completed)):
            self.callback_ids.append(
                connection.domainEventRegisterAny(None, event_id, callback, None))

    def _disconnect(self) -> None:
        if self.host is None:
            return
        connection = self.host.connection
        for callback_id in self.callback_ids:
            try:
                connection.domainEventDeregisterAny(callback_id)
            except self.libvirt.libvirtError:
                pass
        self.callback_ids = []
        try:
            connection.unregisterCloseCallback()
        except self.libvirt.libvirtError:
            pass
        self.host.close()
        self.host = None

    def _alive(self) -> bool:
        try:
            return self.host.connection.isAlive() == 1
        except self.libvirt.libvirtError:
            return False

    def _reconnect(self, why: str) -> None:
        event(log, Event.LISTENER, "%s; reconnecting to %s", why, self.uri,
              level=logging.WARNING)
        self._disconnect()
        self._connect()
        self.work.put(Reconcile("reconnect"))

    def _wait(self, seconds: float) -> None:
        deadline = self.clock() + seconds
        while not self.stopping and self.clock() < deadline:
            self._ping_watchdog()
            self.sleep(min(0.5, max(0.0, deadline - self.clock())))

    def _ping_watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        if interval is not None and self.clock() - self.last_watchdog >= interval:
            self.notifier.notify("WATCHDOG=1")
            self.last_watchdog = self.clock()

    # -- main loop -------------------------------------------------------------

    def request_stop(self, *args) -> None:
        """Stop :meth:`run` after its current item (a signal handler's arguments ignored)."""
        self.stopping = True

    def run(self) -> int:
        self.prepare()
        silence_libvirt_stderr(self.libvirt)
        start_libvirt_event_loop(self.libvirt)
        if self.udev_watch is not None:
            self.stop_udev = self.udev_watch(self._on_udev)
        if self.netlink_watch is not None:
            try:
                self.stop_netlink = self.netlink_watch(self._on_link)
            except Exception as error:   # no pyroute2, or no netlink socket allowed
                log.warning("cannot watch netlink for VF setting changes (%s); VF settings "
                            "are recorded only when guests start or arrive", error)
        self._connect()
        self.work.put(Reconcile("start"))
        ready = False
        while not self.stopping:
            self._ping_watchdog()
            if self.watching() and self.clock() - self.last_watch >= WATCH_INTERVAL:
                self.last_watch = self.clock()
                self._handle_fenced(Watch(), count=False)
            try:
                item = self.work.get(timeout=0.5)
            except queue.Empty:
                continue
            self._handle_fenced(item)
            if not ready and self.ready():
                self.notifier.notify("READY=1")
                event(log, Event.LISTENER, "vfmigrate %s is ready: claims reconciled with %s",
                      __version__, self.uri)
                ready = True
            try:
                self.notifier.notify(f"STATUS=connected to {self.uri}; {self.status()}")
            except Exception:   # never let the status end the listener
                log.exception("status not updated")
        self.notifier.notify("STOPPING=1")
        self._disconnect()
        if self.stop_udev is not None:
            self.stop_udev()
        if self.stop_netlink is not None:
            self.stop_netlink()
        event(log, Event.LISTENER, "listener stopped after %d events", self.events_handled)
        return 0

    def _handle_fenced(self, item: tuple, count: bool = True) -> None:
        """Handle one work item; no failure may end the listener."""
        try:
            if isinstance(item, ConnectionClosed):
                self._reconnect(f"libvirt closed the connection (reason {item.reason})")
            else:
                if isinstance(item, LinkChanged):
                    self.links_pending.discard(item.ifname)   # a later change queues it again
                self.handle(item)
            self.events_handled += count
        except LibvirtFailure as error:
            if self.host is not None and not self._alive():
                # libvirt went away under the item (restarted, say): not a failure of
                # the guest's; the reconcile after reconnecting looks at every guest.
                event(log, Event.LISTENER, "%s stopped: libvirt's connection was lost "
                      "(%s); the reconcile after reconnecting covers it", what_work(item),
                      error, level=logging.WARNING)
                self._reconnect("libvirt connection lost")
            else:
                log.error("%s failed: %s", what_work(item), error)
        except VfmigrateError as error:
            log.error("%s failed: %s", what_work(item), error)
        except Exception:
            log.exception("unexpected error handling %r", item)
