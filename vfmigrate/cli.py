"""The ``vfmigrate`` command (also ``python3 -m vfmigrate``).

Commands::

    vfmigrate status [--json]     networks, PFs and VFs with state and owner
    vfmigrate doctor              is this host ready? one line per finding
    vfmigrate hook enable|disable|status
                                  install the libvirt hook once it is proven to
                                  run under libvirt's confinement; remove it;
                                  show whether it runs
    vfmigrate reconcile [--dry-run]
                                  make the ledger agree with libvirt and sysfs
                                  (what the listener does at start)
    vfmigrate tag DOMAIN --network NAME [--device ALIAS|MAC]
                                  label a guest's VFs with their network
    vfmigrate check DOMAIN DEST_URI [--json]
                                  can the guest migrate there, and how?
                                  (exit 0: virsh migrate, 10: vfmigrate migrate,
                                  1: cannot)
    vfmigrate migrate DOMAIN DEST_URI [--p2p] [--persistent] [--undefinesource] ...
                                  unplug the guest's VFs, migrate it, plug VFs
                                  of the destination in; roll back on failure

Global options: ``--config PATH`` (else ``$VFMIGRATE_CONFIG``, else
``/etc/vfmigrate/vfmigrate.conf``).  Exit codes are those of
:mod:`vfmigrate.errors`; ``doctor`` exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Mapping, TextIO

from . import __version__
from . import config as configuration
from .errors import (EXIT_INTERNAL, ConfigMissing, Refused, UsageError, VfmigrateError,
                     counted, exit_code_for)

DESCRIPTION = """\
vfmigrate makes live migration of libvirt/KVM guests that hold SR-IOV VFs
work: its qemu hook reserves a free VF of the right network on the destination
and rewrites the guest's XML to it; its listener releases and resets VFs once
a guest has left.  These commands inspect and maintain a host."""

EPILOG = """\
files:
  /etc/vfmigrate/vfmigrate.conf         configuration (networks and their PFs)
  /var/lib/vfmigrate/ledger.sqlite3     claims: which VF belongs to which guest
  /etc/libvirt/hooks/qemu.d/vfmigrate   the libvirt hook, a copy of
                                        /usr/libexec/vfmigrate/qemu-hook made by
                                        'vfmigrate hook enable'

exit codes:
  0 ok, 1 refused/check failed, 2 usage, 3 bad XML, 4 bad config,
  5 sysfs or ledger error, 6 libvirt error, 70 internal error
