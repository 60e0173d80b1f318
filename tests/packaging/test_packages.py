"""Packaging tier: build the .deb and .rpm, lint and list them, install the .deb
on this machine, run the installed hook, listener and CLI through real libvirtd
hosts, then remove and purge it.

Installs system-wide (root; CI's machine is disposable): the module fixture
purges the package again whatever happens.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import build_package

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
VERSION = re.search(r'__version__ = "(.*)"', (REPO / "vfmigrate/__init__.py").read_text()).group(1)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="installs packages: needs root")

# Where every file lands (the .rpm's Python directory is the build host's sitelib).
DEB_FILES = {
    "/etc/libvirt/hooks/qemu.d/vfmigrate",
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
    "/etc/libvirt/hooks/qemu.d",
    "/etc/libvirt/hooks/qemu.d/vfmigrate",
    "/etc/vfmigrate/vfmigrate.conf",
    "/usr/bin/vfmigrate",
    "/usr/lib/systemd/catalog/vfmigrate.catalog",
    "/usr/lib/systemd/system/vfmigrate-listener.service",
    "/usr/lib/tmpfiles.d/vfmigrate.conf",
    "/usr/libexec/vfmigrate/qemu-hook",
    "/usr/libexec/vfmigrate/vfmigrate-listener",
    "/usr/share/man/man8/vfmigrate.8",
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
    link = next(line for line in listing.splitlines() if "qemu.d/vfmigrate" in line)
    assert link.startswith("l") and link.endswith("-> /usr/libexec/vfmigrate/qemu-hook")
    fields = run(["dpkg-deb", "-f", str(deb), "Depends", "Version"]).stdout
    for dependency in ("libvirt-daemon (>= 6.5)", "python3-libvirt", "python3-pyudev",
                       "python3-systemd", "python3-pyroute2"):
        assert dependency in fields
    assert f"Version: {VERSION}" in fields


def test_rpm_files_land_where_expected(rpm):
    listing = set(run(["rpm", "-qlp", str(rpm)]).stdout.split())
    assert RPM_FILES <= listing, sorted(RPM_FILES - listing)
    sitelib = next(path for path in listing if path.endswith("/vfmigrate/hook.py"))
    assert re.fullmatch(r"/usr/lib/python3\.\d+/site-packages/vfmigrate/hook\.py", sitelib)
    requires = run(["rpm", "-qpR", str(rpm)]).stdout
    for dependency in ("libvirt-daemon >= 6.5", "python3-libvirt", "python3-pyudev",
                       "python3-systemd", "python3-pyroute2"):
        assert dependency in requires
    scripts = run(["rpm", "-qp", "--scripts", str(rpm)]).stdout
    assert "preset vfmigrate-listener.service" in scripts
    assert "disable --now vfmigrate-listener.service" in scripts
    assert "try-restart vfmigrate-listener.service" in scripts
    config = run(["rpm", "-qpc", str(rpm)]).stdout.split()
    assert config == ["/etc/vfmigrate/vfmigrate.conf"]
    assert run(["rpm", "-qp", "--qf", "%{VERSION}", str(rpm)]).stdout == VERSION


def test_installed_files_unit_and_state(installed):
    for path in DEB_FILES:
        assert os.path.lexists(path), path
    assert os.path.realpath("/etc/libvirt/hooks/qemu.d/vfmigrate") == \
        "/usr/libexec/vfmigrate/qemu-hook"
    assert Path("/var/lib/vfmigrate").stat().st_mode & 0o777 == 0o700   # tmpfiles in postinst
    verify = run(["systemd-analyze", "verify", "/lib/systemd/system/vfmigrate-listener.service"])
    assert verify.returncode == 0, verify.stdout + verify.stderr
    said = installed.stdout + installed.stderr   # apt passes dpkg's output through
    assert "restart the libvirtd (or\n  virtqemud) service once" in said


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
    assert (status.returncode, status.stdout) == (0, '{\n  "networks": [],\n  "stray_claims": []\n}\n')
    assert Path("/var/lib/vfmigrate/ledger.sqlite3").stat().st_mode & 0o777 == 0o600


def test_installed_package_passes_the_end_to_end_tests(installed):
    """The e2e tier again, with the installed hook, listener and CLI on the hosts."""
    env = dict(os.environ, VFMIGRATE_E2E_INSTALLED="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/e2e/test_migration.py", "tests/e2e/test_listener_daemon.py",
         "-k", "under_test or vf_guest_gets or no_free_vf or without_vf or journal_gets "
               "or libvirtd_restart"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    assert re.search(r"\b(\d+) passed\b", result.stdout).group(1) == "10"


def test_remove_keeps_the_ledger_and_purge_leaves_nothing(installed, deb):
    files = {"/" + line.split()[5].lstrip("./") for line in
             run(["dpkg-deb", "-c", str(deb)]).stdout.splitlines()
             if not line.startswith("d")}
    removed = run(["apt-get", "remove", "-y", "vfmigrate"], timeout=600)
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
