#!/usr/bin/python3
"""Make the packages' changelogs from CHANGELOG.md, vfmigrate's only changelog.

    packaging/changelog.py debian  [CHANGELOG.md]   -> debian/changelog on stdout
    packaging/changelog.py rpm     [CHANGELOG.md]   -> the spec's %changelog body
    packaging/changelog.py version [CHANGELOG.md]   -> the newest release's version

CHANGELOG.md: newest release first, each a heading ``## VERSION (YYYY-MM-DD)``
followed by entries ``- text`` whose further lines are indented by two spaces;
anything before the first heading is prose and ignored.  A malformed file is
exit 1 with one line naming the file and line.  Standard library only: it runs
in both distributions' package builds.
"""

from __future__ import annotations

import datetime
import re
import sys
import textwrap
from pathlib import Path

MAINTAINER = "vfmigrate developers <dev@vfmigrate.invalid>"
DISTRIBUTION = "unstable"
RPM_RELEASE = "1"   # the spec's Release: (its %{?dist} is not part of the changelog)
HEADING = re.compile(r"## (?P<version>\d+\.\d+\.\d+) \((?P<date>\d{4}-\d\d-\d\d)\)")


class ChangelogError(Exception):
    pass


def parse(text: str, name: str = "CHANGELOG.md") -> list[tuple[str, datetime.date, list[str]]]:
    """[(version, date, [entry, ...]), ...], newest first, checked for order."""
    releases: list[tuple[str, datetime.date, list[str]]] = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{name}:{number}"
        if line.startswith("## "):
            match = HEADING.fullmatch(line.rstrip())
            if not match:
                raise ChangelogError(f"{where}: want '## MAJOR.MINOR.PATCH (YYYY-MM-DD)', "
                                     f"got {line!r}")
            try:
                date = datetime.date.fromisoformat(match["date"])
            except ValueError as error:
                raise ChangelogError(f"{where}: {error}") from None
            version = match["version"]
            if releases:
                newer, newer_date, entries = releases[-1]
                if not entries:
                    raise ChangelogError(f"{where}: release {newer} has no entries")
                if _key(version) >= _key(newer):
                    raise ChangelogError(f"{where}: {version} is listed below {newer}: "
                                         "newest release first")
                if date > newer_date:
                    raise ChangelogError(f"{where}: {version} is dated after {newer}")
            releases.append((version, date, []))
        elif not releases or not line.strip():
            continue
        elif line.startswith("- "):
            releases[-1][2].append(line[2:].strip())
        elif line.startswith("  ") and releases[-1][2]:
            releases[-1][2][-1] += " " + line.strip()
        else:
            raise ChangelogError(f"{where}: want an entry '- text' or its continuation "
                                 f"indented by two spaces, got {line!r}")
    if not releases:
        raise ChangelogError(f"{name}: no release heading '## MAJOR.MINOR.PATCH (YYYY-MM-DD)'")
    if not releases[-1][2]:
        raise ChangelogError(f"{name}: release {releases[-1][0]} has no entries")
    return releases


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _noon(date: datetime.date) -> datetime.datetime:
    # The file has dates, the formats want times: noon UTC, the same on every build.
    return datetime.datetime.combine(date, datetime.time(12), datetime.timezone.utc)


def _wrap(entry: str, first: str, rest: str) -> list[str]:
    return textwrap.wrap(entry, width=78, initial_indent=first, subsequent_indent=rest,
                         break_long_words=False, break_on_hyphens=False)


def debian(releases) -> str:
    """debian/changelog (dpkg-parsechangelog, Debian Policy 4.4)."""
    blocks = []
    for version, date, entries in releases:
        lines = [f"vfmigrate ({version}) {DISTRIBUTION}; urgency=medium", ""]
        for entry in entries:
            lines += _wrap(entry, "  * ", "    ")
        stamp = _noon(date).strftime("%a, %d %b %Y %H:%M:%S +0000")
        lines += ["", f" -- {MAINTAINER}  {stamp}"]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def rpm(releases) -> str:
    """The %changelog body: '* Day Mon DD YYYY name <mail> - VERSION-RELEASE'."""
    blocks = []
    for version, date, entries in releases:
        lines = [f"* {_noon(date).strftime('%a %b %d %Y')} {MAINTAINER} - {version}-{RPM_RELEASE}"]
        for entry in entries:
            # rpm expands macros in %changelog: '%%' is a literal '%'.
            lines += [line.replace("%", "%%") for line in _wrap(entry, "- ", "  ")]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or argv[0] not in ("debian", "rpm", "version"):
        sys.stderr.write("usage: packaging/changelog.py debian|rpm|version [CHANGELOG.md]\n")
        return 2
    path = Path(argv[1]) if len(argv) == 2 else Path(__file__).resolve().parents[1] / "CHANGELOG.md"
    try:
        releases = parse(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError, ChangelogError) as error:
        sys.stderr.write(f"packaging/changelog.py: {error}\n")
        return 1
    if argv[0] == "version":
        sys.stdout.write(releases[0][0] + "\n")
    else:
        sys.stdout.write(debian(releases) if argv[0] == "debian" else rpm(releases))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
