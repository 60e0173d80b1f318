"""The unit, tmpfiles and catalog files, checked by systemd's own tools."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vfmigrate.events import Event

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "systemd"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    # The installed unit runs /usr/libexec/vfmigrate/vfmigrate-listener; verify a copy
    # pointing at the checkout's executable (the package tier verifies the installed one).
    unit = (SYSTEMD / "vfmigrate-listener.service").read_text()
    assert "ExecStart=/usr/libexec/vfmigrate/vfmigrate-listener\n" in unit
    copy = tmp_path / "vfmigrate-listener.service"
    copy.write_text(unit.replace("/usr/libexec/vfmigrate/vfmigrate-listener",
                                 str(REPO / "listener" / "vfmigrate-listener")))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""


def test_unit_is_notify_hardened_and_ordered():
    unit = (SYSTEMD / "vfmigrate-listener.service").read_text()
    for line in ("Type=notify", "Restart=on-failure", "ProtectSystem=strict",
                 "ReadWritePaths=/var/lib/vfmigrate", "NoNewPrivileges=yes", "PrivateTmp=yes",
                 "CapabilityBoundingSet=CAP_NET_ADMIN", "WatchdogSec=60s",
                 "After=libvirtd.service virtqemud.service network.target",
                 "Documentation=man:vfmigrate(8)"):
        assert f"\n{line}\n" in unit, line


@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None, reason="needs systemd-tmpfiles")
def test_tmpfiles_creates_a_root_only_state_dir(tmp_path):
    result = subprocess.run(["systemd-tmpfiles", "--create", f"--root={tmp_path}",
                             str(SYSTEMD / "vfmigrate.tmpfiles")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    state = tmp_path / "var/lib/vfmigrate"
    assert state.is_dir() and state.stat().st_mode & 0o777 == 0o700


def test_catalog_explains_every_message_id(tmp_path):
    text = (SYSTEMD / "vfmigrate.catalog").read_text()
    ids = re.findall(r"^-- ([0-9a-f]{32})$", text, flags=re.M)
    assert sorted(ids) == sorted(event.message_id for event in Event)
    catalog_dir = tmp_path / "usr/lib/systemd/catalog"
    catalog_dir.mkdir(parents=True)
    shutil.copy(SYSTEMD / "vfmigrate.catalog", catalog_dir / "vfmigrate.catalog")
    result = subprocess.run(["journalctl", f"--root={tmp_path}", "--update-catalog"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    listed = subprocess.run(["journalctl", f"--root={tmp_path}", "--list-catalog"],
                            capture_output=True, text=True).stdout
    assert f"{Event.RESERVED.message_id} vfmigrate: VF @VFMIGRATE_VF@ reserved" in listed
