"""The installed hook run as a real subprocess, as libvirt runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

from vfmigrate import domxml

from .domains import plain_guest, teaming_guest

SOURCE_VF = "0000:5e:02.3"


def test_hook_executable_runs_like_libvirt_runs_it(host):
    xml = teaming_guest("web1", [SOURCE_VF], networks=["physnet1"])
    result = host.hook_process("migrate", xml, domain="web1")
    assert result.code == 0, result.stderr
    [device] = domxml.parse(result.stdout).devices
    assert str(device.address) == str(host.physnet1_vfs[0])
    for operation in ("prepare", "start", "started"):
        assert host.hook_process(operation, result.stdout, domain="web1").code == 0
    assert [c.state for c in host.live_claims()] == ["active"]
    assert host.hook_process("release", result.stdout, domain="web1").code == 0
    assert host.live_claims() == []


def test_each_hook_call_closes_the_ledger_before_it_exits(host):
    """The hook exits without the interpreter's teardown (vfmigrate.hook.run), so nothing
    would close the ledger for it: the call closes it itself.  The last connection to
    close checkpoints SQLite's write-ahead log and removes it; one left open would leave
    the log for the next call to recover, and a crash before a checkpoint to undo."""
    wal = host.state_dir / "ledger.sqlite3-wal"
    result = host.hook_process("migrate", teaming_guest("web1", [SOURCE_VF],
                                                        networks=["physnet1"]), domain="web1")
    assert result.code == 0, result.stderr
    assert not wal.exists()
    for operation in ("prepare", "start", "started"):
        assert host.hook_process(operation, result.stdout, domain="web1").code == 0
        assert not wal.exists(), operation
    assert [c.state for c in host.live_claims()] == ["active"]


def test_hook_process_without_vf_prints_nothing_even_unconfigured(host):
    host.config_path.unlink()
    result = host.hook_process("migrate", plain_guest("plain"))
    assert (result.code, result.stdout, result.stderr) == (0, b"", "")


def test_hook_process_refusal_is_one_stderr_line(host):
    xml = teaming_guest("web1", [SOURCE_VF] * 5, networks=["physnet2"] * 5)
    result = host.hook_process("migrate", xml, domain="web1")
    assert result.code == 1
    assert result.stdout == b""
    assert result.stderr == ("vfmigrate: no free VF in network 'physnet2' on this host "
                             "(4 VFs, 4 already given to this guest's other devices)\n")
    assert host.live_claims() == []


def test_state_files_are_root_only(host):
    host.hook_process("migrate", teaming_guest("web1", [SOURCE_VF], networks=["physnet1"]))
    assert host.state_dir.stat().st_mode & 0o777 == 0o700
    for path in host.state_dir.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_64_concurrent_migrations_share_8_vfs_exactly(host):
    """64 hook processes at once: exactly 8 win, no VF twice, the rest refused cleanly."""
    host.write_config({"physnet1": "ens1f0"}, lock_timeout=60)
    guests = [teaming_guest(f"g{index:02d}", [SOURCE_VF]) for index in range(64)]
    argv = host.hook_argv("migrate")
    env = host.hook_env()

    def migrate(xml: bytes) -> subprocess.CompletedProcess:
        return subprocess.run(argv, input=xml, capture_output=True, env=env, timeout=120)

    with ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(migrate, guests))
    winners = [r for r in results if r.returncode == 0]
    losers = [r for r in results if r.returncode != 0]
    assert len(winners) == 8
    chosen = [str(domxml.parse(r.stdout).devices[0].address) for r in winners]
    assert sorted(chosen) == sorted(str(vf) for vf in host.physnet1_vfs)
    for loser in losers:
        assert loser.returncode == 1
        assert loser.stdout == b""
        assert loser.stderr == (b"vfmigrate: no free VF in network 'physnet1' on this host "
                                b"(8 VFs, 8 claimed or in use)\n")
    claims = host.live_claims()
    assert len(claims) == 8
    assert len({c.vf for c in claims}) == 8
    assert {c.domain_name for c in claims} == {domxml.parse(r.stdout).name for r in winners}


def test_self_test_proves_what_the_hook_needs(host):
    result = subprocess.run([str(host.hook_executable()), "--self-test"], capture_output=True,
                            text=True, env=host.hook_env(), stdin=subprocess.DEVNULL,
                            timeout=60)
    assert (result.returncode, result.stderr) == (0, ""), result.stdout
    checks = [line.split(":")[0] for line in result.stdout.splitlines()]
    assert checks == ["ok   import", "ok   config", "ok   sysfs", "ok   libvirt state",
                      "ok   ledger", "ok   journal"]
    assert "12 VFs in 2 networks" in result.stdout
    assert "write transaction taken and rolled back (0 live claims)" in result.stdout


def test_self_test_fails_with_one_line_per_cause(host):
    host.state_dir.mkdir(exist_ok=True)
    host.config_path.write_text("[network x]\n")
    result = subprocess.run([str(host.hook_executable()), "--self-test"], capture_output=True,
                            text=True, env=host.hook_env(), stdin=subprocess.DEVNULL,
                            timeout=60)
    assert result.returncode == 1
    assert f"FAIL config: {host.config_path}:1: pfs: network 'x' names no PFs" in result.stdout


def test_hook_without_its_package_does_nothing_and_says_so(host, tmp_path):
    """The copy in qemu.d outlived the package: guests must still start."""
    hook = Path(__file__).resolve().parents[2] / "hooks" / "qemu"
    argv = [sys.executable, "-I", "-S", str(hook)]   # -S: no site-packages, no vfmigrate
    result = subprocess.run([*argv, "web1", "prepare", "begin", "-"], input=b"<domain/>",
                            capture_output=True, cwd=tmp_path, timeout=60)
    assert (result.returncode, result.stdout) == (0, b"")
    [line] = result.stderr.decode().splitlines()
    assert line.startswith("vfmigrate: hook inactive, cannot import vfmigrate (")
    proof = subprocess.run([*argv, "--self-test"], capture_output=True, cwd=tmp_path,
                           stdin=subprocess.DEVNULL, timeout=60)
    assert proof.returncode == 1
    # an incoming guest that may hold a VF would arrive naming the source's VF: refused,
    # so that it stays on the source; one without VFs still arrives
    vf_guest = b"<domain><devices><hostdev mode='subsystem' type='pci'/></devices></domain>"
    for operation, xml, code in (("migrate", vf_guest, 1), ("restore", vf_guest, 1),
                                 ("migrate", b"<domain/>", 0), ("reconnect", vf_guest, 0)):
        result = subprocess.run([*argv, "web1", operation, "begin", "-"], input=xml,
                                capture_output=True, cwd=tmp_path, timeout=60)
        assert (operation, result.returncode, result.stdout) == (operation, code, b"")
