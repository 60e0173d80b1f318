"""What keeps the listener's process going, apart from what it decides.

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
import threading
from collections.abc import Callable

from .records import record

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


def what_work(item: object) -> str:
    """A work item's kind, for log lines."""
    return type(item).__name__


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
                    logging.getLogger("vfmigrate.listener").exception(
                        "netlink link watch failed; VF settings are recorded only when "
                        "guests start or arrive")
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
