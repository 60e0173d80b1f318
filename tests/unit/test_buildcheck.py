"""A hook started while its package is being replaced runs one build whole, or refuses
an incoming VF guest cleanly (issue 17; vfmigrate/buildcheck.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

from vfmigrate import __version__, buildcheck, domxml

from .conftest import HOOK_SOURCE, PACKAGE_PARENT, REPO
from .domains import plain_guest, teaming_guest

SOURCE_VF = "0000:5e:02.3"


def stamped_package(tmp_path):
    """A copy of the package as packaging/build ships it (with _build.py) and a hook
    program that imports it, the way libvirt runs the installed hook."""
    root = tmp_path / "installed"
    shutil.copytree(PACKAGE_PARENT / "vfmigrate", root / "vfmigrate",
                    ignore=shutil.ignore_patterns("__pycache__", "_build.py"))
    subprocess.run([str(REPO / "packaging" / "stamp-build"), str(root)], check=True)
    hook = tmp_path / "qemu-hook"
    body = HOOK_SOURCE.read_text().split("\n", 1)[1]
    hook.write_text(f"#!{sys.executable} -I\nimport sys\nsys.path.insert(0, {str(root)!r})\n"
                    f"{body}")
    hook.chmod(0o755)
    return root / "vfmigrate", hook


def run(host, hook, operation: str, xml: bytes):
    sub_operation = "end" if operation in ("stopped", "release") else "begin"
    started = time.monotonic()
    result = subprocess.run([str(hook), "web1", operation, sub_operation, "-"], input=xml,
                            capture_output=True, env=host.hook_env(), timeout=60)
    return result, time.monotonic() - started


def test_a_whole_build_runs_as_usual(host, tmp_path):
    package, hook = stamped_package(tmp_path)
    assert "'hook.py': " in (package / "_build.py").read_text()
    result, _ = run(host, hook, "migrate", teaming_guest("web1", [SOURCE_VF],
                                                         networks=["physnet1"]))
    assert result.returncode == 0, result.stderr
    assert b"being replaced" not in result.stderr   # (its log line goes to stderr here)
    assert [str(d.address) for d in domxml.parse(result.stdout).devices] == \
        [str(host.physnet1_vfs[0])]


def test_a_half_replaced_package_starts_the_hook_once_more_then_refuses(host, tmp_path):
    package, hook = stamped_package(tmp_path)
    with open(package / "ledger.py", "a") as replaced:   # the new version's file
        replaced.write("# 0.3.0\n")
    xml = teaming_guest("web1", [SOURCE_VF], networks=["physnet1"])
    result, seconds = run(host, hook, "migrate", xml)
    assert seconds >= buildcheck.SETTLE_SECONDS   # it waited and started itself again
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr.decode() == (
        "vfmigrate: the vfmigrate package is being replaced or is broken (ledger.py is not "
        f"the one of vfmigrate {__version__}); the guest stays where it is: migrate it again "
        "once the package manager has finished, or reinstall vfmigrate\n")
    assert host.live_claims() == []
    # A start is let through (libvirt would fail the guest's start otherwise).
    result, _ = run(host, hook, "prepare", xml)
    assert result.returncode == 0 and b"vfmigrate did nothing" in result.stderr
    (package / "ledger.py").unlink()
    result, _ = run(host, hook, "migrate", xml)
    assert b"(ledger.py is missing)" in result.stderr and result.returncode == 1


def test_a_guest_without_vfs_never_looks_at_the_package(host, tmp_path):
    """The no-VF path imports nothing that could be half-replaced."""
    package, hook = stamped_package(tmp_path)
    for module in package.glob("*.py"):
        if module.name not in ("__init__.py", "hook.py"):
            module.write_text("raise SystemExit('half installed')\n")
    result, seconds = run(host, hook, "prepare", plain_guest("web1"))
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert seconds < buildcheck.SETTLE_SECONDS


def test_a_file_replaced_after_the_check_counts_even_with_the_same_content(tmp_path):
    """After its imports the hook looks only at whether a file was replaced since the
    check read it (dpkg and rpm rename new files over old ones): a replaced file fails
    the check whatever it holds."""
    package, _ = stamped_package(tmp_path)
    script = ("import os, shutil, sys\n"
              "sys.path.insert(0, os.path.dirname(sys.argv[1]))\n"
              "from vfmigrate import buildcheck\n"
              "seen = {}\n"
              "print(buildcheck.mismatch(seen=seen), len(seen))\n"
              "print(buildcheck.changed_since(seen))\n"
              "path = os.path.join(sys.argv[1], 'ledger.py')\n"
              "shutil.copy2(path, path + '.new')\n"
              "os.replace(path + '.new', path)\n"
              "print(buildcheck.changed_since(seen))\n")
    result = subprocess.run([sys.executable, "-I", "-c", script, str(package)],
                            capture_output=True, text=True, check=True)
    files = len(list(package.glob("*.py"))) - 1   # all but _build.py
    assert result.stdout.splitlines() == [
        f"None {files}", "None", "ledger.py was replaced while the hook loaded it"]
