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
    config = None
    try:
        config = configuration.load(inputs.config_path)
        findings.append(Finding(OK, "config", f"{inputs.config_path} is valid "
                                f"({counted(len(config.networks), 'network')})"))
    except VfmigrateError as error:
        findings.append(Finding(FAIL, "config", str(error)))
    findings.extend(hook_findings(
        HookInstaller(hooks_dir=inputs.hooks_dir, probe=inputs.probe, runner=inputs.runner,
                      environ=inputs.hook_environment),
        state_dir=config.state_dir if config is not None else None))
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


HOOK_SELINUX_TYPE = "virt_hook_t"            # Fedora's virt.fc: /etc/libvirt/hooks(/.*)?
STATE_SELINUX_TYPE = "vfmigrate_var_lib_t"   # packaging/selinux/vfmigrate.cil


def hook_findings(installer: HookInstaller, state_dir: str | None = None) -> list[Finding]:
    """Confinement, whether the installed hook runs under it (the proof, re-run) and,
    under SELinux, the labels the policy needs on the hook and on ``state_dir``."""
    hook = installer.target
    what, proofs, confinement = installer.status()
    findings = [_confinement_finding(confinement)]
    if confinement.selinux and what != "missing":
        findings.extend(_selinux_findings(installer.probe, hook, state_dir))
    if what == "missing":
        causes = [cause for proof in proofs if not proof.passed for cause in proof.causes]
        findings.append(Finding(FAIL, "hook", f"{hook} is missing: libvirt runs no vfmigrate "
                                "hook; " + ("'vfmigrate hook enable' will not enable it "
                                            "until what follows is fixed" if causes
                                            else "enable it with 'vfmigrate hook enable'")))
        findings.extend(Finding(FAIL, "hook", cause) for cause in causes)
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


def _selinux_findings(probe, hook, state_dir: str | None) -> Iterator[Finding]:
    """The labels Fedora's policy and the vfmigrate-selinux module need (packaging/README:
    argued from the policy, not yet proven on an SELinux host)."""
    hook_type = probe.selinux_type(hook)
    state_type = probe.selinux_type(state_dir) if state_dir is not None else STATE_SELINUX_TYPE
    if hook_type != HOOK_SELINUX_TYPE:
        yield Finding(FAIL, "selinux", f"{hook} is labelled {hook_type or 'with no type'}, not "
                      f"{HOOK_SELINUX_TYPE}: libvirt's daemon may not execute it; run "
                      f"'restorecon -F {hook}'")
    if state_type != STATE_SELINUX_TYPE:
        yield Finding(FAIL, "selinux", f"{state_dir} is labelled {state_type or 'with no type'}, "
                      f"not {STATE_SELINUX_TYPE}: under virtqemud the hook may not write its "
                      f"ledger; install vfmigrate-selinux and run 'restorecon -R {state_dir}'")
    if hook_type == HOOK_SELINUX_TYPE and state_type == STATE_SELINUX_TYPE:
        where = f" and {state_dir} is {STATE_SELINUX_TYPE}" if state_dir else ""
        yield Finding(OK, "selinux", f"{hook} is {HOOK_SELINUX_TYPE}{where}, as libvirt's "
                      "daemons need (from Fedora's policy; not yet proven on an SELinux host)")


def _confinement_finding(confinement) -> Finding:
    summary = confinement.summary()
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
