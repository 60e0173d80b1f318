"""Test tiers and what each cost.

Tiers are the directories under tests/: unit (fake sysfs, real SQLite, the
hook as a real subprocess), later testbed, packaging and lab.  At the end of
a run pytest prints one line per tier with its test count and wall time, and
the figures tests measured (``figures`` fixture; printed, never asserted).
"""

from __future__ import annotations

import os
import subprocess
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
    _tier_seconds[_tier(report.nodeid)] += report.duration
    if report.when == "call":
        _tier_counts[_tier(report.nodeid)] += 1


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
