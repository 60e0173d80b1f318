#!/usr/bin/env python3
"""Prove the SR-IOV lab end to end, timing every step; print a JSON summary.

1. outer QEMU 10 + L1 image + L2 assets (cached), two L1 hosts boot, VFs present;
2. a payload .deb (built here) is installed at L1 boot, without rebuilding the image;
4. L2 guest ``fo`` on lab-a: virtio + VF failover pair (``<teaming>``), ping through the
   net_failover master to lab-b's br0 (across the igb segment);
5. ``virsh migrate --live`` of ``fo`` from lab-a to lab-b with ``--xml`` naming lab-b's VF 1
   (lab-a used its VF 0: another PCI address); the VF is unplugged on lab-a, lab-b's VF
   plugged on lab-b, the guest pings lab-a's br0 through the master;
3. then L2 guest ``hd`` on lab-a: ``<interface type='hostdev' managed='yes'>`` on the VF 0
   that the migration freed, igbvf, ping to lab-b's br0.
L2 guests run one at a time: two concurrent TCG-in-TCG guests take ~3x as long each.

Usage: python3 tests/lab/prove.py [--workdir DIR] [--keep] [--skip-migrate] [--skip-hostdev]
                                  [--smp N] [--dmesg]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lab  # noqa: E402

log = logging.getLogger("vfmigrate.lab.prove")
RESULTS: dict = {"steps": {}}
FO_MAC = "52:54:00:2a:00:10"
HD_MAC = "52:54:00:2a:00:20"
DMESG: tuple[str, ...] = ()  # ("lab.dmesg=1",) with --dmesg: kernel log as LAB-K lines


def record(step: str, ok: bool, **info) -> None:
    RESULTS["steps"][step] = {"ok": ok, **info}
    log.info("STEP %s: %s %s", step, "OK" if ok else "FAILED", json.dumps(info)[:2000])


def has(rep: dict, driver: str) -> bool:
    return any(i["driver"] == driver for i in rep["ifaces"])


def failover_ok(rep: dict, peer: str) -> bool:
    """net_failover master up with a virtio_net and an igbvf slave, and ping via it."""
    master = rep.get("master")
    slaves = {i["driver"] for i in rep["ifaces"] if i["master"] == master}
    return (master not in (None, "-") and {"virtio_net", "igbvf"} <= slaves
            and rep["ping"].get(peer) == "ok")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/vfmigrate-lab-prove"))
    ap.add_argument("--keep", action="store_true", help="leave the hosts running at the end")
    ap.add_argument("--skip-hostdev", action="store_true")
    ap.add_argument("--skip-migrate", action="store_true")
    ap.add_argument("--smp", type=int, default=2, help="vCPUs per L1 (MTTCG threads)")
    ap.add_argument("--cpu", default=lab.L1_CPU, help="outer QEMU -cpu for the L1 hosts")
    ap.add_argument("--dmesg", action="store_true", help="L2 kernel log on its console")
    args = ap.parse_args()
    global DMESG
    if args.dmesg:
        DMESG = ("lab.dmesg=1",)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    t_all = time.monotonic()

    # payload: a dummy package with a file, a postinst and a unit it enables
    payload = args.workdir / "payload-a"
    payload.mkdir(parents=True, exist_ok=True)
    for old in payload.glob("*.deb"):
        old.unlink()
    with lab.phase("payload-deb-build"):
        lab.build_deb(payload, "vfmigrate-lab-dummy", f"1.0+{int(time.time())}", {
            "/usr/share/vfmigrate-lab-dummy/hello": "hello from the payload\n",
            "/lib/systemd/system/vfmigrate-lab-dummy.service":
                "[Unit]\nDescription=lab payload dummy\n[Service]\nType=oneshot\n"
                "RemainAfterExit=yes\nExecStart=/bin/touch /run/vfmigrate-lab-dummy.ran\n"
                "[Install]\nWantedBy=multi-user.target\n"},
            postinst="#!/bin/sh\nset -e\n"
                     "deb-systemd-helper enable vfmigrate-lab-dummy.service\n"
                     "deb-systemd-invoke start vfmigrate-lab-dummy.service || true\n"
                     "touch /run/vfmigrate-lab-dummy.postinst\n")

    status = 1
    with lab.Lab(2, workdir=args.workdir / "hosts", payloads=[payload], smp=args.smp,
                 cpu=args.cpu) as L:
        try:
            status = prove(L, args)
        except Exception:
            log.exception("prove failed")
            RESULTS["exception"] = traceback.format_exc()[-3000:]
        finally:
            RESULTS["timings"] = lab.TIMINGS
            RESULTS["total_s"] = round(time.monotonic() - t_all, 1)
            (args.workdir / "results.json").write_text(json.dumps(RESULTS, indent=1))
            print(json.dumps(RESULTS, indent=1))
            if args.keep:
                log.info("--keep: hosts left running; Ctrl-C stops them")
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
    return status


def prove(L: lab.Lab, args) -> int:
    a, b = L.hosts
    # ---- 1. boot + VFs
    L.boot(timeout=900)
    sa, sb = a.status(), b.status()
    vfs_ok = all(len(s["vfs"]) == 2 and all(v["driver"] is None and v["iommu_group"]
                                             for v in s["vfs"]) for s in (sa, sb))
    groups = {v["iommu_group"] for v in sa["vfs"]}
    record("1-l1-boot-vfs", vfs_ok and len(groups) == 2, a_vfs=sa["vfs"], b_vfs=sb["vfs"],
           a_pf=sa["pf"], lab_init_s=[sa["seconds"], sb["seconds"]],
           l1_uptime_at_init_end=[sa["uptime"], sb["uptime"]],
           numvfs=a.run(["cat", f"/sys/bus/pci/devices/{sa['pf']['pci']}/sriov_numvfs"]).stdout.strip(),
           ping_b_from_a_br0=a.run(["ping", "-c", "1", "-W", "3", "198.51.100.2"],
                                   check=False).returncode == 0,
           ping_b_from_a_mig=a.run(["ping", "-c", "1", "-W", "3", "192.0.2.2"],
                                   check=False).returncode == 0)

    # ---- 2. payload
    p = sa["payload"]
    ran = a.run(["test", "-e", "/run/vfmigrate-lab-dummy.ran"], check=False).returncode == 0
    record("2-payload", p["ok"] and p.get("installed") == ["vfmigrate-lab-dummy"] and ran,
           payload=p, unit_ran=ran,
           dpkg=a.run(["dpkg-query", "-W", "vfmigrate-lab-dummy"], check=False).stdout.strip())

    with lab.phase("libvirt-ready"):
        for h in (a, b):
            h.virsh("version", timeout=120)

    # ---- 4. the failover guest on lab-a, alone (concurrent L2 guests halve TCG speed)
    a_vf0, b_vf1 = sa["vfs"][0]["pci"], sb["vfs"][1]["pci"]
    t0 = time.monotonic()
    a.start_l2("fo", lab.l2_domain_xml("fo", mac=FO_MAC, vf_pci=a_vf0, mode="failover",
                                       ip="198.51.100.10/24", extra_cmdline=DMESG))
    t_fo_started = time.monotonic() - t0
    try:
        rep = a.wait_l2("fo", lambda r: failover_ok(r, "198.51.100.2"), timeout=1500)
        lab.TIMINGS["l2-failover-boot"] = round(time.monotonic() - t0, 1)
        record("4-l2-failover", True, seconds=round(time.monotonic() - t0, 1),
               virsh_start_s=round(t_fo_started, 1), report=rep,
               qemu_cmdline=a.run(["sh", "-c", "tr '\\0' ' ' < /proc/$(pgrep -f guest=fo | head -1)/cmdline"],
                                  check=False).stdout[-1500:])
    except lab.LabError as e:
        record("4-l2-failover", False, error=str(e)[-3000:],
               qemu_log=a.run(["tail", "-40", "/var/log/libvirt/qemu/fo.log"], check=False).stdout)
        return 1
    if args.skip_migrate:
        return hostdev_step(a, sa["vfs"][1]["pci"], args)

    # ---- 5. live migration a -> b with b's VF 1 in the destination XML
    xml = a.virsh("dumpxml", "--migratable", "fo").stdout
    dom = ET.fromstring(xml)
    for iface in dom.iter("interface"):
        if iface.get("type") == "hostdev":
            addr = iface.find("source/address")
            d, bus, slotfn = b_vf1.split(":")
            slot, fn = slotfn.split(".")
            addr.set("domain", f"0x{d}"); addr.set("bus", f"0x{bus}")
            addr.set("slot", f"0x{slot}"); addr.set("function", f"0x{fn}")
    a.put(ET.tostring(dom, encoding="unicode"), "/root/fo-dest.xml")
    b.run(["mkdir", "-p", lab.L2_SERIAL_DIR])
    t0 = time.monotonic()
    mig = a.virsh("migrate", "--live", "--verbose", "--xml", "/root/fo-dest.xml", "fo",
                  "qemu+ssh://lab-b/system", timeout=1200, check=False)
    t_mig = time.monotonic() - t0
    jobinfo = b.virsh("domjobinfo", "--completed", "fo", check=False).stdout
    on_b = b.virsh("domstate", "fo", check=False).stdout.strip()
    on_a = a.virsh("domstate", "fo", check=False)
    if mig.returncode != 0:
        record("5-migrate", False, rc=mig.returncode, stderr=mig.stderr[-2000:],
               seconds=round(t_mig, 1),
               a_log=a.run(["tail", "-30", "/var/log/libvirt/qemu/fo.log"], check=False).stdout,
               b_log=b.run(["tail", "-30", "/var/log/libvirt/qemu/fo.log"], check=False).stdout)
        return 1
    try:
        rep = b.wait_l2("fo", lambda r: failover_ok(r, "198.51.100.1"), timeout=600)
        ok = True
    except lab.LabError as e:
        rep, ok = str(e)[-3000:], False
    hostdev_on_b = [a_.attrib for a_ in ET.fromstring(b.virsh("dumpxml", "fo").stdout)
                    .iterfind("devices/interface[@type='hostdev']/source/address")]
    record("5-migrate", ok, virsh_migrate_s=round(t_mig, 1),
           until_ping_on_b_s=round(time.monotonic() - t0, 1), report_on_b=rep,
           state_b=on_b, state_a=(on_a.stdout + on_a.stderr).strip(), hostdev_on_b=hostdev_on_b,
           jobinfo=jobinfo,
           a_vf0_driver=a.run(["readlink", f"/sys/bus/pci/devices/{a_vf0}/driver"],
                              check=False).stdout.strip(),
           b_log=b.run(["tail", "-15", "/var/log/libvirt/qemu/fo.log"], check=False).stdout)
    if not ok:
        return 1
    lab.TIMINGS["migrate-until-ping-on-b"] = round(time.monotonic() - t0, 1)
    return hostdev_step(a, a_vf0, args)


def hostdev_step(a: lab.L1Host, vf: str, args) -> int:
    """3. plain <interface type='hostdev'> guest on lab-a (after the migration freed VF 0)."""
    if args.skip_hostdev:
        return 0
    t1 = time.monotonic()
    a.start_l2("hd", lab.l2_domain_xml("hd", mac=HD_MAC, vf_pci=vf, mode="hostdev",
                                       ip="198.51.100.20/24", extra_cmdline=DMESG))
    t_started = time.monotonic() - t1
    try:
        rep = a.wait_l2("hd", lambda r: has(r, "igbvf") and r["ping"].get("198.51.100.2") == "ok",
                        timeout=1500)
        lab.TIMINGS["l2-hostdev-boot"] = round(time.monotonic() - t1, 1)
        record("3-l2-hostdev", True, seconds=round(time.monotonic() - t1, 1),
               virsh_start_s=round(t_started, 1), report=rep)
        return 0
    except lab.LabError as e:
        record("3-l2-hostdev", False, error=str(e)[-3000:],
               qemu_log=a.run(["tail", "-30", "/var/log/libvirt/qemu/hd.log"], check=False).stdout)
        return 1


if __name__ == "__main__":
    sys.exit(main())
