"""Enabling the hook only once it runs where libvirt runs it, and doctor's report.

Kernel state is a fake /proc and /sys/kernel/security tree under tmp_path; the
runner stands in for aa-exec/the hook and answers as they do (a denied exec:
exit 126, "Permission denied" on stderr).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vfmigrate.confinement import (STAGING_DIR, Completed, ConfinementProbe, Daemon,
                                   HookInstaller, HookNotOurs, local_rule)
from vfmigrate.doctor import FAIL, OK, WARN, hook_findings

REPO = Path(__file__).resolve().parents[2]
HOOK_SOURCE = REPO / "hooks" / "qemu"
SELF_TEST_OK = "ok   import: vfmigrate\nok   ledger: opened\n"


class Kernel:
    """A fake procfs + securityfs + sysfs."""

    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        self.security = root / "security"
        self.sys = root / "sys"
        for path in (self.proc, self.security, self.sys):
            path.mkdir(parents=True)

    def lsm(self, names: str) -> None:
        (self.security / "lsm").write_text(names)

    def profiles(self, *lines: str) -> None:
        (self.security / "apparmor").mkdir(exist_ok=True)
        (self.security / "apparmor" / "profiles").write_text("".join(f"{l}\n" for l in lines))

    def process(self, pid: int, comm: str, label: str | None = None, *,
                new_attr: bool = True) -> None:
        directory = self.proc / str(pid)
        (directory / "attr" / "apparmor").mkdir(parents=True)
        (directory / "comm").write_text(f"{comm}\n")
        if label is not None:
            where = directory / "attr" / ("apparmor/current" if new_attr else "current")
            where.write_text(f"{label}\n")

    def probe(self) -> ConfinementProbe:
        return ConfinementProbe(procfs_root=self.proc, securityfs_root=self.security,
                                sysfs_root=self.sys)


class Runner:
    """Answers like aa-exec + the hook; records what libvirt's qemu.d held meanwhile."""

    def __init__(self, *, denied: bool = False, returncode: int = 0,
                 stdout: str = SELF_TEST_OK, stderr: str = "") -> None:
        self.denied = denied
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr
        self.calls: list[list[str]] = []
        self.runnable_during_proof: list[list[str]] = []

    def __call__(self, argv, env) -> Completed:
        self.calls.append(list(argv))
        if argv[0] == "restorecon":
            return Completed(0, "", "")
        qemu_d = Path(argv[-1] if argv[0] == "aa-exec" else argv[0]).parent
        if qemu_d.name == STAGING_DIR:
            qemu_d = qemu_d.parent
        # What libvirt would run now: regular executable files directly in qemu.d.
        self.runnable_during_proof.append(sorted(
            entry.name for entry in qemu_d.iterdir()
            if entry.is_file() and not entry.is_symlink() and entry.stat().st_mode & 0o111))
        assert env["LC_ALL"] == "C" and env["HOME"] == "/root"
        if self.denied:
            hook = argv[-1]
            return Completed(126, "", f"/bin/sh: 1: exec: {hook}: Permission denied\n")
        return Completed(self.returncode, self.stdout, self.stderr)


@pytest.fixture
def kernel(tmp_path) -> Kernel:
    return Kernel(tmp_path / "kernel")


@pytest.fixture
def hooks_dir(tmp_path) -> Path:
    (tmp_path / "hooks" / "qemu.d").mkdir(parents=True)
    return tmp_path / "hooks"


def installer(hooks_dir: Path, kernel: Kernel, runner: Runner) -> HookInstaller:
    return HookInstaller(hooks_dir=hooks_dir, source=HOOK_SOURCE, probe=kernel.probe(),
                         runner=runner)


def apparmor_libvirtd(kernel: Kernel, label: str = "libvirtd (enforce)") -> None:
    kernel.lsm("lockdown,capability,landlock,yama,apparmor")
    kernel.profiles("virt-aa-helper (enforce)", "libvirtd (enforce)")
    kernel.process(1, "systemd", "unconfined")
    kernel.process(812, "libvirtd", label)


