"""``vfmigrate doctor``: is this host ready to send and receive VF guests?

Each check yields findings: a level (ok, warn, fail), what was found, and
what to do.  The host is ready when nothing fails.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from . import config as configuration
from .confinement import ConfinementProbe, HookInstaller, Runner, run_command
from .errors import VfmigrateError, counted
from .inventory import Inventory
from .ledger import Ledger

OK, WARN, FAIL = "ok", "warn", "fail"
QEMU_D_VERSION = 6_005_000        # libvirt 6.5: /etc/libvirt/hooks/qemu.d/
HOSTDEV_TEAMING_VERSION = 7_001_000  # libvirt 7.1: <teaming> on plain <hostdev>


@dataclass(frozen=True)
class Finding:
    level: str
    check: str
    message: str

    def line(self) -> str:
        return f"{self.level.upper():4} {self.check}: {self.message}"


@dataclass
class DoctorInputs:
    config_path: str
    hooks_dir: Path = Path("/etc/libvirt/hooks")
    modules_dir: Path = Path("/lib/modules") / platform.release()
    libvirt_version: Callable[[], tuple[int, str]] | None = None
    hook_environment: dict[str, str] = field(default_factory=dict)
    probe: ConfinementProbe = field(default_factory=ConfinementProbe)
    runner: Runner = run_command


def _version_text(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def run_checks(inputs: DoctorInputs) -> list[Finding]:
    findings: list[Finding] = []
    findings.extend(_check_libvirt(inputs))
    findings.extend(hook_findings(HookInstaller(
        hooks_dir=inputs.hooks_dir, probe=inputs.probe, runner=inputs.runner,
        environ=inputs.hook_environment)))
    config = None
    try:
        config = configuration.load(inputs.config_path)
        findings.append(Finding(OK, "config", f"{inputs.config_path} is valid "
                                f"({counted(len(config.networks), 'network')})"))
    except VfmigrateError as error:
        findings.append(Finding(FAIL, "config", str(error)))
    if config is not None:
        findings.extend(_check_networks(config))
        findings.extend(_check_iommu(Path(config.sysfs_root)))
        findings.extend(_check_vfio(Path(config.sysfs_root), inputs.modules_dir))
        findings.extend(_check_ledger(config))
    return findings


def _check_libvirt(inputs: DoctorInputs) -> Iterator[Finding]:
    if inputs.libvirt_version is None:
        yield Finding(WARN, "libvirt", "version not checked (python3-libvirt missing)")
        return
    try:
        number, source = inputs.libvirt_version()
    except VfmigrateError as error:
        yield Finding(WARN, "libvirt", f"version unknown: {error}")
        return
    text = _version_text(number)
    if number < QEMU_D_VERSION:
        yield Finding(FAIL, "libvirt", f"{source} is {text}; vfmigrate's hook needs "
                      "libvirt >= 6.5 (hooks/qemu.d): upgrade libvirt")
    elif number < HOSTDEV_TEAMING_VERSION:
        yield Finding(WARN, "libvirt", f"{source} is {text}: teaming works on "
                      "<interface type='hostdev'> only; <hostdev> teaming needs 7.1")
    else:
        yield Finding(OK, "libvirt", f"{source} is {text}")


def hook_findings(installer: HookInstaller) -> list[Finding]:
    """Confinement, and whether the installed hook runs under it (the proof, re-run)."""
    hook = installer.target
    what, proofs, confinement = installer.status()
    findings = [_confinement_finding(confinement)]
    if what == "missing":
        findings.append(Finding(FAIL, "hook", f"{hook} is missing: libvirt runs no vfmigrate "
                                "hook; enable it with 'vfmigrate hook enable'"))
        return findings
    if not proofs:
        findings.append(Finding(FAIL, "hook", f"{hook} ({what}) is not executable: run "
                                "'vfmigrate hook enable' to replace it"))
        return findings
    failed = [proof for proof in proofs if not proof.passed]
    for proof in failed:
        for cause in proof.causes:
            findings.append(Finding(FAIL, "hook", cause))
    if not failed:
        where = "; ".join(proof.where() for proof in proofs)
        findings.append(Finding(OK, "hook", f"{hook} is installed ({what}) and its "
                                f"self-test passes {where}"))
    return findings


def _confinement_finding(confinement) -> Finding:
    summary = confinement.summary()
    if confinement.selinux and not confinement.apparmor:
        return Finding(WARN, "confinement", f"{summary}; vfmigrate does not check the "
                       "hook's SELinux labels yet: if guest starts fail with the hook "
                       "denied, see 'ausearch -m avc -c qemu'")
    complain = [d for d in confinement.daemons if d.confined and d.mode != "enforce"]
    if complain:
        return Finding(WARN, "confinement", f"{summary}; in {complain[0].mode} mode a "
                       "denial is only logged, so the self-test cannot show it")
    return Finding(OK, "confinement", summary)


def _check_networks(config: configuration.Config) -> Iterator[Finding]:
    if not config.networks:
        yield Finding(WARN, "networks", f"{config.path} defines no [network NAME]: "
                      "this host can receive no VF guest")
        return
    inventory = Inventory.of(config)
    for name in config.networks:
        try:
            vfs = inventory.vfs_of_network(name)
        except VfmigrateError as error:
            yield Finding(FAIL, f"network {name}", str(error))
            continue
        for spec in inventory.missing_pfs.get(name, []):
            yield Finding(FAIL, f"network {name}", f"PF {spec} not found under "
                          f"{config.sysfs_root}: fix 'pfs' in {config.path}")
        if not vfs:
            yield Finding(FAIL, f"network {name}", "no VFs: create them, e.g. "
                          "echo 8 > /sys/class/net/PF/device/sriov_numvfs")
        else:
            yield Finding(OK, f"network {name}", f"{len(vfs)} VFs on "
                          f"{counted(len(inventory.pfs_of_network(name)), 'PF')}")


def _check_iommu(sysfs_root: Path) -> Iterator[Finding]:
    groups = sysfs_root / "kernel" / "iommu_groups"
    try:
        count = len(os.listdir(groups))
    except OSError:
        count = 0
    if count:
        yield Finding(OK, "iommu", f"{count} IOMMU groups")
    else:
        yield Finding(FAIL, "iommu", "no IOMMU groups: enable VT-d/AMD-Vi in the firmware "
                      "and boot with intel_iommu=on (Intel) or amd_iommu=on")


def _check_vfio(sysfs_root: Path, modules_dir: Path) -> Iterator[Finding]:
    if (sysfs_root / "bus" / "pci" / "drivers" / "vfio-pci").is_dir():
        yield Finding(OK, "vfio-pci", "driver loaded")
        return
    for listing in ("modules.dep", "modules.builtin"):
        try:
            text = (modules_dir / listing).read_text()
        except OSError:
            continue
        if "/vfio-pci.ko" in text:
            yield Finding(OK, "vfio-pci", "available as a module (libvirt loads it)")
            return
    yield Finding(FAIL, "vfio-pci", f"not loaded and not in {modules_dir}: install a kernel "
                  "with VFIO (CONFIG_VFIO_PCI)")


def _check_ledger(config: configuration.Config) -> Iterator[Finding]:
    try:
        with Ledger.of(config) as ledger:
            live = ledger.live_claims()
    except VfmigrateError as error:
        yield Finding(FAIL, "ledger", str(error))
        return
    yield Finding(OK, "ledger", f"{config.ledger_path}: {counted(len(live), 'live claim')}")