"""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, out: TextIO = sys.stdout, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.out = out

    def error(self, message: str) -> None:  # one line, our exit code, no usage dump
        raise UsageError(problem=f"{message} (see 'vfmigrate --help')")

    def _print_message(self, message: str, file: TextIO | None = None) -> None:
        if message:
            self.out.write(message)


def build_parser(stdout: TextIO = sys.stdout) -> argparse.ArgumentParser:
    parser = _Parser(prog="vfmigrate", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter, out=stdout)
    parser.add_argument("--version", action="version", version=f"vfmigrate {__version__}")
    parser.add_argument("--config", metavar="PATH",
                        help="config file (default: $VFMIGRATE_CONFIG or "
                             f"{configuration.DEFAULT_CONFIG_PATH})")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    status = commands.add_parser("status", out=stdout, help="show networks, PFs and VFs with their owners")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    doctor = commands.add_parser("doctor", out=stdout, help="check that this host is ready for vfmigrate")
    doctor.add_argument("--uri", default="qemu:///system",
                        help="libvirt URI whose version to check (default: %(default)s)")
    doctor.add_argument("--hooks-dir", type=Path, default=Path("/etc/libvirt/hooks"),
                        help="libvirt's hooks directory (default: %(default)s)")

    hook = commands.add_parser(
        "hook", out=stdout, help="enable, disable or check vfmigrate's libvirt hook",
        description="enable: copy the hook into libvirt's qemu.d once its self-test has "
                    "passed under the confinement of the libvirt daemon that will run it "
                    "(AppArmor profile, else unconfined); on failure the hook stays "
                    "disabled and each cause is printed with its fix (exit 1). "
                    "disable: remove vfmigrate's hook. status: what is installed and "
                    "whether its self-test passes where libvirt runs it.")
    hook.add_argument("action", choices=("enable", "disable", "status"))
    hook.add_argument("--hooks-dir", type=Path, default=Path("/etc/libvirt/hooks"),
                      help="libvirt's hooks directory (default: %(default)s)")
    hook.add_argument("--source", type=Path, default=Path("/usr/libexec/vfmigrate/qemu-hook"),
                      help="the hook program to copy (default: %(default)s)")
    hook.add_argument("--no-restart-hint", action="store_true",
                      help="libvirt already had a qemu hook when it started (the package "
                           "passes this on upgrades): do not suggest restarting it")

    reconcile = commands.add_parser(
        "reconcile", out=stdout, help="make the ledger agree with libvirt's guests and sysfs",
        description="Release claims of guests that are gone, expire stale incoming claims, "
                    "add missing claims, report VFs two guests name, reset released VFs. "
                    "The listener does the same at start and after reconnecting.")
    reconcile.add_argument("--dry-run", action="store_true",
                           help="only say what would change")
    reconcile.add_argument("--uri", help="libvirt URI (default: libvirt_uri of the config)")

    tag = commands.add_parser(
        "tag", out=stdout, help="label a guest's VFs with their network (metadata)",
        description="Write vfmigrate's metadata into the guest (live if running, and its "
                    "saved definition if persistent) so that migrations know which "
                    "network each VF belongs to.")
    tag.add_argument("domain", metavar="DOMAIN", help="guest name")
    tag.add_argument("--network", required=True, help="network label, as in the config")
    tag.add_argument("--device", metavar="ALIAS|MAC",
                     help="label only this device (default: every VF device)")
    tag.add_argument("--uri", help="libvirt URI (default: libvirt_uri of the config)")

    check = commands.add_parser(
        "check", out=stdout, help="can a guest migrate to a destination, and how?",
        description="Ask the destination's libvirt (node devices, running guests, versions) "
                    "whether the guest can migrate there: exit 0 if a plain 'virsh migrate "
                    "--live' works, 10 if 'vfmigrate migrate' is needed, 1 if it cannot.")
    check.add_argument("domain", metavar="DOMAIN")
    check.add_argument("destination", metavar="DEST_URI")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument("--include-device", action="append", default=[], metavar="NAME",
                       help="also move this non-network PCI device (alias, MAC or address)")
    check.add_argument("--uri", help="the source's libvirt URI (default: libvirt_uri)")

    migrate = commands.add_parser(
        "migrate", out=stdout, help="migrate a guest whose VFs cannot ride along",
        description="Unplug the guest's VFs (after recording them in its metadata), migrate "
                    "it live, and have a VF of the same network plugged in on the "
                    "destination; if anything fails before the guest has moved, its VFs are "
                    "plugged back in here.")
    migrate.add_argument("domain", metavar="DOMAIN")
    migrate.add_argument("destination", metavar="DEST_URI")
    migrate.add_argument("--p2p", action="store_true", help="peer-to-peer migration")
    migrate.add_argument("--persistent", action="store_true",
                         help="persist the guest on the destination")
    migrate.add_argument("--undefinesource", action="store_true",
                         help="undefine the guest on the source")
    migrate.add_argument("--bandwidth", type=int, metavar="MiB/s", help="bandwidth limit")
    migrate.add_argument("--timeout", type=float, metavar="S",
                         help="pause the guest after S seconds so the migration completes")
    migrate.add_argument("--unplug-timeout", type=float, default=30.0, metavar="S",
                         help="how long the guest may take to let go of a VF (default 30)")
    migrate.add_argument("--replug-timeout", type=float, default=30.0, metavar="S",
                         help="how long to wait for the destination's listener to plug the "
                              "VFs in before doing it from here (default 30)")
    migrate.add_argument("--include-device", action="append", default=[], metavar="NAME",
                         help="also move this non-network PCI device (alias, MAC or address)")
    migrate.add_argument("--uri", help="the source's libvirt URI (default: libvirt_uri)")
    return parser


def main(argv: list[str], stdout: TextIO, stderr: TextIO, *,
         environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    try:
        args = build_parser(stdout).parse_args(argv[1:])
        path = configuration.config_path(args.config, environ)
        handler = _COMMANDS[args.command]
        return handler(args, path, stdout)
    except VfmigrateError as error:
        stderr.write(f"vfmigrate: {' '.join(str(error).split())}\n")
        return exit_code_for(error)
    except SystemExit as exit_request:  # --help / --version
        return int(exit_request.code or 0)
    except Exception as error:
        stderr.write(f"vfmigrate: internal error: {type(error).__name__}: {error}\n")
        return EXIT_INTERNAL


def _status(args: argparse.Namespace, path: str, stdout: TextIO) -> int:
    from .inventory import Inventory
    from .ledger import Ledger
    from .running import running_guests
    from .status import host_status

    config = configuration.load(path)
    with Ledger.of(config) as ledger:
        status = host_status(config, Inventory.of(config),
                             ledger, running_guests(config.libvirt_run_dir,
                                                     allow_stand_ins=config.allow_stand_ins))
    if args.json:
        json.dump(status.as_dict(), stdout, indent=2)
        stdout.write("\n")
        return 0
    for network in status.networks:
        stdout.write(f"network {network.name}: {network.total} VFs, "
                     f"{network.count('free')} free, {network.count('incoming')} incoming, "
                     f"{network.count('active')} active, "
                     f"{network.count('in-use')} in use without a claim\n")
        for spec in network.missing_pfs:
            stdout.write(f"  PF {spec}: NOT FOUND under {config.sysfs_root}\n")
        for pf in network.pfs:
            node = "unknown" if pf.numa_node is None else pf.numa_node
            stdout.write(f"  PF {pf.spec} ({pf.address}): {pf.num_vfs} of "
                         f"{pf.total_vfs if pf.total_vfs is not None else '?'} VFs enabled, "
                         f"NUMA node {node}\n")
            for vf in pf.vfs:
                owner = f"{vf.domain_name} ({vf.domain_uuid})" if vf.domain_name else "-"
                since = time.strftime(" since %Y-%m-%d %H:%M:%S",
                                      time.localtime(vf.since)) if vf.since else ""
                netdevs = f" {','.join(vf.netdevs)}" if vf.netdevs else ""
                stdout.write(f"    VF {vf.index:<3} {vf.address}  {vf.state:<8} {owner}{since}"
                             f"  [{vf.driver or 'no driver'}{netdevs}]\n")
    for claim in status.stray_claims:
        stdout.write(f"stray claim: VF {claim.vf} ({claim.network}) {claim.state} for "
                     f"{claim.domain_name}: the VF is not in any network now\n")
    for problem in status.problems:
        stdout.write(f"problem: {problem}\n")
    return 0


def _hook_environment(path: str) -> dict[str, str]:
    """What the self-test needs besides libvirt's hook environment: a config path
    other than the default (libvirt passes none)."""
    return {} if path == configuration.DEFAULT_CONFIG_PATH else \
        {configuration.CONFIG_ENV: path}


def _doctor(args: argparse.Namespace, path: str, stdout: TextIO) -> int:
    from .doctor import FAIL, DoctorInputs, run_checks
    from .virt import libvirt_version_probe

    findings = run_checks(DoctorInputs(config_path=path, hooks_dir=args.hooks_dir,
                                       libvirt_version=libvirt_version_probe(args.uri),
                                       hook_environment=_hook_environment(path)))
    for finding in findings:
        stdout.write(finding.line() + "\n")
    return 1 if any(finding.level == FAIL for finding in findings) else 0


def _hook(args: argparse.Namespace, path: str, stdout: TextIO) -> int:
    from .confinement import HookInstaller
    from .doctor import FAIL, hook_findings

    installer = HookInstaller(hooks_dir=args.hooks_dir, source=args.source,
                              environ=_hook_environment(path))
    if args.action == "enable":
        result = installer.enable(restart_hint=not args.no_restart_hint)
        for line in result.lines():
            stdout.write(f"vfmigrate: {line}\n")
        return 0 if result.enabled else 1
    if args.action == "disable":
        stdout.write(f"vfmigrate: {installer.disable()}\n")
        return 0
    findings = hook_findings(installer)
    for finding in findings:
        stdout.write(finding.line() + "\n")
    return 1 if any(finding.level == FAIL for finding in findings) else 0


def _reconcile(args: argparse.Namespace, path: str, stdout: TextIO) -> int:
    from .ledger import Ledger
    from .reconcile import Reconciler, vf_resetter
    from .virt import LibvirtHost

    config = configuration.load(path)
    host = LibvirtHost.open(args.uri or config.libvirt_uri)
    try:
        with Ledger.of(config) as ledger:
            reconciler = Reconciler(config, ledger, vf_netlink=vf_resetter(config))
            corrections = reconciler.reconcile(   # the function: claims are read first
                host.active_guests, dry_run=args.dry_run)
    finally:
        host.close()
    prefix = "would " if args.dry_run else ""
    for correction in corrections:
        stdout.write(f"{prefix}{correction.line()}\n")
    if not corrections:
        stdout.write("ledger agrees with libvirt and sysfs: nothing to correct\n")
    return 0


class NothingToTag(Refused):
    msg_fmt = "guest '{domain}' has {what}; nothing was labelled"


def _tag(args: argparse.Namespace, path: str, stdout: TextIO) -> int:
    from . import METADATA_NAMESPACE, domxml, metadata
    from .virt import LibvirtHost

    if not configuration.is_network_label(args.network):
        raise UsageError(problem=f"network label {args.network!r} must be letters, digits, "
                                 "'_', '.', ':' or '-'")
    try:
        config = configuration.load(path)
        uri = args.uri or config.libvirt_uri
    except ConfigMissing:
        uri = args.uri or "qemu:///system"
    host = LibvirtHost.open(uri)
    try:
        domain = host.lookup_name(args.domain)
        uuid = domain.UUIDString()
        active = host.is_active(uuid)
        guest = host.guest(uuid, inactive=not active)
        parsed = domxml.parse(guest.xml)
        selected = {device.address for device in parsed.devices
                    if device.kind != "metadata" and device.address is not None
                    and (args.device is None or args.device in (device.alias, device.mac))}
        if not selected:
            what = (f"no VF device '{args.device}'" if args.device else
                    "no VF device (<interface type='hostdev'> or <hostdev type='pci'>)")
            raise NothingToTag(domain=args.domain, what=what)
        entries = metadata.labelled_entries(
            parsed, lambda address: args.network if address in selected else None)
        if entries is not None:
            host.set_metadata(uuid, metadata.render(entries), METADATA_NAMESPACE,
                              metadata.PREFIX, live=active, config=guest.persistent)
    finally:
        host.close()
    where = " and ".join(w for w, on in (("live", active), ("saved definition",
                                                            guest.persistent)) if on)
    if entries is None:
        stdout.write(f"guest {args.domain}: already labelled network {args.network}\n")
    else:
        stdout.write(f"guest {args.domain}: {counted(len(selected), 'VF device')} labelled network "
                     f"{args.network} ({where})\n")
    return 0


def _optional_config(path: str) -> configuration.Config | None:
    try:
        return configuration.load(path)
    except ConfigMissing:
        return None


def _check(args: argparse.Namespace, path: str, stdout: TextIO) -> int:
    from .check import run_check
    from .virt import LibvirtHost

    config = _optional_config(path)
    source = LibvirtHost.open(args.uri or (config.libvirt_uri if config else "qemu:///system"))
    try:
        destination = LibvirtHost.open(args.destination)
        try:
            report = run_check(source, destination, args.domain,
                               destination_uri=args.destination, config=config,
                               include_devices=frozenset(args.include_device))
        finally:
            destination.close()
    finally:
        source.close()
    if args.json:
        json.dump(report.as_dict(), stdout, indent=2)
        stdout.write("\n")
    else:
        stdout.write("\n".join(report.lines()) + "\n")
    return report.exit_code


def _migrate(args: argparse.Namespace, path: str, stdout: TextIO) -> int:
    from . import logs
    from .assisted import AssistedMigration, Options
    from .supervision import start_libvirt_event_loop
    from .virt import LibvirtHost, import_libvirt

    config = _optional_config(path)
    logs.setup(stream=sys.stderr)
    start_libvirt_event_loop(import_libvirt())   # unplugs are awaited through events
    source = LibvirtHost.open(args.uri or (config.libvirt_uri if config else "qemu:///system"))
    started = time.monotonic()

    def progress(line: str) -> None:
        stdout.write(f"[{time.monotonic() - started:6.1f} s] {line}\n")
        stdout.flush()

    options = Options(p2p=args.p2p, persistent=args.persistent,
                      undefine_source=args.undefinesource, bandwidth_mib=args.bandwidth,
                      timeout=args.timeout, unplug_timeout=args.unplug_timeout,
                      replug_timeout=args.replug_timeout,
                      include_devices=frozenset(args.include_device))
    try:
        report = AssistedMigration(source, args.destination, args.domain, config=config,
                                   options=options, open_destination=LibvirtHost.open,
                                   progress=progress).run()
    finally:
        source.close()
    if report.moved:
        progress(f"done: {counted(len(report.moved), 'VF')} moved, plugged in by {report.replugged_by}; "
                 f"the guest was without them for {report.seconds_without_vf:.1f} s "
                 f"(migration {report.seconds_migrating:.1f} s, all {report.seconds_total:.1f} s)")
    else:
        progress(f"done: no VF needed moving (migration {report.seconds_migrating:.1f} s)")
    return 0


_COMMANDS = {"status": _status, "doctor": _doctor, "hook": _hook, "reconcile": _reconcile,
             "tag": _tag, "check": _check, "migrate": _migrate}


def run() -> int:
    return main(sys.argv, sys.stdout, sys.stderr)
