"""NUMA placement in the SR-IOV lab (issue 16), run outside CI: a printed report.

lab-b boots as a two-node L1 (a vCPU and 1 GB per node, the igb PF on a pxb-pcie bus
bound to node 1; lab.py ``L1Host.pf_slot_args``); lab-a as usual.  Two guests on lab-a
hold teamed VFs and boot no OS, one with its vCPU pinned to CPU 0 (node 0 on lab-b), one
to CPU 1 (node 1).  With ``numa_affinity = required`` on lab-b:

* ``virsh migrate --live`` of the CPU-0 guest must be refused with vfmigrate's line naming
  node 0, the guest still running on lab-a and nothing claimed on lab-b;
* the CPU-1 guest must arrive on lab-b's VF on node 1.

It also prints what ``vfmigrate check`` on lab-a sees of lab-b's PFs, which differs on
this host kind (see tests/lab/README.md).  Not in the lab tier: a two-node lab-b made
``vfmigrate check`` find no PF on it (README), and the tier's scenarios are kept on the
topology they were measured on until that is understood.

Usage (root): python3 -m tests.lab.numa [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import build_package

from .scenario import URI_B, claims, config, hostdev_source, vf_holder_xml, vfmigrate_lab

REFUSAL = ("vfmigrate: no free VF in network 'physnet1' on NUMA node 0 of this host, where "
           "guest 'pinned0' runs, and the network has numa_affinity = required (0 VFs there")


def run(a, b) -> list[tuple[str, bool, str]]:
    results: list[tuple[str, bool, str]] = []

    def expect(what: str, passed: bool, detail: str = "") -> None:
        results.append((what, passed, detail))
        print(f"{'ok  ' if passed else 'FAIL'} {what}{': ' + detail if detail else ''}",
              flush=True)

    status = json.loads(b.run(["vfmigrate", "status", "--json"]).stdout)
    nodes = [pf["numa_node"] for pf in status["networks"][0]["pfs"]]
    expect("lab-b's PF is on NUMA node 1", nodes == [1], f"numa_node {nodes}, netdev {b.pf}")
    b.put(config(b.pf, b.vfs[0]) + "numa_affinity = required\n", "/etc/vfmigrate/vfmigrate.conf")
    try:
        for name, vf, cpu in (("pinned0", a.vfs[0], "0"), ("pinned1", a.vfs[1], "1")):
            a.put(vf_holder_xml(name, [vf], teamed=True, cpuset=cpu), f"/root/{name}.xml")
            a.virsh("create", f"/root/{name}.xml", timeout=300)
        check = a.run(["vfmigrate", "check", "pinned1", URI_B, "--json"], check=False)
        expect("diagnostic: vfmigrate check of pinned1 on lab-a, whose PF is " + a.pf, True,
               " ".join(check.stdout.split())[:900] + " " + check.stderr.strip()[:300])
        nodedevs = b.run(["sh", "-c", "virsh nodedev-list --cap net; ip -br link"]).stdout
        expect("diagnostic: lab-b's net node devices and links", True, " ".join(nodedevs.split()))
        refused = a.virsh("migrate", "--live", "pinned0", URI_B, timeout=600, check=False)
        expect("the CPU-0 guest is refused with the line", refused.returncode != 0
               and REFUSAL in refused.stderr, refused.stderr.strip()[:400])
        expect("and keeps running on lab-a",
               a.virsh("domstate", "pinned0").stdout.strip() == "running")
        expect("and lab-b claims nothing", claims(b) == [], str(claims(b)))
        started = time.monotonic()
        moved = a.virsh("migrate", "--live", "pinned1", URI_B, timeout=600, check=False)
        expect("the CPU-1 guest migrates", moved.returncode == 0,
               f"{time.monotonic() - started:.1f} s {moved.stderr.strip()[:300]}")
        if moved.returncode == 0:
            expect("onto lab-b's VF on node 1", hostdev_source(b, "pinned1") == b.vfs[1]
                   and claims(b) == [("pinned1", b.vfs[1], "active")], str(claims(b)))
    finally:
        b.put(config(b.pf, b.vfs[0]), "/etc/vfmigrate/vfmigrate.conf")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vfmigrate-numa-"))
    deb = build_package("deb")
    with vfmigrate_lab(deb, work / "lab", numa_nodes=(1, 2)) as (a, b):
        results = run(a, b)
    failed = [what for what, passed, _ in results if not passed]
    print(f"{len(results) - len(failed)} of {len(results)} checks passed" +
          (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
