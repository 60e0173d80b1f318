"""Packaging tier: build the .deb and .rpm, lint and list them, install the .deb
on this machine, run the installed hook, listener and CLI through real libvirtd
hosts, then remove and purge it; upgrade from the previous commit's .deb.

Installs system-wide (root; CI's machine is disposable): the module fixture
purges the package again whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import build_deb_from_history, build_package, git

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "packaging"))
import changelog  # noqa: E402  packaging/changelog.py
from tests.testbed.fixtures import testbed_factory  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
VERSION = re.search(r'__version__ = "(.*)"', (REPO / "vfmigrate/__init__.py").read_text()).group(1)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="installs packages: needs root")

# Where every file lands (the .rpm's Python directory is the build host's sitelib).
HOOK = "/etc/libvirt/hooks/qemu.d/vfmigrate"   # made by the postinst, not shipped
PROGRAM = "/usr/libexec/vfmigrate/qemu-hook"
DEB_FILES = {
    "/etc/vfmigrate/vfmigrate.conf",
    "/lib/systemd/system/vfmigrate-listener.service",
    "/usr/bin/vfmigrate",
    "/usr/lib/python3/dist-packages/vfmigrate/hook.py",
    "/usr/lib/python3/dist-packages/vfmigrate/listener.py",
    f"/usr/lib/python3/dist-packages/vfmigrate-{VERSION}.dist-info/entry_points.txt",
    "/usr/lib/systemd/catalog/vfmigrate.catalog",
    "/usr/lib/tmpfiles.d/vfmigrate.conf",
    "/usr/libexec/vfmigrate/qemu-hook",
    "/usr/libexec/vfmigrate/vfmigrate-listener",
    "/usr/share/doc/vfmigrate/README.md",
    "/usr/share/man/man8/vfmigrate.8.gz",
}
RPM_FILES = {
    "/etc/vfmigrate/vfmigrate.conf",
    "/usr/bin/vfmigrate",
    "/usr/lib/systemd/catalog/vfmigrate.catalog",
    "/usr/lib/systemd/system/vfmigrate-listener.service",
    "/usr/lib/tmpfiles.d/vfmigrate.conf",
    "/usr/libexec/vfmigrate/qemu-hook",
    "/usr/libexec/vfmigrate/vfmigrate-listener",
    "/usr/share/man/man8/vfmigrate.8.gz",
    "/var/lib/vfmigrate",
}


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=SYSTEM_PATH, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(argv, capture_output=True, text=True, env=env, **kwargs)


@pytest.fixture(scope="module")
def deb(built_deb) -> Path:
    return built_deb


@pytest.fixture(scope="module")
def rpm() -> Path:
    return build_package("rpm")


@pytest.fixture(scope="module")
def installed(deb):
    result = run(["apt-get", "install", "-y", "--no-install-recommends", str(deb)], timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    yield result
    run(["apt-get", "purge", "-y", "vfmigrate"], timeout=600)


def test_deb_lints_without_errors(deb):
    result = run(["lintian", "--fail-on", "error", str(deb)], timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [line for line in result.stdout.splitlines() if line.startswith("E:")]


def test_deb_contents_and_dependencies(deb):
    listing = run(["dpkg-deb", "-c", str(deb)]).stdout
    paths = {"/" + line.split()[5].lstrip("./").rstrip("/") for line in listing.splitlines()}
    assert DEB_FILES <= paths, sorted(DEB_FILES - paths)
    assert not [path for path in paths if path.startswith("/etc/libvirt")]  # enabled, not shipped
    fields = run(["dpkg-deb", "-f", str(deb), "Depends", "Version"]).stdout
    for dependency in ("libvirt-daemon (>= 6.5)", "python3-libvirt", "python3-pyudev",
                       "python3-systemd", "python3-pyroute2"):
        assert dependency in fields
    assert f"Version: {VERSION}" in fields


def test_rpm_files_land_where_expected(rpm):
    listing = set(run(["rpm", "-qlp", str(rpm)]).stdout.split())
    assert RPM_FILES <= listing, sorted(RPM_FILES - listing)
    assert not [path for path in listing if path.startswith("/etc/libvirt")]
    sitelib = next(path for path in listing if path.endswith("/vfmigrate/hook.py"))
    assert re.fullmatch(r"/usr/lib/python3\.\d+/site-packages/vfmigrate/hook\.py", sitelib)
    requires = run(["rpm", "-qpR", str(rpm)]).stdout
    for dependency in ("libvirt-daemon >= 6.5", "python3-libvirt", "python3-pyudev",
                       "python3-systemd", "python3-pyroute2"):
        assert dependency in requires
    config = run(["rpm", "-qpc", str(rpm)]).stdout.split()
    assert config == ["/etc/vfmigrate/vfmigrate.conf"]
    assert run(["rpm", "-qp", "--qf", "%{VERSION}", str(rpm)]).stdout == VERSION


def _scriptlets(rpm: Path) -> dict[str, str]:
    """rpm -qp --scripts, by phase: {"preinstall": body, ...}."""
    text = run(["rpm", "-qp", "--scripts", str(rpm)]).stdout
    parts = re.split(r"^(\w+) scriptlet \(using /bin/sh\):\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def _guarded(body: str, condition: str, command: str) -> bool:
    """Whether ``command`` runs only inside an ``if [ CONDITION ]; then ... fi``."""
    stack: list[str] = []
    for word in re.findall(r"(?<![\w-])if .*?; then|(?<![\w-])fi(?![\w-])|[^\n]+?(?="
                           r"(?<![\w-])if |(?<![\w-])fi(?![\w-])|$)", body, re.M):
        if command in word:     # a command, or the condition of an inner if
            return f"if [ {condition} ]; then" in stack
        if word.startswith("if "):
            stack.append(word)
        elif word == "fi":
            stack.pop()
    return False


def test_rpm_scriptlets_per_phase(rpm):
    """rpm passes $1 = instances left after the step: install 1, upgrade 2 (new
    package) / 1 (old package's %preun/%postun), erase 0.  An upgrade runs the new
    %pre, %post, the old %preun, %postun, then the new %posttrans."""
    phases = _scriptlets(rpm)
    assert set(phases) == {"preinstall", "postinstall", "preuninstall", "postuninstall",
                           "posttrans"}
    # %pre: on upgrade only, leave the mark that tells %posttrans not to hint a restart.
    assert _guarded(phases["preinstall"], "$1 -gt 1",
                    "touch /var/lib/rpm-state/vfmigrate/upgrade")
    # %post: the listener's preset on first install only; never the hook (%posttrans).
    assert _guarded(phases["postinstall"], "$1 -eq 1",
                    "systemctl --no-reload preset vfmigrate-listener.service")
    assert "hook" not in phases["postinstall"]
    # %preun: on erase only, stop the listener and delete our hook copy (marker line)
    # while the Python package is still there; an upgrade's old %preun does nothing.
    preun = phases["preuninstall"]
    assert _guarded(preun, "$1 -eq 0", "systemctl --no-reload disable --now "
                                      "vfmigrate-listener.service")
    assert _guarded(preun, "$1 -eq 0", "grep -q '^# vfmigrate-hook:' \"$hook\"")
    assert _guarded(preun, "$1 -eq 0", 'rm -f "$hook"')
    assert _guarded(preun, "$1 -eq 0", "rm -rf /etc/libvirt/hooks/qemu.d/.vfmigrate-staging")
    assert preun.count("rm ") == 2
    # %postun: restart the listener on upgrade only (new code), nothing on erase.
    assert _guarded(phases["postuninstall"], "$1 -ge 1",
                    "systemctl try-restart vfmigrate-listener.service")
    # %posttrans: after the old files went, enable (prove, copy) the hook; never fail.
    posttrans = phases["posttrans"]
    assert "if ! /usr/bin/vfmigrate hook enable $hint >&2; then" in posttrans
    assert "exit" not in posttrans and "set -e" not in posttrans
    assert "rm -rf /var/lib/rpm-state/vfmigrate\n" in posttrans


@pytest.mark.skipif(not shutil.which("rpmlint", path=SYSTEM_PATH),
                    reason="rpmlint is not installed (Debian package rpmlint; "
                           "tests/install-deps should install it)")
def test_rpm_and_spec_pass_rpmlint_with_only_the_justified_waivers(rpm):
    spec = REPO / build_package("spec")
    rc = REPO / "packaging/rpm/vfmigrate.rpmlintrc"
    selinux = rpm.with_name(f"vfmigrate-selinux-{VERSION}-1.noarch.rpm")
    result = run(["rpmlint", "-r", str(rc), str(spec), str(rpm), str(selinux)], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 packages and 1 specfiles checked; 0 errors, 0 warnings" in result.stdout, \
        result.stdout
    # rpmlint reports a waiver that matched nothing (unused-rpmlintrc-filter): none is stale.
    assert "unused-rpmlintrc-filter" not in result.stdout


def test_rpm_selinux_subpackage_installs_and_removes_the_module(rpm):
    selinux = rpm.with_name(f"vfmigrate-selinux-{VERSION}-1.noarch.rpm")
    module = "/usr/share/selinux/packages/targeted/vfmigrate.cil"
    assert module in run(["rpm", "-qlp", str(selinux)]).stdout.split()
    assert run(["rpm", "-qp", "--qf", "%{VERSION}", str(selinux)]).stdout == VERSION
    # Pulled in by the main package exactly where the targeted policy is installed.
    requires = run(["rpm", "-qpR", str(rpm)]).stdout
    assert f"(vfmigrate-selinux = {VERSION}-1 if selinux-policy-targeted)" in requires
    assert "selinux-policy-targeted" in run(["rpm", "-qpR", str(selinux)]).stdout
    phases = _scriptlets(selinux)
    assert set(phases) == {"postinstall", "postuninstall", "posttrans"}
    assert f"/usr/sbin/semodule -n -s targeted -X 200 -i {module} || :" in \
        phases["postinstall"]
    assert "/usr/sbin/restorecon -RF /var/lib/vfmigrate" in phases["posttrans"]
    # Removed on erase only (an upgrade's %postun has $1 = 1 and keeps it).
    assert phases["postuninstall"].startswith("if [ $1 -eq 0 ] && ")
    assert "/usr/sbin/semodule -n -s targeted -X 200 -r vfmigrate" in phases["postuninstall"]


def test_both_changelogs_are_made_from_CHANGELOG_md(deb, rpm, tmp_path):
    releases = changelog.parse((REPO / "CHANGELOG.md").read_text())
    assert releases[0][0] == VERSION
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    shipped = subprocess.run(["gzip", "-dc", str(tmp_path / "usr/share/doc/vfmigrate/"
                                                 "changelog.gz")],
                             capture_output=True, text=True, check=True).stdout
    assert shipped == changelog.debian(releases)
    told = run(["rpm", "-qp", "--changelog", str(rpm)]).stdout
    assert told.strip() == changelog.rpm(releases).replace("%%", "%").strip()


def test_installed_files_unit_and_state(installed):
    for path in DEB_FILES:
        assert os.path.lexists(path), path
    assert Path("/var/lib/vfmigrate").stat().st_mode & 0o777 == 0o700   # tmpfiles in postinst
    verify = run(["systemd-analyze", "verify", "/lib/systemd/system/vfmigrate-listener.service"])
    assert verify.returncode == 0, verify.stdout + verify.stderr
    said = installed.stdout + installed.stderr   # apt passes dpkg's output through
    assert f"vfmigrate: hook enabled: {HOOK}\n" in said
    assert "vfmigrate: name this host's SR-IOV networks in /etc/vfmigrate/vfmigrate.conf" \
        in said


def test_postinst_enabled_the_hook_as_a_proven_root_copy(installed):
    info = os.lstat(HOOK)
    assert stat.S_ISREG(info.st_mode), "a copy, not a symlink: AppArmor judges a link's target"
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (0, 0, 0o755)
    assert Path(HOOK).read_bytes() == Path(PROGRAM).read_bytes()
    assert os.listdir(os.path.dirname(HOOK)) == ["vfmigrate"]       # no staging left
    proof = run([HOOK, "--self-test"], stdin=subprocess.DEVNULL, timeout=60)
    assert proof.returncode == 0, proof.stdout + proof.stderr
    assert [line.split(":")[0] for line in proof.stdout.splitlines()] == [
        "ok   import", "ok   config", "ok   sysfs", "ok   libvirt state", "ok   ledger",
        "ok   journal"]
    assert "/usr/lib/python3/dist-packages/vfmigrate (Python 3" in proof.stdout
    status = run(["/usr/bin/vfmigrate", "hook", "status"], timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"OK   hook: {HOOK} is installed (a copy) and its self-test passes" in status.stdout


def test_installed_cli_and_hook_run_on_the_system_python(installed, tmp_path):
    version = run(["/usr/bin/vfmigrate", "--version"])
    assert version.stdout == f"vfmigrate {VERSION}\n"
    manual = run(["man", "-P", "cat", "vfmigrate"], timeout=60)
    assert "live migration of libvirt/KVM guests that hold SR-IOV VFs" in manual.stdout
    plain = ("<domain type='qemu'><name>p</name><uuid>0e7d3a56-2f0b-4d71-8a4c-54b2a0f6c001"
             "</uuid><devices/></domain>")
    hook = run(["/etc/libvirt/hooks/qemu.d/vfmigrate", "p", "migrate", "begin", "-"],
               input=plain, timeout=60)
    assert (hook.returncode, hook.stdout, hook.stderr) == (0, "", "")
    status = run(["/usr/bin/vfmigrate", "status", "--json"])   # the shipped config: no networks
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert (report["networks"], report["stray_claims"]) == ([], [])
    assert Path("/var/lib/vfmigrate/ledger.sqlite3").stat().st_mode & 0o777 == 0o600


def test_installed_package_passes_the_end_to_end_tests(installed):
    """The e2e tier again, with the installed hook, listener and CLI on the hosts (on the
    system's libvirt: the installed package on libvirt 11.3 is the lab's versions run)."""
    env = dict(os.environ, VFMIGRATE_E2E_INSTALLED="1", VFMIGRATE_TEST_LIBVIRT="system")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/e2e/test_migration.py", "tests/e2e/test_listener_daemon.py",
         "-k", "under_test or vf_guest_gets or no_free_vf or without_vf or journal_gets "
               "or libvirtd_restart"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    assert re.search(r"\b(\d+) passed\b", result.stdout).group(1) == "10"


def _marked_guest(name: str) -> str:
    """A no-OS guest that the hook does not skip: it names vfmigrate's namespace."""
    from vfmigrate import METADATA_NAMESPACE
    from tests.testbed import no_os_guest_xml

    return no_os_guest_xml(name).replace(
        "<devices>", f"<description>{METADATA_NAMESPACE}</description><devices>", 1)


def test_remove_takes_the_hook_away_first_and_a_left_copy_lets_guests_start(
        installed, deb, testbed_factory):
    """libvirt runs the enabled copy (a broken config makes its start hook refuse);
    removal deletes the system's copy before the Python files; a copy that stayed
    behind (here: the testbed host's own hooks directory) does nothing."""
    [host] = testbed_factory(1).hosts
    enabled = host.run(["/usr/bin/vfmigrate", "hook", "enable"], capture_output=True,
                       text=True, timeout=120)
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    assert "vfmigrate: restart libvirtd once, when no migration is running" in enabled.stdout
    copy = host.hooks_dir / "qemu.d" / "vfmigrate"
    assert copy.read_bytes() == Path(PROGRAM).read_bytes()
    host.restart_libvirtd()
    (host.etc_vfmigrate / "vfmigrate.conf").write_text("[network x]\n")
    definition = host.directory / "g1.xml"
    definition.write_text(_marked_guest("g1"))
    refused = host.virsh("create", str(definition), check=False)
    assert refused.returncode != 0
    assert "vfmigrate: /etc/vfmigrate/vfmigrate.conf:1: pfs: network 'x' names no PFs" in \
        refused.stderr
    removed = run(["apt-get", "remove", "-y", "vfmigrate"], timeout=600)
    assert removed.returncode == 0, removed.stderr
    assert not os.path.lexists(HOOK)
    assert copy.exists()                      # the testbed's copy outlived the package
    host.create_domain(_marked_guest("g2"))   # import fails: the hook does nothing
    assert host.domain_state("g2") == "running"
    host.destroy_all_domains()


def test_remove_keeps_the_ledger_and_purge_leaves_nothing(installed, deb):
    files = {"/" + line.split()[5].lstrip("./") for line in
             run(["dpkg-deb", "-c", str(deb)]).stdout.splitlines()
             if not line.startswith("d")}
    removed = run(["apt-get", "remove", "-y", "vfmigrate"], timeout=600)   # maybe again
    assert removed.returncode == 0, removed.stderr
    assert Path("/var/lib/vfmigrate/ledger.sqlite3").exists()        # kept on remove
    assert Path("/etc/vfmigrate/vfmigrate.conf").exists()            # conffile: kept
    assert not os.path.lexists("/etc/libvirt/hooks/qemu.d/vfmigrate")  # libvirt runs nothing
    assert not Path("/usr/lib/python3/dist-packages/vfmigrate").exists()
    purged = run(["apt-get", "purge", "-y", "vfmigrate"], timeout=600)
    assert purged.returncode == 0, purged.stderr
    left = sorted(path for path in files if os.path.lexists(path))
    assert left == []
    for directory in ("/var/lib/vfmigrate", "/etc/vfmigrate", "/usr/libexec/vfmigrate",
                      "/usr/lib/python3/dist-packages/vfmigrate"):
        assert not os.path.lexists(directory), directory
    assert run(["dpkg-query", "-W", "vfmigrate"]).returncode != 0


def _symlink_package(tmp_path: Path) -> Path:
    """The .deb of the last commit that shipped the hook as a symlink (debian/
    vfmigrate.links), as version 0.0.9 so that installing this tree's is an upgrade."""
    links = "packaging/debian/vfmigrate.links"
    commit = git("rev-list", "-1", "HEAD", "--", links)
    assert commit, f"no commit has {links}"
    if run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}:{links}"]).returncode != 0:
        commit += "^"                          # that commit deleted it: take its parent
    return build_deb_from_history(git("rev-parse", commit), tmp_path, version="0.0.9")


