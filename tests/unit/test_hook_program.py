"""packaging/hook-program: the hook as the packages install it."""

from __future__ import annotations

import subprocess
import sys

from .conftest import HOOK_SOURCE, REPO

PROGRAM = REPO / "packaging" / "hook-program"


def write(*args: str, source: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROGRAM), *args],
                          input=HOOK_SOURCE.read_bytes() if source is None else source,
                          capture_output=True, timeout=30)


def test_the_packaged_hook_starts_without_site_and_names_its_directories():
    result = write("/usr/bin/python3", "/usr/lib/python3.12/site-packages",
                   "/usr/lib64/python3.12/site-packages", "/usr/lib/python3.12/site-packages")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().split("\n")
    source = HOOK_SOURCE.read_text().split("\n")
    assert lines[0] == "#!/usr/bin/python3 -ISB"
    changed = [(old, new) for old, new in zip(source, lines) if old != new]
    assert changed == [
        ("#!/usr/bin/python3 -I", "#!/usr/bin/python3 -ISB"),
        ("sys.path[0:0] = []  # vfmigrate-python-dirs",
         "sys.path[0:0] = ['/usr/lib/python3.12/site-packages', "
         "'/usr/lib64/python3.12/site-packages']  # vfmigrate-python-dirs")]
    assert len(lines) == len(source)


def test_anything_but_the_hook_source_is_refused_with_one_line():
    result = write("/usr/bin/python3", "/x", source=b"#!/bin/sh\necho hi\n")
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr.decode().count("\n") == 1
    assert "is not hooks/qemu" in result.stderr.decode()
    usage = write("python3")
    assert usage.returncode == 2 and usage.stderr.startswith(b"usage: ")
