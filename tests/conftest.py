"""Test tiers and what each cost.

Tiers are the directories under tests/: unit (fake sysfs, real SQLite, the
hook as a real subprocess), later testbed, packaging and lab.  At the end of
a run pytest prints one line per tier with its test count and wall time, and
the figures tests measured (``figures`` fixture; printed, never asserted).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

_TESTS = Path(__file__).parent
REPO = _TESTS.parent
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def build_package(kind: str) -> Path:
    """``packaging/build deb|rpm`` from this tree; the package's path."""
    env = dict(os.environ, PATH=SYSTEM_PATH)
    result = subprocess.run([str(REPO / "packaging/build"), kind], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    path = REPO / result.stdout.strip().splitlines()[-1]
    assert path.is_file()
    return path


@pytest.fixture(scope="session")
def built_deb() -> Path:
    """The .deb of this tree, built once per test session (packaging and lab tiers)."""
    return build_package("deb")


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def last_commit_of(version: str, following: str) -> str:
    """The last commit that shipped ``version``: the parent of the one that gave
    CHANGELOG.md the heading of the ``following`` release (HEAD while that is not
    committed yet)."""
    added = git("log", "--reverse", "--format=%H", "-S", f"## {following} (", "--",
                "CHANGELOG.md").split()
    commit = git("rev-parse", f"{added[0]}^" if added else "HEAD")
    assert f'__version__ = "{version}"' in git("show", f"{commit}:vfmigrate/__init__.py"), \
        f"commit {commit} is not vfmigrate {version} (a shallow clone?)"
    return commit


def build_deb_from_history(commit: str, workdir: Path, *, version: str | None = None) -> Path:
    """``packaging/build deb`` of the tree of ``commit`` (its unit tests skipped), with
    ``__version__`` replaced by ``version`` if given; the package's path."""
    tree = workdir / f"tree-{commit[:12]}"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    if version is not None:
        init = tree / "vfmigrate/__init__.py"
        init.write_text(re.sub(r'__version__ = ".*"', f'__version__ = "{version}"',
                               init.read_text()))
    for argv in (["git", "init", "-q"], ["git", "add", "-A"]):   # packaging/build lists files
        subprocess.run(argv, cwd=tree, check=True, capture_output=True)
    env = dict(os.environ, PATH=SYSTEM_PATH, DEB_BUILD_OPTIONS="nocheck")
    built = subprocess.run(["packaging/build", "deb"], cwd=tree, env=env, capture_output=True,
                           text=True, timeout=900)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return tree / built.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def previous_release(tmp_path_factory) -> tuple[str, Path]:
    """The release before this tree's (CHANGELOG.md's second heading) and its .deb,
    built from the last commit that shipped it."""
    sys.path.insert(0, str(REPO / "packaging"))
    import changelog   # packaging/changelog.py

    releases = changelog.parse((REPO / "CHANGELOG.md").read_text())
    current, version = releases[0][0], releases[1][0]
    return version, build_deb_from_history(last_commit_of(version, current),
                                           tmp_path_factory.mktemp("previous-release"))


_figures: dict[str, str] = {}


@pytest.fixture(scope="session")
def figures() -> dict[str, str]:
    """What tests measured, by name: printed at the end of the run, not asserted."""
    return _figures


_tier_seconds: dict[str, float] = defaultdict(float)
_tier_counts: dict[str, int] = defaultdict(int)


def _tier(nodeid: str) -> str:
    parts = Path(nodeid.split("::")[0]).parts
    return parts[1] if len(parts) > 2 and parts[0] == "tests" else "other"


def pytest_runtest_logreport(report) -> None:
    tier = _tier(report.nodeid)
    libvirt = dict(report.user_properties).get("libvirt")
    if libvirt:
        tier = f"{tier} ({libvirt})"
    _tier_seconds[tier] += report.duration
    if report.when == "call":
        _tier_counts[tier] += 1


def pytest_terminal_summary(terminalreporter) -> None:
    if _figures:
        terminalreporter.section("figures")
        for what, value in _figures.items():
            terminalreporter.write_line(f"{what}: {value}")
    if not _tier_seconds:
        return
    terminalreporter.section("cost per tier")
    for tier in sorted(_tier_seconds, key=_tier_seconds.get, reverse=True):
        terminalreporter.write_line(f"tier {tier}: {_tier_counts[tier]} tests, "
                                    f"{_tier_seconds[tier]:.1f} s")
