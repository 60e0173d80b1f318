"""The SR-IOV lab's scenarios' shared pieces: hosts set up with vfmigrate, L2
guests booted, what a host's ledger, journal and PF say, and that both hosts are
still stock confined libvirt hosts (tests and demo)."""

from __future__ import annotations

import json
import shutil
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import lab

FO_MAC = "52:54:00:2a:00:10"      # <interface type='hostdev'> + <teaming>
HFO_MAC = "52:54:00:2a:00:30"     # plain <hostdev> + <teaming>
PLAIN_MAC = "52:54:00:2a:00:20"   # <interface type='hostdev'>, no teaming
GUEST_IP = "198.51.100.10/24"
LAB_A, LAB_B = "198.51.100.1", "198.51.100.2"
# As admins do: libvirt over ssh (root's key, the other host's key pinned; lab.py), no TCP
# listener.  QEMU's migration stream goes to the destination's native migration port.
URI_B, URI_A = "qemu+ssh://lab-b/system", "qemu+ssh://lab-a/system"


def config(pf: str, deny: str = "") -> str:
    return (f"[vfmigrate]\nreservation_timeout = 600\n\n[network physnet1]\npfs = {pf}\n"
            + (f"deny_vfs = {deny}\n" if deny else ""))


def claims(host) -> list[tuple[str, str, str]]:
    data = json.loads(host.run(["vfmigrate", "status", "--json"]).stdout)
    return sorted((vf["domain_name"], vf["address"], vf["state"])
                  for network in data["networks"] for pf in network["pfs"] for vf in pf["vfs"]
                  if vf["state"] != "free")


def journal(host, action: str) -> list[dict]:
    """vfmigrate's journal entries for ``action`` on the host, since :func:`mark_journal`.

    Filtered here by time: ``journalctl --after-cursor`` with field matches skips the
    first matching entry when the cursor's own entry does not match (systemd 252)."""
    output = host.run(["journalctl", "-o", "json", "--no-pager",
                       "SYSLOG_IDENTIFIER=vfmigrate", f"VFMIGRATE_ACTION={action}"],
                      check=False).stdout
    since = getattr(host, "journal_since", 0)
    entries = (json.loads(line) for line in output.splitlines() if line.strip())
    return [entry for entry in entries if int(entry["__REALTIME_TIMESTAMP"]) > since]


def mark_journal(host) -> None:
    """From now on :func:`journal` on this host returns only newer entries."""
    output = host.run(["journalctl", "-n", "1", "-o", "json", "--no-pager"]).stdout
    host.journal_since = int(json.loads(output.strip().splitlines()[-1])["__REALTIME_TIMESTAMP"])


def _journal_since(host, *argv: str) -> list[dict]:
    """Journal entries matching ``argv`` (journalctl options/matches) newer than the
    host's :func:`mark_journal` (filtered by time here, see :func:`journal`)."""
    output = host.run(["journalctl", "-o", "json", "--no-pager", *argv], check=False).stdout
    since = getattr(host, "journal_since", 0)
    entries = (json.loads(line) for line in output.splitlines() if line.strip())
    return [entry for entry in entries if int(entry["__REALTIME_TIMESTAMP"]) > since]


def _message(entry: dict) -> str:
    message = entry.get("MESSAGE", "")
    return bytes(message).decode(errors="replace") if isinstance(message, list) else message


def apparmor_denials(host) -> list[str]:
    """``apparmor="DENIED"`` lines of the host's kernel log since :func:`mark_journal`."""
    return [_message(entry) for entry in _journal_since(host, "-k")
            if 'apparmor="DENIED"' in _message(entry)]


