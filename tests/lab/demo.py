"""The README's demo on real (emulated) SR-IOV hardware: the lab.

``make demo`` runs this.  When this machine can run the lab (root, enough
memory and disk, Debian's bookworm-backports reachable for QEMU 10), it builds
or reuses the lab images, boots two L1 hosts with an igb SR-IOV NIC each and
vfmigrate installed from this tree's .deb, boots an L2 guest whose VF is
teamed with a virtio NIC on lab-a, live-migrates it to lab-b with a plain
``virsh migrate --live``, and shows what happened: the VF vfmigrate chose on
lab-b, the claims on both hosts, the journal, the migration's time and
downtime, and the guest pinging through lab-b's VF.  It takes 10-15 minutes
(a few more the first time, while the images are built).

When the machine cannot, it says why and runs the quick demo instead
(tests/e2e/demo.py: real libvirt hosts in namespaces, simulated VF pools).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import build_package
from tests.e2e.demo import job_figure

from . import lab
from .scenario import (FO_MAC, LAB_A, LAB_B, URI_B, boot_guest, claims, failover_up,
                       hostdev_source, journal, next_report, vfmigrate_lab)

MIN_MEMORY_GIB = 6
MIN_DISK_GIB = 12


class Progress:
    """Steps with elapsed times; a heartbeat line every 30 s of a long step."""

    def __init__(self, out=sys.stdout) -> None:
        self.out = out
        self.started = time.monotonic()

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    @contextmanager
    def step(self, what: str):
        began = time.monotonic()
        self.say(f"[{began - self.started:7.1f} s] {what} ...")
        done = threading.Event()

        def heartbeat() -> None:
            while not done.wait(30):
                self.say(f"            ... {what}: {time.monotonic() - began:.0f} s so far")

        thread = threading.Thread(target=heartbeat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
        self.say(f"[{time.monotonic() - self.started:7.1f} s] {what}: done in "
                 f"{time.monotonic() - began:.0f} s")


def why_not() -> str | None:
    """None if this machine can run the lab, else the reason."""
    if os.geteuid() != 0:
        return "the lab needs root"
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    available = int(meminfo["MemAvailable"].split()[0]) / 2**20
    if available < MIN_MEMORY_GIB:
        return f"{available:.1f} GiB of memory available, the lab needs {MIN_MEMORY_GIB}"
    lab.CACHE.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(lab.CACHE).free / 2**30
    if free < MIN_DISK_GIB:
        return f"{free:.0f} GiB free in {lab.CACHE}, the lab needs {MIN_DISK_GIB}"
    return None


def run_lab_demo(progress: Progress) -> None:
    with progress.step("building this tree's .deb"):
        deb = build_package("deb")
    with progress.step("building or reusing the lab images (outer QEMU 10, L1 Debian image)"):
        lab.l2_assets(lab.l1_image(lab.outer_qemu()))
    work = Path(tempfile.mkdtemp(prefix="vfmigrate-demo-"))
    with progress.step("booting hosts lab-a and lab-b (igb SR-IOV NIC, IOMMU, vfmigrate "
                       "installed from the .deb)"):
        context = vfmigrate_lab(deb, work)
        a, b = context.__enter__()
    try:
        progress.say(f"  lab-a VFs {a.vfs} on PF {a.pf}; lab-b VFs {b.vfs} (its first VF is "
                     "denied in its config, so the guest must move to another address)")
        with progress.step(f"booting the guest on lab-a: VF {a.vfs[0]} teamed with a virtio NIC "
                           "(QEMU virtio-net failover), until it pings through the VF"):
            boot_guest(a, "demo", FO_MAC, a.vfs[0], "failover",
                       lambda r: failover_up(r, LAB_B, FO_MAC))
        progress.say(f"  claims on lab-a: {claims(a)}")
        started = time.monotonic()
        with progress.step(f"virsh migrate --live demo {URI_B}"):
            a.virsh("migrate", "--live", "demo", URI_B, timeout=1200)
        migrated = time.monotonic() - started
        jobinfo = b.virsh("domjobinfo", "--completed", "demo").stdout
        with progress.step("waiting for QEMU to plug lab-b's VF in and the guest to ping "
                           "through it"):
            report = next_report(b, "demo", lambda r: failover_up(r, LAB_A, FO_MAC), 900)
        lab.wait(lambda: claims(a) == [] and journal(a, "reset"), 120,
                 "lab-a to release and reset its VF")
        progress.say()
        progress.say(f"VF chosen on lab-b: {hostdev_source(b, 'demo')} (the guest held "
                     f"{a.vfs[0]} on lab-a)")
        slaves = [f"{i['name']}/{i['driver']}" for i in report["ifaces"]
                  if i["master"] == report["master"]]
        progress.say(f"guest on lab-b: failover master {report['master']} with {slaves}, "
                     f"ping lab-a: {report['ping'].get(LAB_A)}")
        progress.say(f"migration: {migrated:.1f} s (virsh), "
                     f"{job_figure(jobinfo, 'Time elapsed')} job, downtime "
                     f"{job_figure(jobinfo, 'Total downtime')}")
        for host in (a, b):
            progress.say(f"\n{host.name}: claims {claims(host) or 'none'}")
            output = host.run(["journalctl", "-o", "short", "--no-pager",
                               "SYSLOG_IDENTIFIER=vfmigrate"]).stdout
            for line in output.splitlines():
                progress.say(f"  {line}")
    finally:
        with progress.step("stopping the lab"):
            context.__exit__(None, None, None)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    progress = Progress()
    progress.say("vfmigrate demo: live migration of a guest holding an SR-IOV VF")
    reason = why_not()
    if reason is None:
        progress.say("This machine can run the SR-IOV lab: real VFs of an emulated igb NIC, "
                     "vfio, libvirt and QEMU failover inside two L1 host VMs. It takes 10-15 "
                     "minutes (a few more the first time).")
        try:
            run_lab_demo(progress)
            progress.say(f"\ndemo finished in {time.monotonic() - progress.started:.0f} s")
            return 0
        except lab.LabError as error:
            reason = f"the lab failed: {str(error)[:500]}"
    progress.say(f"Not running the SR-IOV lab: {reason}. Running the quick demo instead "
                 "(namespaced libvirt hosts, simulated VF pools).")
    from tests.e2e.demo import main as quick_demo
    return quick_demo()


if __name__ == "__main__":
    sys.exit(main())
