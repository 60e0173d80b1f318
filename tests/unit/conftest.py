"""A fake vfmigrate host for unit tests: fake sysfs, config, run dir, ledger.

Everything is real but the hardware: the hook runs its real code (in process
or as a real subprocess, exactly as libvirt runs it), against a real SQLite
ledger, reading a sysfs tree shaped like real cards under ``tmp_path``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakesysfs import CONNECTX5, E810, FakeSysfs
import vfmigrate
from vfmigrate import config as configuration
from vfmigrate import hook
from vfmigrate.ledger import Ledger

REPO = Path(__file__).resolve().parents[2]
HOOK_SOURCE = REPO / "hooks" / "qemu"
PACKAGE_PARENT = Path(vfmigrate.__file__).resolve().parents[1]
MINIMAL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class HookResult:
    code: int
    stdout: bytes
    stderr: str


class FakeHost:
    """One host: two networks by default (E810 with 8 VFs, ConnectX-5 with 4)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sysfs = FakeSysfs(root / "sys")
        self.run_dir = root / "run" / "libvirt" / "qemu"
        self.run_dir.mkdir(parents=True)
        self.state_dir = root / "state"
        self.config_path = root / "etc" / "vfmigrate.conf"
        self.config_path.parent.mkdir(parents=True)
        self.physnet1_vfs = self.sysfs.add_pf(E810, "0000:3b:00.0", "ens1f0", 8, vfio_vfs=4)
        self.physnet2_vfs = self.sysfs.add_pf(CONNECTX5, "0000:af:00.0", "enp175s0f0", 4)
        self.write_config()
        self._hook_executable: Path | None = None

    def write_config(self, networks: dict[str, str] | None = None, **settings: object) -> None:
        if networks is None:
            networks = {"physnet1": "ens1f0", "physnet2": "0000:af:00.0"}
        lines = ["[vfmigrate]", f"state_dir = {self.state_dir}",
                 f"sysfs_root = {self.sysfs.root}", f"libvirt_run_dir = {self.run_dir}"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        for name, pfs in networks.items():
            lines += ["", f"[network {name}]", f"pfs = {pfs}"]
        self.config_path.write_text("\n".join(lines) + "\n")

    def config(self) -> configuration.Config:
        return configuration.load(self.config_path)

    def ledger(self) -> Ledger:
        return Ledger(self.state_dir / "ledger.sqlite3", lock_timeout=5)

    def live_claims(self) -> list:
        with self.ledger() as ledger:
            return ledger.live_claims()

    def hook(self, operation: str, xml: bytes, *, domain: str = "guest",
             sub_operation: str | None = None, extra: str = "-", **kwargs) -> HookResult:
        """Run the hook in this process through ``vfmigrate.hook.main``."""
        sub_operation = sub_operation or ("end" if operation in ("stopped", "release")
                                          else "begin")
        stdout, stderr = io.BytesIO(), io.StringIO()
        code = hook.main(["vfmigrate", domain, operation, sub_operation, extra],
                         io.BytesIO(xml), stdout, stderr=stderr,
                         environ={"VFMIGRATE_CONFIG": str(self.config_path)},
                         journal_socket=self.root / "no-journal", **kwargs)
        return HookResult(code, stdout.getvalue(), stderr.getvalue())

    def hook_executable(self) -> Path:
        """hooks/qemu with this interpreter in its #! line and the package under test
        first on its path (``-I`` ignores PYTHONPATH, which pybuild's tests use)."""
        if self._hook_executable is None:
            text = HOOK_SOURCE.read_text().split("\n", 1)[1]
            target = self.root / "hooks" / "qemu.d" / "vfmigrate"
            target.parent.mkdir(parents=True)
            target.write_text(f"#!{sys.executable} -I\nimport sys\n"
                              f"sys.path.insert(0, {str(PACKAGE_PARENT)!r})\n{text}")
            target.chmod(0o755)
            self._hook_executable = target
        return self._hook_executable

    def hook_argv(self, operation: str, domain: str = "guest") -> list[str]:
        sub_operation = "end" if operation in ("stopped", "release") else "begin"
        return [str(self.hook_executable()), domain, operation, sub_operation, "-"]

    def hook_env(self) -> dict[str, str]:
        """The environment libvirt gives hooks, plus the test's config path."""
        return {"LC_ALL": "C", "PATH": MINIMAL_PATH, "HOME": "/root",
                "VFMIGRATE_CONFIG": str(self.config_path)}

    def hook_process(self, operation: str, xml: bytes, *, domain: str = "guest",
                     timeout: float = 60) -> HookResult:
        """Run the installed hook as a real subprocess, the way libvirt does."""
        result = subprocess.run(self.hook_argv(operation, domain), input=xml,
                                capture_output=True, env=self.hook_env(), timeout=timeout)
        return HookResult(result.returncode, result.stdout, result.stderr.decode())

    def add_running_guest(self, xml: bytes, name: str) -> None:
        """Write a libvirt status file, as libvirt does for a running guest."""
        body = xml.decode().replace("<?xml version=\"1.0\"?>", "")
        status = (f"<domstatus state='running' reason='booted' pid='4242'>\n"
                  f"  <monitor path='/run/libvirt/qemu/{name}.monitor' type='unix'/>\n"
                  f"{body}</domstatus>\n")
        (self.run_dir / f"{name}.xml").write_text(status)

    def remove_running_guest(self, name: str) -> None:
        (self.run_dir / f"{name}.xml").unlink()


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path / "host")
