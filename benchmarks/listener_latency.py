#!/usr/bin/env python3
"""Listener release latency and memory.

Runs the real Listener in a child process against libvirt's test driver
(test:///default: real libvirt API and events, no QEMU) on a fake SR-IOV host.
The child claims a VF through the hook's "prepare" (as libvirt would run it),
starts the guest, destroys it without running the hook's "release", and
measures the time from the listener's libvirt callback receiving STOPPED to
the journal entry saying the claim was released (the ledger write is done by
then).

Prints p50/p95 release latency and the child's RSS: idle (connected, first
reconcile done), after N lifecycle events, and after importing pyroute2,
which the listener loads on its first VF reset.
Targets (issue 3): p50 <= 100 ms, RSS <= 40 MB.
Usage: benchmarks/listener_latency.py [--events 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def child(events: int) -> None:
    sys.path.insert(0, str(REPO))
    import io

    import libvirt

    from tests.fakesysfs import E810, FakeSysfs
    from vfmigrate import config as configuration, hook, logs
    from vfmigrate.events import Event
    from vfmigrate.listener import Listener
    from vfmigrate.supervision import Notifier

    root = Path(tempfile.mkdtemp())
    vfs = FakeSysfs(root / "sys").add_pf(E810, "0000:3b:00.0", "ens1f0", 64)
    (root / "vfmigrate.conf").write_text(
        f"[vfmigrate]\nstate_dir = {root / 'state'}\nsysfs_root = {root / 'sys'}\n"
        f"libvirt_run_dir = {root / 'run'}\nvf_reset = none\n\n"
        "[network physnet1]\npfs = ens1f0\n")
    config = configuration.load(root / "vfmigrate.conf")

    received: dict[str, float] = {}
    latencies: list[float] = []
    released = threading.Event()

    def sender(MESSAGE, **fields):
        if fields.get("MESSAGE_ID") == Event.CORRECTED.message_id \
                and "the guest is not running" in MESSAGE:
            name = fields["VFMIGRATE_DOMAIN"]
            latencies.append(time.perf_counter() - received.pop(name))
            released.set()

    logs.setup(stream=sys.stderr, sender=sender)
    notified: list[str] = []
    listener = Listener(config, uri="test:///default", udev_watch=None,
                        notifier=Notifier(send=notified.append, environ={}))
    on_lifecycle = listener._on_lifecycle

    def timed_lifecycle(conn, dom, kind, detail, opaque):
        if kind == libvirt.VIR_DOMAIN_EVENT_STOPPED:
            received[dom.name()] = time.perf_counter()
        on_lifecycle(conn, dom, kind, detail, opaque)

    listener._on_lifecycle = timed_lifecycle
    threading.Thread(target=listener.run, name="listener", daemon=True).start()
    while "READY=1" not in notified:
        time.sleep(0.01)
    time.sleep(0.5)
    idle_rss = rss_kib()
    connection = libvirt.open("test:///default")
    handled_before = listener.events_handled
    cycle = 0
    while listener.events_handled - handled_before < events:
        vf = vfs[cycle % len(vfs)].xml_attributes()
        name = f"bench{cycle}"
        xml = (
            f"<domain type='test'><name>{name}</name><memory>65536</memory>"
            f"<os><type>hvm</type></os><devices><interface type='hostdev' managed='yes'>"
            f"<mac address='52:54:00:00:{cycle // 256 % 256:02x}:{cycle % 256:02x}'/>"
            f"<source><address type='pci' domain='{vf['domain']}' bus='{vf['bus']}' "
            f"slot='{vf['slot']}' function='{vf['function']}'/></source></interface>"
            f"</devices></domain>")
        domain = connection.defineXML(xml)
        hook_xml = domain.XMLDesc(0).encode()
        code = hook.main(["vfmigrate", name, "prepare", "begin", "-"], io.BytesIO(hook_xml),
                         io.BytesIO(), stderr=sys.stderr, config=config,
                         journal_sender=lambda *args, **kwargs: None)
        assert code == 0, code
        domain.create()
        released.clear()
        domain.destroy()
        released.wait(10)
        domain.undefine()
        cycle += 1
    time.sleep(0.5)
    busy_rss = rss_kib()
    import pyroute2  # noqa: F401  (what the first VF reset loads)
    print(json.dumps({"idle_rss_kib": idle_rss, "busy_rss_kib": busy_rss,
                      "pyroute2_rss_kib": rss_kib(),
                      "events": listener.events_handled - handled_before, "cycles": cycle,
                      "latencies": latencies}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.events)
        return
    result = subprocess.run([sys.executable, __file__, "--child", "--events", str(args.events)],
                            capture_output=True, text=True, check=True)
    data = json.loads(result.stdout.splitlines()[-1])
    latencies = sorted(data["latencies"])
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    print(f"listener on libvirt's test driver: {data['events']} lifecycle events handled, "
          f"{data['cycles']} start/stop cycles, {len(latencies)} releases measured")
    print(f"release latency (STOPPED received -> claim released and logged): "
          f"p50 {statistics.median(latencies) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms "
          f"(target p50 <= 100 ms)")
    print(f"listener RSS: idle {data['idle_rss_kib'] / 1024:.1f} MiB, after the events "
          f"{data['busy_rss_kib'] / 1024:.1f} MiB, with pyroute2 loaded (first VF reset) "
          f"{data['pyroute2_rss_kib'] / 1024:.1f} MiB (target <= 40 MB)")


if __name__ == "__main__":
    main()
