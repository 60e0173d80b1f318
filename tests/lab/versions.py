"""Migrations between libvirt versions on real VFs (issue 14), run outside CI: a printed
report.

lab-a is the tier's L1 (Debian 12's libvirt 9.0 with libvirtd, QEMU 10.0 from
bookworm-backports); lab-b boots from an image whose libvirt and QEMU come from
bookworm-backports (libvirt 11.3 + QEMU 10.0, AppArmor enforcing, qemu.conf as shipped), of
kind ``backports-modular`` (the modular daemons, as in the tier) unless ``--lab-b-kind
backports`` asks for Debian's monolithic libvirtd.  vfmigrate is installed from this tree's
.deb on both.
Each L2 guest starts on lab-a (QEMU 10.0 on both, so either can run its machine type),
moves to lab-b and back, and must ping through the destination's VF each time, with no
claim left on the host it left and no AppArmor denial:

* ``fo``: a teamed ``<interface type='hostdev'>`` with plain ``virsh migrate --live``;
  lab-b refuses it first while it has no free VF;
* ``hfo``: a teamed plain ``<hostdev>`` (vfmigrate sets the VF's MAC on the destination);
* ``plain``: a ``<hostdev>`` without teaming, moved by ``vfmigrate migrate``.

Usage (root): python3 -m tests.lab.versions [--workdir DIR] [--guests fo,hfo,plain]
                                           [--lab-b-kind backports-modular|backports]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import build_package

from . import lab
from .scenario import (FO_MAC, HFO_MAC, LAB_A, LAB_B, PLAIN_MAC, URI_A, URI_B,
                       apparmor_denials, boot_guest, claims, failover_up, hostdev_source,
                       known_denial, mark_journal, next_report, vf_settings, vf_up, vfmigrate_lab)
from .test_lab import release_arriving_guests, reserve_for_an_arriving_guest

GUESTS = {  # name: (MAC, libvirt mode, ready on the destination given the peer's name)
    "fo": (FO_MAC, "failover", failover_up),
    "hfo": (HFO_MAC, "hostdev-failover", failover_up),
    "plain": (PLAIN_MAC, "hostdev", vf_up),
}


class Report:
    def __init__(self) -> None:
        self.results: list[tuple[str, bool, str]] = []

    def expect(self, what: str, passed: bool, detail: str = "") -> bool:
        self.results.append((what, passed, detail))
        print(f"{'ok  ' if passed else 'FAIL'} {what}{': ' + detail if detail else ''}",
              flush=True)
        return passed


def move(report: Report, name: str, source, destination, uri: str, peer: str) -> bool:
    """Move guest ``name`` (virsh, or vfmigrate migrate for ``plain``) and check it arrived."""
    mac, mode, ready = GUESTS[name]
    direction = f"{source.version} -> {destination.version}"
    started = time.monotonic()
    if mode == "hostdev":
        moved = source.run(["vfmigrate", "migrate", name, uri, "--unplug-timeout", "300",
                            "--replug-timeout", "600"], check=False, timeout=1800)
    else:
        moved = source.virsh("migrate", "--live", name, uri, timeout=1200, check=False)
    seconds = time.monotonic() - started
    if not report.expect(f"{name} {direction}: migrates", moved.returncode == 0,
                         f"{seconds:.1f} s {moved.stderr.strip()[:400]}"):
        return False
    if mode == "hostdev":
        without = moved.stdout.split("without them for ")[1].split(" s")[0]
        report.expect(f"{name} {direction}: without its VF for {without} s", True)
    vf = hostdev_source(destination, name)
    try:
        next_report(destination, name, lambda r: ready(r, peer, mac), 900)
        reachable = time.monotonic() - started
        report.expect(f"{name} {direction}: pings through the destination's VF {vf}", True,
                      f"{reachable:.1f} s from the start of the migration")
    except lab.LabError as error:
        report.expect(f"{name} {direction}: pings through the destination's VF {vf}", False,
                      str(error)[:400])
        return False
    report.expect(f"{name} {direction}: the destination claims that VF",
                  claims(destination) == [(name, vf, "active")], str(claims(destination)))
    try:
        lab.wait(lambda: claims(source) == [], 120, "the source to release its VF")
        report.expect(f"{name} {direction}: the source holds no claim", True)
    except lab.LabError:
        report.expect(f"{name} {direction}: the source holds no claim", False,
                      str(claims(source)))
    if mode == "hostdev-failover":
        report.expect(f"{name} {direction}: the destination's VF has the guest's MAC",
                      "link/ether " + mac in vf_settings(destination, destination.vfs.index(vf)))
    return True


def run(a, b, guests: list[str]) -> Report:
    report = Report()
    for host in (a, b):
        host.version = host.virsh("version").stdout.split("Running hypervisor:")[0].split(
            "Using library: ")[1].split()[1]
        mark_journal(host)
        daemon = host.image.qemu_daemon
        active = {unit: host.run(["systemctl", "is-active", unit], check=False).stdout.strip()
                  for unit in ("libvirtd", "virtqemud")}
        others = [unit for unit, state in active.items() if unit != daemon and state == "active"]
        report.expect(f"{host.name} runs libvirt {host.version} with {daemon} alone",
                      active[daemon] == "active" and not others,
                      " ".join(host.virsh("version").stdout.split()) + f"; {active}")
    for name in guests:
        mac, mode, ready = GUESTS[name]
        for host in (a, b):
            for guest in host.virsh("list", "--name").stdout.split():
                host.virsh("destroy", guest)
            for guest in host.virsh("list", "--all", "--name").stdout.split():
                host.virsh("undefine", guest)
        lab.wait(lambda: claims(a) == [] and claims(b) == [], 120, "both hosts to hold no claim")
        try:
            booted = boot_guest(a, name, mac, a.vfs[0], mode, lambda r: ready(r, LAB_B, mac))
            report.expect(f"{name} boots on lab-a", True, f"{booted:.0f} s")
            if name == "fo":
                reserve_for_an_arriving_guest(b, b.vfs[1])
                refused = a.virsh("migrate", "--live", name, URI_B, timeout=600, check=False)
                release_arriving_guests(b)
                report.expect(f"{name} {a.version} -> {b.version}: refused while lab-b has no "
                              "free VF, and stays on lab-a",
                              refused.returncode != 0 and "vfmigrate: no free VF" in refused.stderr
                              and a.virsh("domstate", name).stdout.strip() == "running"
                              and claims(b) == [], refused.stderr.strip()[:300])
            if move(report, name, a, b, URI_B, LAB_A):
                move(report, name, b, a, URI_A, LAB_B)
        except lab.L2GuestCrashed as crashed:
            report.expect(f"{name}: the L2 guest did not crash", False, str(crashed)[:400])
    for host in (a, b):
        denials = [line for line in apparmor_denials(host) if not known_denial(host, line)]
        report.expect(f"{host.name}: no AppArmor denial", denials == [], "; ".join(denials)[:600])
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--guests", default="fo,hfo,plain")
    parser.add_argument("--lab-b-kind", default="backports-modular",
                        choices=[kind for kind in lab.L1_KINDS if kind.startswith("backports")])
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vfmigrate-versions-"))
    deb = build_package("deb")
    with vfmigrate_lab(deb, work / "lab", kinds=(lab.L1_KIND, args.lab_b_kind)) as (a, b):
        report = run(a, b, args.guests.split(","))
    failed = [what for what, passed, _ in report.results if not passed]
    print(f"{len(report.results) - len(failed)} of {len(report.results)} checks passed" +
          (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