# -- probing ------------------------------------------------------------------------

def test_probe_reads_the_running_daemons_profile(kernel):
    apparmor_libvirtd(kernel)
    found = kernel.probe().probe()
    assert (found.apparmor, found.selinux) == (True, False)
    assert found.daemons == (Daemon("libvirtd", 812, "libvirtd", "enforce"),)
    assert found.summary() == ("AppArmor is active; libvirtd (running as pid 812) is "
                               "confined by AppArmor profile libvirtd (enforce)")


def test_probe_reads_the_old_attr_file_and_unconfined(kernel):
    kernel.lsm("capability,apparmor")
    kernel.process(40, "virtqemud", "unconfined", new_attr=False)
    kernel.process(41, "libvirtd", "libvirtd (complain)", new_attr=False)
    found = kernel.probe().probe()
    assert found.daemons == (Daemon("virtqemud", 40, None, None),)


def test_probe_without_a_running_daemon_proves_every_loaded_profile(kernel):
    kernel.lsm("capability,apparmor")
    kernel.profiles("virtqemud (enforce)", "libvirtd (complain)", "unrelated (enforce)")
    found = kernel.probe().probe()
    assert [d.name for d in found.daemons] == ["virtqemud", "libvirtd"]
    assert [d.mode for d in found.daemons] == ["enforce", "complain"]


def test_probe_without_lsm_file_asks_the_apparmor_module(kernel):
    (kernel.sys / "module/apparmor/parameters").mkdir(parents=True)
    (kernel.sys / "module/apparmor/parameters/enabled").write_text("Y\n")
    kernel.profiles("libvirtd (enforce)")
    assert kernel.probe().probe().apparmor


def test_probe_with_no_lsm_at_all(kernel):
    kernel.process(812, "libvirtd")
    found = kernel.probe().probe()
    assert (found.lsms, found.apparmor, found.selinux) == ((), False, False)
    assert found.daemons == (Daemon("libvirtd", 812, None, None),)


# -- enable ---------------------------------------------------------------------------

def test_denied_exec_leaves_the_hook_disabled_with_the_fix(kernel, hooks_dir):
    apparmor_libvirtd(kernel)
    runner = Runner(denied=True)
    result = installer(hooks_dir, kernel, runner).enable()
    assert not result.enabled
    target = hooks_dir / "qemu.d" / "vfmigrate"
    assert not os.path.lexists(target)
    assert os.listdir(hooks_dir / "qemu.d") == []         # staging removed too
    [argv] = runner.calls
    assert argv[:7] == ["aa-exec", "-p", "libvirtd", "--", "/bin/sh", "-c",
                        'exec "$0" --self-test']
    assert argv[7] == str(hooks_dir / "qemu.d" / STAGING_DIR / "vfmigrate")
    rule = f"{os.path.realpath(hooks_dir / 'qemu.d')}/{{,{STAGING_DIR}/}}vfmigrate rix,"
    assert local_rule(hooks_dir) == rule
    assert result.causes == [
        f"libvirtd's AppArmor profile (enforce) does not let it execute {target}: allow it "
        f"with '{rule}' in /etc/apparmor.d/local/usr.sbin.libvirtd, reload with "
        "'apparmor_parser -r /etc/apparmor.d/usr.sbin.libvirtd', then run "
        "'vfmigrate hook enable'"]
    assert result.lines()[-1].startswith("hook disabled: nothing in ")


