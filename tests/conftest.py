"""Test tiers and what each cost.

Tiers are the directories under tests/: unit (fake sysfs, real SQLite, the
hook as a real subprocess), later testbed, packaging and lab.  At the end of
a run pytest prints one line per tier with its test count and wall time.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

_TESTS = Path(__file__).parent
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
    if not _tier_seconds:
        return
    terminalreporter.section("cost per tier")
    for tier in sorted(_tier_seconds, key=_tier_seconds.get, reverse=True):
        terminalreporter.write_line(f"tier {tier}: {_tier_counts[tier]} tests, "
                                    f"{_tier_seconds[tier]:.1f} s")