LIBVIRTD_PROFILE_FILE = "/etc/apparmor.d/usr.sbin.libvirtd"
LIBVIRTD_PROFILE_LOCAL = "/etc/apparmor.d/local/usr.sbin.libvirtd"
HOOK = "/etc/libvirt/hooks/qemu.d/vfmigrate"             # the package's enabled copy
HOOK_STAGING = "/etc/libvirt/hooks/qemu.d/.vfmigrate-staging/vfmigrate"
PACKAGED_HOOK = "/usr/libexec/vfmigrate/qemu-hook"
GUEST_USER = "libvirt-qemu"


def profile_modes(host) -> dict[str, str]:
    """Loaded AppArmor profiles -> mode (``enforce``/``complain``)."""
    text = host.run(["cat", "/sys/kernel/security/apparmor/profiles"]).stdout
    return {line.rsplit(" (", 1)[0]: line.rsplit(" (", 1)[1].rstrip(")")
            for line in text.splitlines() if " (" in line}


def process_confinement(host, pid: int | str) -> tuple[str, str]:
    """(user, AppArmor label) of a process in the host, e.g.
    ``("libvirt-qemu", "libvirt-<uuid> (enforce)")``."""
    output = host.run(["ps", "-o", "user:32=,label=", "-p", str(pid)]).stdout.split(None, 1)
    return output[0], output[1].strip()


def known_denial(host: lab.L1Host, line: str) -> bool:
    """A guest QEMU's denial that ``host``'s kind logs as shipped (lab.KNOWN_DENIALS)."""
    return 'profile="libvirt-' in line and any(
        f'name="{path}"' in line for path in lab.KNOWN_DENIALS.get(host.image.kind, ()))


def assert_stock_libvirt(*hosts, allowed_denial=lambda line: False) -> None:
    """Each host is a stock confined libvirt host, and was since :func:`mark_journal`:
    the AppArmor profile of its QEMU daemon (libvirtd or virtqemud) loaded in enforce mode
    and the running daemon under it;
    every running guest's QEMU runs as ``libvirt-qemu`` under its own enforcing
    ``libvirt-<uuid>`` profile; not one ``apparmor="DENIED"`` in the kernel log (but
    those ``allowed_denial(line)`` accepts, and a guest's QEMU denied a path its host's
    kind is known to deny, ``lab.KNOWN_DENIALS``)."""
    for host in hosts:
        modes = profile_modes(host)
        daemon = host.image.qemu_daemon   # its profile has its name
        assert modes.get(daemon) == "enforce", (host.name, modes)
        pid = host.run(["systemctl", "show", "-P", "MainPID", daemon]).stdout.strip()
        assert process_confinement(host, pid)[1] == f"{daemon} (enforce)", \
            (host.name, process_confinement(host, pid))
        for guest in host.virsh("list", "--name").stdout.split():
            uuid = host.virsh("domuuid", guest).stdout.strip()
            qemu_pid = host.run(["cat", f"/run/libvirt/qemu/{guest}.pid"]).stdout.strip()
            assert process_confinement(host, qemu_pid) == (
                GUEST_USER, f"libvirt-{uuid} (enforce)"), (host.name, guest)
            assert modes.get(f"libvirt-{uuid}") == "enforce", (host.name, guest, modes)
        denials = [line for line in apparmor_denials(host)
                   if not allowed_denial(line) and not known_denial(host, line)]
        assert not denials, (host.name, denials)


