#!/usr/bin/env python3
"""What vfmigrate adds to a live migration: wall time and downtime, with vs without.

Two real libvirtd hosts (tests/testbed), a no-OS guest (64 MiB) and the tiny
Linux guest (256 MiB), each holding a simulated VF (vfmigrate metadata; see
tests/e2e/vfhosts.py), ping-pong between the hosts with ``virsh migrate --live
--p2p``.  Arms alternate, so drift hits all alike: *with* = the hook in
qemu.d and the listeners running; *hook only* = the listeners stopped;
*without* = hook moved out of qemu.d, listeners stopped.  Wall time is virsh's, downtime libvirt's (``domjobinfo
--completed`` on the destination).  Needs root.

Target (issue 4): vfmigrate adds <= 3 % to the wall time.

``--libvirt system,backports`` runs host a on Debian 12's libvirt 9.0 + QEMU 7.2 and host b
on libvirt 11.3 + QEMU 10 from bookworm-backports (tests/testbed/flavours.py); figures are
then printed per direction.
Usage: benchmarks/migration_overhead.py [--pairs 10] [--libvirt A,B]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.vfhosts import (  # noqa: E402
    guest_mac_for,
    libvirt_flavours,
    vf_testbed,
    with_simulated_vf,
)
from tests.testbed.guests import SerialLog, linux_guest_xml, no_os_guest_xml  # noqa: E402
from tests.testbed.linux_guest import build_linux_guest  # noqa: E402
from tests.testbed.testbed import default_cache_dir  # noqa: E402


ARMS = ("without", "hook only", "with")


def set_vfmigrate(hosts, arm: str) -> None:
    """``with``: hook and listeners; ``hook only``: listeners stopped; ``without``: neither."""
    for vf_host in hosts:
        active = vf_host.host.hooks_dir / "qemu.d" / "vfmigrate"
        parked = vf_host.host.hooks_dir / "vfmigrate.disabled"
        if arm != "without" and parked.exists():
            parked.replace(active)
        elif arm == "without" and active.exists():
            active.replace(parked)
        running = vf_host.listener is not None and vf_host.listener.poll() is None
        if arm == "with" and not running:
            vf_host.start_listener()
        elif arm != "with" and running:
            vf_host.stop_listener()


def downtime_ms(host, guest: str) -> float:
    info = host.virsh("domjobinfo", "--completed", guest).stdout
    match = re.search(r"^Total downtime:\s+(\d+)", info, flags=re.M)
    return float(match.group(1)) if match else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--libvirt", default="system,system",
                        help="flavours of hosts a and b (system | backports)")
    args = parser.parse_args()
    image = build_linux_guest(default_cache_dir())
    samples: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    with libvirt_flavours(tuple(args.libvirt.split(","))) as flavours, vf_testbed(2) as hosts:
        a, b = hosts
        names_of = {a: flavours[0].short, b: flavours[1].short}
        serial = SerialLog(hosts.testbed.shared_dir / "bench-linux.serial.log")
        guests = {
            "no-OS 64 MiB": with_simulated_vf(no_os_guest_xml("bench-noos"), a.vfs[0],
                                              guest_mac_for("bench-noos")),
            "Linux 256 MiB": with_simulated_vf(linux_guest_xml("bench-linux", image,
                                                               serial.path),
                                               a.vfs[1], guest_mac_for("bench-linux")),
        }
        names = {}
        for label, xml in guests.items():
            names[label] = a.host.create_domain(xml)
        serial.wait_ready(timeout=120)
        where = {label: a for label in guests}
        for pair in range(args.pairs):
            arms = ARMS if pair % 2 == 0 else ARMS[::-1]
            for arm in arms:
                set_vfmigrate(hosts, arm)
                for label, name in names.items():
                    source = where[label]
                    destination = b if source is a else a
                    result = source.host.migrate(name, destination.host)
                    direction = f"{names_of[source]}->{names_of[destination]}"
                    samples.setdefault((label, arm, direction), []).append(
                        (result.wall_seconds, downtime_ms(destination.host, name)))
                    where[label] = destination
        set_vfmigrate(hosts, "with")
        labels = {a: flavours[0].label, b: flavours[1].label}
    print(f"live migration with vs without vfmigrate, {args.pairs} interleaved rounds per "
          f"guest (virsh migrate --live --p2p, simulated VF pools)")
    print(f"host a: {labels[a]}; host b: {labels[b]}")
    print(f"{'guest':<15} {'direction':<11} {'arm':<9} {'wall mean s':>11} {'wall p50 s':>10} "
          f"{'downtime p50 ms':>15}")
    directions = sorted({direction for _, _, direction in samples})
    for label in guests:
        for direction in directions:
            means = {}
            for arm in ARMS:
                walls = [wall for wall, _ in samples[(label, arm, direction)]]
                downs = [down for _, down in samples[(label, arm, direction)]]
                means[arm] = statistics.mean(walls)
                print(f"{label:<15} {direction:<11} {arm:<9} {means[arm]:11.3f} "
                      f"{statistics.median(walls):10.3f} {statistics.median(downs):15.0f}")
            print(f"{label:<15} {direction:<11} ratio with/without (mean wall): "
                  f"{means['with'] / means['without']:.3f} (target <= 1.03); added: hook "
                  f"{means['hook only'] - means['without']:+.3f} s, listeners "
                  f"{means['with'] - means['hook only']:+.3f} s")


if __name__ == "__main__":
    main()