def test_proven_hook_is_a_root_0755_copy_and_libvirt_never_saw_the_staged_one(
        kernel, hooks_dir):
    apparmor_libvirtd(kernel)
    runner = Runner()
    result = installer(hooks_dir, kernel, runner).enable()
    assert result.enabled, result.lines()
    target = hooks_dir / "qemu.d" / "vfmigrate"
    info = os.lstat(target)
    assert stat.S_ISREG(info.st_mode) and info.st_mode & 0o777 == 0o755
    assert target.read_bytes() == HOOK_SOURCE.read_bytes()
    assert runner.runnable_during_proof == [[]]
    assert os.listdir(hooks_dir / "qemu.d") == ["vfmigrate"]
    assert result.restart_needed == ("libvirtd",)
    assert result.lines() == [
        "confinement: AppArmor is active; libvirtd (running as pid 812) is confined by "
        "AppArmor profile libvirtd (enforce)",
        "the hook's self-test passed under libvirtd's AppArmor profile libvirtd (enforce)",
        f"hook enabled: {target}",
        "restart libvirtd once, when no migration is running: it had no qemu hook when it "
        "started, so it ignores the hook until then"]


def test_no_restart_hint_when_libvirt_already_had_a_hook(kernel, hooks_dir):
    apparmor_libvirtd(kernel)
    other = hooks_dir / "qemu.d" / "50-other"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    assert installer(hooks_dir, kernel, Runner()).enable().restart_needed == ()
    os.unlink(hooks_dir / "qemu.d" / "vfmigrate")
    other.unlink()
    assert installer(hooks_dir, kernel, Runner()).enable(restart_hint=False).restart_needed \
        == ()


def test_not_running_daemon_proves_each_loaded_profile_and_needs_no_restart(
        kernel, hooks_dir):
    kernel.lsm("capability,apparmor")
    kernel.profiles("virtqemud (enforce)", "libvirtd (enforce)")
    runner = Runner()
    result = installer(hooks_dir, kernel, runner).enable()
    assert result.enabled and result.restart_needed == ()
    assert [argv[2] for argv in runner.calls] == ["virtqemud", "libvirtd"]


def test_unconfined_daemon_runs_the_hook_directly(kernel, hooks_dir):
    kernel.process(812, "libvirtd")
    runner = Runner()
    result = installer(hooks_dir, kernel, runner).enable()
    assert result.enabled
    assert runner.calls == [[str(hooks_dir / "qemu.d" / STAGING_DIR / "vfmigrate"),
                             "--self-test"]]
    assert result.lines()[1] == "the hook's self-test passed unconfined, as libvirtd runs " \
                                "hooks here"


def test_self_test_failure_names_each_failed_check(kernel, hooks_dir):
    runner = Runner(returncode=1, stdout="ok   import: x\nFAIL ledger: ledger /var/lib/"
                    "vfmigrate/ledger.sqlite3: attempt to write a readonly database\n")
    result = installer(hooks_dir, kernel, runner).enable()
    assert not result.enabled
    assert result.causes == ["the hook's self-test failed: ledger: ledger /var/lib/vfmigrate/"
                             "ledger.sqlite3: attempt to write a readonly database"]


def test_old_symlink_is_replaced_by_a_copy(kernel, hooks_dir):
    target = hooks_dir / "qemu.d" / "vfmigrate"
    target.symlink_to(HOOK_SOURCE)
    result = installer(hooks_dir, kernel, Runner()).enable()
    assert result.enabled and not target.is_symlink()
    assert result.replaced == f"a symlink to {HOOK_SOURCE}"
    assert result.restart_needed == ()


def test_failed_proof_removes_the_previous_copy(kernel, hooks_dir):
    apparmor_libvirtd(kernel)
    assert installer(hooks_dir, kernel, Runner()).enable().enabled
    result = installer(hooks_dir, kernel, Runner(denied=True)).enable()
    assert not result.enabled
    assert not os.path.lexists(hooks_dir / "qemu.d" / "vfmigrate")


def test_someone_elses_file_is_left_alone(kernel, hooks_dir):
    target = hooks_dir / "qemu.d" / "vfmigrate"
    target.write_text("#!/bin/sh\nexit 0\n")
    with pytest.raises(HookNotOurs, match="is not vfmigrate's hook"):
        installer(hooks_dir, kernel, Runner()).enable()
    with pytest.raises(HookNotOurs):
        installer(hooks_dir, kernel, Runner()).disable()
    assert target.read_text() == "#!/bin/sh\nexit 0\n"


