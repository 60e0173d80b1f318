"""Which guests crash after a lab migration: an experiment in arms (issue 13).

Run outside CI (hours), as root, on an otherwise idle machine::

    python3 -m tests.lab.attribution run --minutes 600 --workdir /var/tmp/attribution
    [--l1-kind debian12-qemu10]   # both L1s' kind (lab.L1_KINDS); default debian12: QEMU 7.2
    python3 -m tests.lab.attribution table /var/tmp/attribution/results.jsonl [...]

One lab (lab-a, lab-b: same L1 image, CPU model, L2 kernel as the lab tier; 4 VFs each,
no VF denied) and five L2 guests, one per arm, that differ in one thing each:

* ``virtio``      a guest with no VF (virtio only), ``virsh migrate --live``;
* ``teamed``      a teamed VF guest (``<interface type='hostdev'>`` + ``<teaming>``),
                  ``virsh migrate --live``, vfmigrate as installed;
* ``no-listener`` the same, with vfmigrate's listener stopped on both hosts for the
                  migration and until the guest is healthy again (no release, no reset of
                  the source's VF meanwhile);
* ``assisted``    a VF guest without teaming moved with ``vfmigrate migrate``;
* ``virtio-paused`` the ``virtio`` guest's twin moved with ``virsh migrate`` without
                  ``--live``: libvirt pauses it first, so every page is copied after its
                  last write and QEMU's dirty-page tracking plays no part.

The guests are booted once, one at a time, and kept paused (``virsh suspend``: a paused TCG
guest costs no CPU) while another arm migrates; the arms take turns, one migration each per
round, so a drift of the machine over hours spreads evenly.  A migration (a *hop*) is:
resume the guest, wait for a healthy report where it is, migrate it to the other host,
wait for a healthy report there (pinging the other host through its VF, or through virtio
for the ``virtio`` arm), wait until the source holds no claim for it, pause it.  A guest
that crashes (oops, BUG, panic on its console) or hangs (console silent for 300 s) is
recorded with its console, destroyed and booted again.  Every hop is one JSON line in
``results.jsonl``; ``table`` prints the crash rate of each arm with a 95 % interval.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from tests.conftest import build_package
from tests.lab import lab
from tests.lab.scenario import (LAB_A, LAB_B, URI_A, URI_B, claims, failover_up,
                                next_report, vf_up, vfmigrate_lab)

log = logging.getLogger("vfmigrate.lab.attribution")

HEALTHY_TIMEOUT = 900


@dataclass(frozen=True)
class Arm:
    name: str
    guest: str
    mode: str            # lab.l2_domain_xml mode
    mac: str
    ip: str
    has_vf: bool
    how: str             # "virsh" or "vfmigrate"
    listener_stopped: bool = False
    live: bool = True    # virsh migrate --live, or with the guest paused meanwhile

    def healthy(self, host: str) -> Callable[[dict], bool]:
        """A report of this guest, up on ``host`` (``lab-a``/``lab-b``) and using its
        network: a VF guest pings the other host through its VF; the virtio guest pings
        the host it is on (QEMU's igb with SR-IOV on drops frames from the other host to
        a MAC that is not a VF's: a virtio-only guest on br0 cannot reach it)."""
        peer, own = (LAB_B, LAB_A) if host == "lab-a" else (LAB_A, LAB_B)
        if self.mode == "failover":
            return lambda report: failover_up(report, peer, self.mac)
        if self.mode == "hostdev":
            return lambda report: vf_up(report, peer, self.mac)
        return lambda report: report["ping"].get(own) == "ok"


ARMS = (
    Arm("virtio", "att-virtio", "virtio", "52:54:00:2a:03:01", "198.51.100.31/24", False,
        "virsh"),
    Arm("teamed", "att-teamed", "failover", "52:54:00:2a:03:02", "198.51.100.32/24", True,
        "virsh"),
    Arm("no-listener", "att-nolistener", "failover", "52:54:00:2a:03:03",
        "198.51.100.33/24", True, "virsh", listener_stopped=True),
    Arm("assisted", "att-assisted", "hostdev", "52:54:00:2a:03:04", "198.51.100.34/24", True,
        "vfmigrate"),
    Arm("virtio-paused", "att-paused", "virtio", "52:54:00:2a:03:05", "198.51.100.35/24",
        False, "virsh", live=False),
)


class Experiment:
    def __init__(self, a: lab.L1Host, b: lab.L1Host, workdir: Path) -> None:
        self.a, self.b = a, b
        self.results = workdir / "results.jsonl"
        self.crashes = workdir / "crashes"
        self.crashes.mkdir(parents=True, exist_ok=True)
        self.where: dict[str, lab.L1Host] = {}

    def other(self, host: lab.L1Host) -> lab.L1Host:
        return self.b if host is self.a else self.a

    @staticmethod
    def uri_of(host: lab.L1Host) -> str:
        return URI_A if host.name == "lab-a" else URI_B

    def record(self, **fields) -> None:
        fields["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        with self.results.open("a") as out:
            out.write(json.dumps(fields) + "\n")
        log.info("%s", fields)

    def free_vf(self, host: lab.L1Host) -> str:
        taken = {address for _, address, _ in claims(host)}
        return next(vf for vf in host.vfs if vf not in taken)

    def boot(self, arm: Arm, host: lab.L1Host) -> None:
        started = time.monotonic()
        vf = self.free_vf(host) if arm.has_vf else None
        host.start_l2(arm.guest, lab.l2_domain_xml(arm.guest, mac=arm.mac, vf_pci=vf,
                                                   mode=arm.mode, ip=arm.ip))
        host.wait_l2(arm.guest, arm.healthy(host.name), timeout=1800)
        host.virsh("suspend", arm.guest)
        self.where[arm.name] = host
        self.record(event="boot", arm=arm.name, host=host.name, vf=vf,
                    seconds=round(time.monotonic() - started, 1))

    def boot_once_more_if_it_fails(self, arm: Arm, host: lab.L1Host) -> None:
        try:
            self.boot(arm, host)
        except lab.LabError as failed:
            self.record(event="boot-failed", arm=arm.name, host=host.name,
                        detail=str(failed)[:600], console=self.keep_console(host, arm, 0))
            self.discard(arm)
            self.boot(arm, host)

    def discard(self, arm: Arm) -> None:
        """Destroy and undefine the arm's guest wherever it is; wait for its claims to go."""
        for host in (self.a, self.b):
            if arm.guest in host.virsh("list", "--name").stdout.split():
                host.virsh("destroy", arm.guest)
            if arm.guest in host.virsh("list", "--all", "--name").stdout.split():
                host.virsh("undefine", arm.guest)
        for host in (self.a, self.b):
            lab.wait(lambda: all(name != arm.guest for name, _, _ in claims(host)), 180,
                     f"{host.name} to release {arm.guest}'s VF")
        self.where.pop(arm.name, None)

    def replace(self, arm: Arm) -> None:
        self.discard(arm)
        counts = {host.name: sum(1 for h in self.where.values() if h is host)
                  for host in (self.a, self.b)}
        self.boot_once_more_if_it_fails(
            arm, self.a if counts["lab-a"] <= counts["lab-b"] else self.b)

    def keep_console(self, host: lab.L1Host, arm: Arm, round_: int) -> str:
        path = self.crashes / f"round{round_:02d}-{arm.name}-{host.name}.console"
        path.write_text(host.l2_console(arm.guest))
        return str(path)

    def hop(self, arm: Arm, round_: int) -> None:
        source = self.where[arm.name]
        destination = self.other(source)
        fields = dict(event="hop", round=round_, arm=arm.name, source=source.name,
                      destination=destination.name)
        try:
            source.virsh("resume", arm.guest)
            next_report(source, arm.guest, arm.healthy(source.name), HEALTHY_TIMEOUT)
        except lab.LabError as failed:
            self.record(**fields, outcome="crash-before", detail=str(failed)[:300],
                        console=self.keep_console(source, arm, round_))
            self.replace(arm)
            return
        destination.run(["rm", "-f", f"{lab.L2_SERIAL_DIR}/{arm.guest}.console"])
        failure: tuple[str, lab.LabError] | None = None
        if arm.listener_stopped:
            for host in (self.a, self.b):
                host.run(["systemctl", "stop", "vfmigrate-listener"])
        started = time.monotonic()
        try:
            if arm.how == "virsh":
                source.virsh("migrate", *(["--live"] if arm.live else []), arm.guest,
                             self.uri_of(destination), timeout=1800)
            else:
                source.run(["vfmigrate", "migrate", arm.guest, self.uri_of(destination),
                            "--unplug-timeout", "300", "--replug-timeout", "600"],
                           timeout=1800)
            fields["migrate_s"] = round(time.monotonic() - started, 1)
            self.where[arm.name] = destination
            next_report(destination, arm.guest, arm.healthy(destination.name),
                        HEALTHY_TIMEOUT)
            fields["healthy_s"] = round(time.monotonic() - started, 1)
        except lab.L2GuestCrashed as crashed:
            silent = "silent" in str(crashed).split("console:")[0]
            failure = ("hang" if silent else "crash", crashed)
        except lab.LabError as error:
            failure = ("error", error)
        finally:
            if arm.listener_stopped:
                for host in (self.a, self.b):
                    host.run(["systemctl", "start", "vfmigrate-listener"])
        if failure is not None:
            outcome, error = failure
            self.record(**fields, outcome=outcome, detail=str(error)[:600],
                        console=self.keep_console(destination, arm, round_))
            self.replace(arm)
            return
        try:
            lab.wait(lambda: all(name != arm.guest for name, _, _ in claims(source)), 300,
                     f"{source.name} to release {arm.guest}'s VF")
            claim_left = False
        except lab.LabError:
            claim_left = True
        destination.virsh("suspend", arm.guest)
        self.record(**fields, outcome="ok", source_claim_left=claim_left)


def run(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.minutes * 60
    args.workdir.mkdir(parents=True, exist_ok=True)
    deb = build_package("deb")
    arms = [arm for arm in ARMS if arm.name in args.arms]
    with vfmigrate_lab(deb, args.workdir / "lab", numvfs=4, deny_first_on_b=False,
                       kinds=(args.l1_kind, args.l1_kind)) as (a, b):
        experiment = Experiment(a, b, args.workdir)
        experiment.record(event="start", arms=[arm.name for arm in arms],
                          qemu=a.run(["qemu-system-x86_64", "--version"]).stdout.split("\n")[0],
                          libvirt=a.run(["libvirtd", "--version"]).stdout.strip())
        for index, arm in enumerate(arms):    # one at a time; half on each host
            experiment.boot_once_more_if_it_fails(arm, a if index % 2 == 0 else b)
        for round_ in range(1, args.rounds + 1):
            for arm in arms:
                if time.monotonic() > deadline:
                    experiment.record(event="stop", reason="time is up", round=round_)
                    return 0
                experiment.hop(arm, round_)
        experiment.record(event="stop", reason="all rounds done", round=args.rounds)
    return 0


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def table(paths: Sequence[Path], out=sys.stdout) -> None:
    hops: dict[str, list[dict]] = defaultdict(list)
    for path in paths:
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("event") == "hop":
                hops[entry["arm"]].append(entry)
    out.write("| arm | migrations | ok | crashed | hung | other failure | crash or hang "
              "(95 % interval) | median migration / to healthy (s) |\n")
    out.write("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |\n")
    for arm in [arm.name for arm in ARMS]:
        entries = [e for e in hops.get(arm, []) if e["outcome"] != "crash-before"]
        count = defaultdict(int)
        for entry in entries:
            count[entry["outcome"]] += 1
        bad = count["crash"] + count["hang"]
        low, high = wilson(bad, len(entries))
        ok = [e for e in entries if e["outcome"] == "ok"]
        medians = "-"
        if ok:
            migrate = sorted(e["migrate_s"] for e in ok)[len(ok) // 2]
            healthy = sorted(e["healthy_s"] for e in ok)[len(ok) // 2]
            medians = f"{migrate:.0f} / {healthy:.0f}"
        rate = f"{bad}/{len(entries)} ({100 * low:.0f}–{100 * high:.0f} %)" if entries else "-"
        out.write(f"| {arm} | {len(entries)} | {count['ok']} | {count['crash']} | "
                  f"{count['hang']} | {count['error']} | {rate} | {medians} |\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="boot the lab and migrate the arms' guests")
    run_parser.add_argument("--workdir", type=Path, required=True)
    run_parser.add_argument("--minutes", type=float, default=600,
                            help="start no migration after this many minutes")
    run_parser.add_argument("--rounds", type=int, default=15)
    run_parser.add_argument("--arms", nargs="+", default=[arm.name for arm in ARMS],
                            choices=[arm.name for arm in ARMS])
    run_parser.add_argument("--l1-kind", choices=list(lab.L1_KINDS), default="debian12",
                            help="both L1s' libvirt and QEMU (lab.L1_KINDS): Debian 12's "
                                 "(9.0, 7.2), 9.0 with QEMU 10.0, or bookworm-backports' "
                                 "(11.3, 10.0)")
    table_parser = commands.add_parser("table", help="the result table of one or more runs")
    table_parser.add_argument("results", type=Path, nargs="+")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command == "table":
        table(args.results)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
