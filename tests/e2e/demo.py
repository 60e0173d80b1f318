"""The README's demo: a live migration with vfmigrate between two real libvirt hosts.

``make demo`` (or ``python -m tests.e2e.demo`` as root after tests/install-deps):
brings up two libvirtd hosts in namespaces on this machine, starts the tiny
Linux guest on host A holding a VF, live-migrates it to host B with a plain
``virsh migrate --live``, shows what vfmigrate did on both hosts (the VF
chosen on B, the claims, the journal) and the migration's time and downtime,
then tears everything down.

The VF pools are simulated (this machine has no SR-IOV): each host has a
fake sysfs tree of a real card, and the guest's VF is declared in its
vfmigrate metadata with no PCI device behind it; the demo says so.
"""

from __future__ import annotations

import re
import sys
import time
from contextlib import contextmanager

from tests.testbed.guests import SerialLog, linux_guest_xml
from tests.testbed.linux_guest import build_linux_guest
from tests.testbed.testbed import default_cache_dir

from .vfhosts import guest_mac_for, simulated_vf_of, vf_testbed, wait_until, with_simulated_vf

GUEST = "demo-web"


class Progress:
    def __init__(self, out=sys.stdout) -> None:
        self.out = out
        self.started = time.monotonic()

    @contextmanager
    def step(self, what: str):
        self.out.write(f"[{time.monotonic() - self.started:6.1f} s] {what} ...")
        self.out.flush()
        began = time.monotonic()
        yield
        self.out.write(f" done ({time.monotonic() - began:.1f} s)\n")
        self.out.flush()

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()


def job_figure(jobinfo: str, label: str) -> str:
    """A figure of ``virsh domjobinfo`` as a person writes it: ``Time elapsed: 30269
    ms`` -> ``30.3 s``."""
    match = re.search(rf"^{label}:\s+(\S+)\s*(\S*)", jobinfo, flags=re.M)
    if not match:
        return "?"
    value, unit = match.groups()
    if unit == "ms" and value.isdigit():
        return f"{int(value) / 1000:.1f} s"
    return f"{value} {unit}".strip()


def main() -> int:
    progress = Progress()
    progress.say("vfmigrate demo: live migration of a guest holding an SR-IOV VF")
    progress.say("NOTE: this machine has no SR-IOV hardware. Each host's VF pool is a simulated "
                 "sysfs tree (Intel E810 on host a, Intel X710 on host b); the guest's VF is "
                 "declared in its vfmigrate metadata, with no PCI device behind it. libvirt, "
                 "QEMU, the hook, the listener, the ledger and the migration are real.")
    with progress.step("building (or reusing) the tiny Linux guest"):
        image = build_linux_guest(default_cache_dir())
    with progress.step("bringing up hosts a and b (libvirtd, journald, vfmigrate listener)"):
        context = vf_testbed(2)
        hosts = context.__enter__()
    try:
        a, b = hosts
        serial = SerialLog(hosts.testbed.shared_dir / f"{GUEST}.serial.log")
        xml = with_simulated_vf(linux_guest_xml(GUEST, image, serial.path), a.vfs[2],
                                guest_mac_for(GUEST))
        with progress.step(f"starting guest {GUEST} on host a with VF {a.vfs[2]}"):
            a.host.create_domain(xml, persistent=True)
            serial.wait_ready(timeout=120)
        progress.say(f"  claims on a: {a.claim_summary()}")
        with progress.step(f"virsh migrate --live --p2p --persistent --undefinesource "
                           f"{GUEST} {b.host.uri}"):
            result = a.host.migrate(GUEST, b.host, "--persistent", "--undefinesource")
        jobinfo = b.host.virsh("domjobinfo", "--completed", GUEST).stdout
        with progress.step("waiting for both listeners to settle"):
            wait_until(lambda: a.claims() == [] and not a.pending_resets(), 30,
                       "the source to release its VF")
            wait_until(lambda: simulated_vf_of(
                b.host.virsh("dumpxml", "--inactive", GUEST).stdout) == str(b.vfs[0]), 30,
                "the destination's saved definition")
        ticks = serial.last_tick()
        time.sleep(2)
        alive = serial.last_tick() > ticks
        progress.say()
        progress.say(f"VF chosen on b: {simulated_vf_of(b.host.virsh('dumpxml', GUEST).stdout)} "
                     f"(the guest held {a.vfs[2]} on a)")
        progress.say(f"guest running on b: {b.host.domain_state(GUEST)}; still ticking: {alive}")
        progress.say(f"migration: {result.wall_seconds:.2f} s wall (virsh), "
                     f"{job_figure(jobinfo, 'Time elapsed')} job, downtime "
                     f"{job_figure(jobinfo, 'Total downtime')}")
        for vf_host in (a, b):
            progress.say()
            progress.say(f"host {vf_host.name}: claims {vf_host.claim_summary() or 'none'}")
            progress.say(f"host {vf_host.name}: journal (SYSLOG_IDENTIFIER=vfmigrate):")
            for entry in vf_host.journal():
                stamp = time.strftime("%H:%M:%S", time.localtime(
                    int(entry["__REALTIME_TIMESTAMP"]) / 1e6))
                progress.say(f"  {stamp} {entry.get('VFMIGRATE_ACTION', '-'):<10} "
                             f"{entry['MESSAGE']}")
        progress.say()
    finally:
        with progress.step("tearing down"):
            context.__exit__(None, None, None)
    progress.say(f"demo finished in {time.monotonic() - progress.started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