def test_disable_removes_only_ours(kernel, hooks_dir):
    hook = installer(hooks_dir, kernel, Runner())
    assert hook.disable() == f"hook already disabled: {hook.target} does not exist"
    hook.enable()
    assert hook.disable() == f"hook disabled: removed {hook.target} (a copy)"
    assert os.listdir(hooks_dir / "qemu.d") == []


# -- doctor -----------------------------------------------------------------------------

def test_doctor_fails_a_hook_the_daemon_cannot_execute(kernel, hooks_dir):
    apparmor_libvirtd(kernel)
    installer(hooks_dir, kernel, Runner()).enable()
    findings = hook_findings(installer(hooks_dir, kernel, Runner(denied=True)))
    assert [(f.level, f.check) for f in findings] == [(OK, "confinement"), (FAIL, "hook")]
    assert findings[1].message.startswith(
        "libvirtd's AppArmor profile (enforce) does not let it execute "
        f"{hooks_dir}/qemu.d/vfmigrate: allow it with '")


def test_doctor_tells_to_replace_the_old_symlink(kernel, hooks_dir):
    apparmor_libvirtd(kernel)
    (hooks_dir / "qemu.d" / "vfmigrate").symlink_to(HOOK_SOURCE)
    [_, finding] = hook_findings(installer(hooks_dir, kernel, Runner(denied=True)))
    assert finding.line() == (
        f"FAIL hook: libvirtd's AppArmor profile (enforce) does not let it execute "
        f"{hooks_dir}/qemu.d/vfmigrate, a symlink that AppArmor judges by its target "
        f"{HOOK_SOURCE}: run 'vfmigrate hook enable' to replace it by a copy")


def test_doctor_ok_line_and_missing_hook(kernel, hooks_dir):
    apparmor_libvirtd(kernel)
    [_, missing] = hook_findings(installer(hooks_dir, kernel, Runner()))
    assert missing.line() == (f"FAIL hook: {hooks_dir}/qemu.d/vfmigrate is missing: libvirt "
                              "runs no vfmigrate hook; enable it with 'vfmigrate hook enable'")
    installer(hooks_dir, kernel, Runner()).enable()
    [_, ok] = hook_findings(installer(hooks_dir, kernel, Runner()))
    assert ok.line() == (f"OK   hook: {hooks_dir}/qemu.d/vfmigrate is installed (a copy) and "
                         "its self-test passes under libvirtd's AppArmor profile libvirtd "
                         "(enforce)")


def test_doctor_names_what_keeps_a_missing_hook_disabled(kernel, hooks_dir):
    """After a postinst whose proof failed: the copy enable would install is proven
    (staged, then removed) and each cause is named with its fix."""
    apparmor_libvirtd(kernel)
    runner = Runner(denied=True)
    findings = hook_findings(installer(hooks_dir, kernel, runner))
    target = hooks_dir / "qemu.d" / "vfmigrate"
    assert [finding.line() for finding in findings[1:]] == [
        f"FAIL hook: {target} is missing: libvirt runs no vfmigrate hook; 'vfmigrate hook "
        "enable' will not enable it until what follows is fixed",
        f"FAIL hook: libvirtd's AppArmor profile (enforce) does not let it execute {target}: "
        f"allow it with '{local_rule(hooks_dir)}' in /etc/apparmor.d/local/usr.sbin.libvirtd, "
        "reload with 'apparmor_parser -r /etc/apparmor.d/usr.sbin.libvirtd', then run "
        "'vfmigrate hook enable'"]
    assert runner.calls[0][-1] == str(hooks_dir / "qemu.d" / STAGING_DIR / "vfmigrate")
    assert os.listdir(hooks_dir / "qemu.d") == []       # nothing left for libvirt to run