def restart_libvirtd(host, guest: str, ready=None) -> None:
    """``systemctl restart libvirtd`` with ``guest`` running (what the package tells
    admins to do): the guest keeps running (and reporting ``ready``, for an L2 guest with
    an OS), libvirt ran the hook's ``reconnect`` without error (a failing reconnect hook
    makes libvirt kill the guest; it logs the failure), vfmigrate logged no error, the
    listener reconnected."""
    mark = host.journal_since
    host.journal_since = int(json.loads(host.run(
        ["journalctl", "-n", "1", "-o", "json", "--no-pager"]).stdout.strip().splitlines()[-1])
        ["__REALTIME_TIMESTAMP"])
    try:
        host.run(["systemctl", "restart", "libvirtd"], timeout=300)
        assert host.virsh("domstate", guest, timeout=180).stdout.strip() == "running"
        if ready is not None:
            next_report(host, guest, ready, 600)
        # (libvirtd logs its usual complaints at error priority on every start: no
        # dnsmasq, no /dev/kvm; a hook's failure names the hook)
        errors = [_message(e) for e in _journal_since(host, "-u", "libvirtd")
                  if "hook" in _message(e).lower()]
        assert not errors, (host.name, errors)
        errors = [_message(e) for e in _journal_since(host, "SYSLOG_IDENTIFIER=vfmigrate")
                  if int(e.get("PRIORITY", 6)) <= 3]
        assert not errors, (host.name, errors)
        lab.wait(lambda: journal(host, "listener"), 120, f"{host.name}'s listener to reconnect")
    finally:
        host.journal_since = mark


def vf_settings(host, index: int) -> str:
    """The ``vf N`` line of ``ip link show PF``: MAC, VLAN, spoof checking, trust."""
    output = host.run(["ip", "link", "show", host.pf]).stdout
    return next(line.strip() for line in output.splitlines()
                if line.strip().startswith(f"vf {index} "))


def hostdev_source(host, guest: str) -> str:
    root = ElementTree.fromstring(host.virsh("dumpxml", guest).stdout)
    for path in ("devices/interface[@type='hostdev']/source/address",
                 "devices/hostdev/source/address"):
        address = root.find(path)
        if address is not None:
            return (f"{int(address.get('domain'), 16):04x}:{int(address.get('bus'), 16):02x}:"
                    f"{int(address.get('slot'), 16):02x}.{int(address.get('function'), 16):x}")
    raise AssertionError(f"guest {guest} has no hostdev")


def vf_alias(host, guest: str) -> str | None:
    root = ElementTree.fromstring(host.virsh("dumpxml", guest).stdout)
    alias = root.find("devices/interface[@type='hostdev']/alias")
    return alias.get("name") if alias is not None else None


def failover_up(report: dict, peer: str, mac: str) -> bool:
    master = report.get("master")
    slaves = {i["driver"]: i["mac"] for i in report["ifaces"] if i["master"] == master}
    return (master not in (None, "-") and slaves.get("igbvf") == mac
            and "virtio_net" in slaves and report["ping"].get(peer) == "ok")


def vf_up(report: dict, peer: str, mac: str) -> bool:
    return any(i["driver"] == "igbvf" and i["mac"] == mac for i in report["ifaces"]) \
        and report["ping"].get(peer) == "ok"


# A running L2 guest reports every ~15-25 s of wall time; after a migration its console is
# new on the destination and gets its first lines (an RCU stall, reports) within a minute.
RUNNING_GUEST_SILENCE_LIMIT = 300


def next_report(host, guest: str, predicate, timeout: float) -> dict:
    """A report from the (running, booted) guest's console, newer than its latest one now,
    that matches ``predicate``."""
    since = guest_uptime(host, guest)
    return host.wait_l2(guest, lambda r: float(r["up"]) > since and predicate(r),
                        timeout=timeout, silence_limit=RUNNING_GUEST_SILENCE_LIMIT)


def boot_guest(host, name: str, mac: str, vf: str, mode: str, ready) -> float:
    """Start an L2 guest and wait until ``ready(report)``; the seconds it took."""
    started = time.monotonic()
    host.start_l2(name, lab.l2_domain_xml(name, mac=mac, vf_pci=vf, mode=mode, ip=GUEST_IP))
    host.wait_l2(name, ready, timeout=1800)
    seconds = time.monotonic() - started
    assert_stock_libvirt(host)
    return seconds


def guest_uptime(host, guest: str) -> float:
    reports = host.l2_reports(guest)
    return float(reports[-1]["up"]) if reports else 0.0


