"""CHANGELOG.md is the one changelog; packaging/changelog.py makes debian/changelog
and the spec's %changelog from it (the packaging tier checks the built packages)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import vfmigrate

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("changelog", REPO / "packaging/changelog.py")
changelog = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(changelog)


def _run(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "packaging/changelog.py"), *argv],
                          input=stdin, capture_output=True, text=True, timeout=30)


def test_the_newest_release_is_the_packages_version():
    releases = changelog.parse((REPO / "CHANGELOG.md").read_text())
    assert releases[0][0] == vfmigrate.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", vfmigrate.__version__)   # semantic
    assert _run("version").stdout == vfmigrate.__version__ + "\n"


@pytest.mark.skipif(not shutil.which("dpkg-parsechangelog"), reason="needs dpkg-dev")
def test_debian_changelog_parses_with_dpkg(tmp_path):
    made = _run("debian")
    assert made.returncode == 0, made.stderr
    path = tmp_path / "changelog"
    path.write_text(made.stdout)
    fields = subprocess.run(["dpkg-parsechangelog", "-l", str(path)], capture_output=True,
                            text=True, check=True).stdout
    assert f"Version: {vfmigrate.__version__}\n" in fields
    assert "Source: vfmigrate\n" in fields
    releases = changelog.parse((REPO / "CHANGELOG.md").read_text())
    assert f"Date: {releases[0][1].strftime('%a, %d %b %Y')} 12:00:00 +0000\n" in fields
    every = subprocess.run(["dpkg-parsechangelog", "-l", str(path), "--all", "--format",
                            "rfc822"], capture_output=True, text=True, check=True).stdout
    assert re.findall(r"^Version: (.*)$", every, re.M) == [v for v, _, _ in releases]
    entries = [line for line in made.stdout.splitlines() if line.startswith("  ")]
    assert max(len(line) for line in entries) <= 80   # lintian: debian-changelog-line-too-long


def test_rpm_changelog_lines_and_escaped_percent():
    text = ("## 1.2.0 (2026-12-01)\n\n- the rpm %posttrans enables\n  the hook\n\n"
            "## 1.1.0 (2026-11-02)\n\n- first\n")
    body = changelog.rpm(changelog.parse(text))
    assert body == ("* Tue Dec 01 2026 vfmigrate developers <dev@vfmigrate.invalid> - 1.2.0-1\n"
                    "- the rpm %%posttrans enables the hook\n\n"
                    "* Mon Nov 02 2026 vfmigrate developers <dev@vfmigrate.invalid> - 1.1.0-1\n"
                    "- first\n")


@pytest.mark.parametrize("text, said", [
    ("prose only\n", "no release heading"),
    ("## 1.0 (2026-11-30)\n- x\n", "want '## MAJOR.MINOR.PATCH (YYYY-MM-DD)'"),
    ("## 1.0.0 (2026-02-30)\n- x\n", "day is out of range"),
    ("## 1.0.0 (2026-11-30)\n\n## 0.9.0 (2026-11-01)\n- x\n", "release 1.0.0 has no entries"),
    ("## 0.9.0 (2026-11-30)\n- x\n## 1.0.0 (2026-11-01)\n- y\n", "newest release first"),
    ("## 1.0.0 (2026-11-01)\n- x\n## 0.9.0 (2026-11-30)\n- y\n", "dated after 1.0.0"),
    ("## 1.0.0 (2026-11-01)\nloose text\n", "CHANGELOG.md:2: want an entry"),
])
def test_a_malformed_changelog_is_one_line_naming_file_and_line(tmp_path, text, said):
    path = tmp_path / "CHANGELOG.md"
    path.write_text(text)
    result = _run("debian", str(path))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and said in result.stderr, result.stderr
    assert result.stderr.startswith(f"packaging/changelog.py: {path}")