def test_doctor_creates_no_qemu_d_to_prove_a_copy(kernel, tmp_path):
    apparmor_libvirtd(kernel)
    runner = Runner(denied=True)
    [_, missing] = hook_findings(installer(tmp_path / "hooks", kernel, runner))
    assert missing.message.endswith("enable it with 'vfmigrate hook enable'")
    assert runner.calls == [] and not (tmp_path / "hooks").exists()


def selinux_libvirtd(kernel: Kernel, labels: dict[str, str]):
    """An SELinux host whose files have ``labels`` (path -> type)."""
    kernel.lsm("capability,selinux")
    kernel.process(812, "libvirtd", "system_u:system_r:virtd_t:s0-s0:c0.c1023")
    return ConfinementProbe(procfs_root=kernel.proc, securityfs_root=kernel.security,
                            sysfs_root=kernel.sys, read_file_label=lambda path: (
                                f"system_u:object_r:{labels[str(path)]}:s0"
                                if str(path) in labels else None))


def test_doctor_checks_the_selinux_labels_the_policy_needs(kernel, hooks_dir, tmp_path):
    hook, state = hooks_dir / "qemu.d" / "vfmigrate", str(tmp_path / "state")
    hook.write_text(HOOK_SOURCE.read_text())
    hook.chmod(0o755)
    labels = {str(hook): "virt_hook_t", state: "vfmigrate_var_lib_t"}
    probe = selinux_libvirtd(kernel, labels)

    def findings():
        return hook_findings(HookInstaller(hooks_dir=hooks_dir, source=HOOK_SOURCE,
                                           probe=probe, runner=Runner()), state_dir=state)

    [confinement, selinux, proof] = findings()
    assert confinement.level == OK and "SELinux is active" in confinement.message
    assert (selinux.level, proof.level) == (OK, OK)
    assert selinux.message.startswith(f"{hook} is virt_hook_t and {state} is "
                                      "vfmigrate_var_lib_t")
    labels[str(hook)] = "etc_t"          # copied in without restorecon
    labels[state] = "var_lib_t"          # vfmigrate-selinux not installed
    [_, hook_label, state_label, _] = findings()
    assert hook_label.line() == (f"FAIL selinux: {hook} is labelled etc_t, not virt_hook_t: "
                                 "libvirt's daemon may not execute it; run "
                                 f"'restorecon -F {hook}'")
    assert state_label.level == FAIL and "install vfmigrate-selinux and run " \
        f"'restorecon -R {state}'" in state_label.message


def test_doctor_warns_about_complain_mode(kernel, hooks_dir):
    apparmor_libvirtd(kernel, "libvirtd (complain)")
    [confinement, _] = hook_findings(installer(hooks_dir, kernel, Runner()))
    assert confinement.level == WARN and "complain mode" in confinement.message


def test_selinux_copy_is_relabelled_and_run_directly(kernel, hooks_dir):
    kernel.lsm("capability,selinux")
    kernel.process(812, "libvirtd", "system_u:system_r:virtd_t:s0-s0:c0.c1023")
    runner = Runner()
    result = installer(hooks_dir, kernel, runner).enable()
    assert result.enabled
    target = hooks_dir / "qemu.d" / "vfmigrate"
    assert runner.calls == [[str(hooks_dir / "qemu.d" / STAGING_DIR / "vfmigrate"),
                             "--self-test"], ["restorecon", "-F", str(target)]]
    assert f"SELinux: relabelled {target} with restorecon" in result.lines()


def test_two_enables_at_once_both_end_enabled(kernel, hooks_dir):
    from concurrent.futures import ThreadPoolExecutor

    def enable(_):
        return installer(hooks_dir, kernel, Runner()).enable().enabled

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(enable, range(8))) == [True] * 8
    assert os.listdir(hooks_dir / "qemu.d") == ["vfmigrate"]
