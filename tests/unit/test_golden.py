"""Whole-document comparisons of the hook's rewrite (virt-manager's diff_compare).

Set VFMIGRATE_REGENERATE_GOLDEN=1 to rewrite the ``*.out.xml`` files from the
current output; review the diff before committing them.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"

# (case, networks of the destination host)
CASES = [
    ("teaming-two-vfs", None),
    ("hostdev-teaming", {"physnet1": "ens1f0"}),
    ("no-vf", None),
    ("network-pool", None),
    ("metadata-prefix-detached", None),
]


def diff_compare(actual: bytes, expected_path: Path) -> None:
    if os.environ.get("VFMIGRATE_REGENERATE_GOLDEN"):
        expected_path.write_bytes(actual)
    expected = expected_path.read_bytes()
    if actual != expected:
        diff = "".join(difflib.unified_diff(
            expected.decode().splitlines(True), actual.decode().splitlines(True),
            fromfile=str(expected_path), tofile="hook output"))
        pytest.fail(f"output differs from {expected_path.name}:\n{diff}")


@pytest.mark.parametrize("case, networks", CASES, ids=[case for case, _ in CASES])
def test_migrate_output_matches_golden_file(host, case, networks):
    if networks is not None:
        host.write_config(networks)
    source = (GOLDEN / f"{case}.in.xml").read_bytes()
    result = host.hook("migrate", source)
    assert result.code == 0, result.stderr
    # Empty output means "unchanged" to libvirt: compare what libvirt will use.
    diff_compare(result.stdout or source, GOLDEN / f"{case}.out.xml")


def test_golden_outputs_differ_from_inputs_only_in_host_addresses():
    """A second guard independent of the golden files themselves."""
    for case, _ in CASES:
        before = (GOLDEN / f"{case}.in.xml").read_text().splitlines()
        after = (GOLDEN / f"{case}.out.xml").read_text().splitlines()
        assert len(before) == len(after), case
        for old, new in zip(before, after):
            assert _without_addresses(old) == _without_addresses(new), (case, old, new)


def _without_addresses(line: str) -> str:
    return re.sub(r"""\s(address|domain|bus|slot|function|replug)=(['"])[^'"]*\2""", "", line)