def vf_holder_xml(name: str, vfs: list[str], *, teamed: bool = False,
                  cpuset: str | None = None) -> str:
    """A guest that only holds ``vfs`` (no OS: SeaBIOS finds nothing to boot and waits);
    ``teamed``: each VF teamed with a virtio NIC, so libvirt lets it migrate; ``cpuset``:
    its vCPU pinned to those host CPUs."""
    def address(vf: str) -> str:
        return " ".join(f"{key}='{value}'" for key, value in lab._pci_attributes(vf).items())

    interfaces = ""
    for index, vf in enumerate(vfs):
        mac = f"52:54:00:2a:01:{index:02x}"
        if teamed:
            interfaces += (f"<interface type='bridge'><mac address='{mac}'/>"
                           "<source bridge='br0'/><model type='virtio'/>"
                           f"<teaming type='persistent'/><alias name='ua-net{index}'/>"
                           "<rom enabled='no'/></interface>")
        interfaces += (
            f"<interface type='hostdev' managed='yes'><mac address='{mac}'/>"
            f"<source><address type='pci' {address(vf)}/></source>"
            + (f"<teaming type='transient' persistent='ua-net{index}'/>" if teamed else "")
            + "<rom bar='off'/></interface>")
    vcpu = f"<vcpu placement='static' cpuset='{cpuset}'>1</vcpu>" if cpuset else ""
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>{vcpu}"
            "<os><type arch='x86_64' machine='q35'>hvm</type></os>"
            # without <acpi/> libvirt 9.0 passes -no-acpi, which QEMU 10 no longer has
            "<features><acpi/></features>"
            "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
            f"<memballoon model='none'/>{interfaces}</devices></domain>")


@contextmanager
def vfmigrate_lab(deb: Path, work: Path, *, numvfs: int = 2, deny_first_on_b: bool = True,
                  numa_nodes: tuple[int, int] = (1, 1),
                  kinds: tuple[str, str] = (lab.L1_KIND, lab.L1_KIND)
                  ) -> Iterator[tuple[lab.L1Host, lab.L1Host]]:
    """lab-a and lab-b booted with ``deb`` installed, ``numvfs`` VFs each, physnet1 on
    their igb PF (lab-b denies its first VF unless told not to), listeners restarted on
    that config, each with ``numa_nodes`` NUMA nodes (two: the PF on node 1) and the
    ``kinds`` of L1 image (lab.L1_KINDS); stopped on exit."""
    payloads = []
    for name in ("a", "b"):
        payload = work / f"payload-{name}"
        payload.mkdir(parents=True, exist_ok=True)
        shutil.copy(deb, payload)
        payloads.append(payload)
    with lab.Lab(2, workdir=work / "hosts", payloads=payloads, numvfs=numvfs,
                 numa_nodes=numa_nodes, kinds=kinds) as the_lab:
        the_lab.boot(timeout=480)
        a, b = the_lab.hosts
        for host, deny_first in ((a, False), (b, deny_first_on_b)):
            status = host.status()
            if status["payload"].get("installed") != ["vfmigrate"]:
                raise lab.LabError(f"{host.name}: vfmigrate not installed: {status['payload']}")
            # the package's postinst proved the hook under libvirtd's profile and enabled it
            if "vfmigrate: hook enabled: " + HOOK not in status["payload"]["output"]:
                raise lab.LabError(f"{host.name}: vfmigrate's hook not enabled at install: "
                                   f"{status['payload']['output']}")
            host.vfs = [vf["pci"] for vf in status["vfs"]]
            host.pf = status["pf"]["netdev"]
            host.put(config(host.pf, host.vfs[0] if deny_first else ""),
                     "/etc/vfmigrate/vfmigrate.conf")
            host.run(["systemctl", "restart", "vfmigrate-listener"])
            host.run(["mkdir", "-p", lab.L2_SERIAL_DIR])   # guests' consoles, on both hosts
            host.virsh("version", timeout=180)
        yield a, b