def test_upgrade_from_the_symlink_package_leaves_a_real_file(deb, tmp_path):
    previous = _symlink_package(tmp_path)
    run(["apt-get", "purge", "-y", "vfmigrate"], timeout=600)
    try:
        old = run(["apt-get", "install", "-y", "--no-install-recommends", str(previous)],
                  timeout=600)
        assert old.returncode == 0, old.stdout[-3000:] + old.stderr[-3000:]
        assert os.path.islink(HOOK)
        new = run(["apt-get", "install", "-y", "--no-install-recommends", str(deb)],
                  timeout=600)
        assert new.returncode == 0, new.stdout[-3000:] + new.stderr[-3000:]
        assert "Unpacking vfmigrate (%s) over (0.0.9)" % VERSION in new.stdout
        info = os.lstat(HOOK)
        assert stat.S_ISREG(info.st_mode) and info.st_mode & 0o7777 == 0o755
        assert Path(HOOK).read_bytes() == Path(PROGRAM).read_bytes()
        said = new.stdout + new.stderr
        assert f"vfmigrate: hook enabled: {HOOK}\n" in said
        assert "restart" not in said.split("hook enabled")[1]   # libvirt had a hook
        assert run([HOOK, "--self-test"], stdin=subprocess.DEVNULL,
                   timeout=60).returncode == 0
    finally:
        run(["apt-get", "purge", "-y", "vfmigrate"], timeout=600)
    assert not os.path.lexists(HOOK)
