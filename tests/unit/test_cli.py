from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from vfmigrate.cli import main

from .domains import teaming_guest


def run_cli(host, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["vfmigrate", "--config", str(host.config_path), *args], out, err)
    return code, out.getvalue(), err.getvalue()


def test_status_shows_states_and_owners(host):
    rewritten = host.hook("migrate", teaming_guest("web1", ["0000:5e:02.3"],
                                                   networks=["physnet2"])).stdout
    host.hook("start", teaming_guest("local", [str(host.physnet1_vfs[4])]), domain="local")
    host.add_running_guest(teaming_guest("rogue", [str(host.physnet1_vfs[6])]), "rogue")
    code, out, err = run_cli(host, "status")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == ("network physnet1: 8 VFs, 6 free, 0 incoming, 1 active, "
                        "1 in use without a claim")
    assert any(line.startswith("    VF 4   0000:3b:01.4  active   local (") for line in lines)
    assert any("0000:3b:01.6  in-use   rogue (" in line for line in lines)
    assert any("0000:3b:01.0  free     -  [vfio-pci]" in line for line in lines)
    assert any("0000:3b:01.7  free     -  [iavf ens1f0v7]" in line for line in lines)
    assert "network physnet2: 4 VFs, 3 free, 1 incoming, 0 active" in out
    # the fake host has no node directory: a PF's numa_node 0 is all it knows
    assert "  PF ens1f0 (0000:3b:00.0): 8 of 256 VFs enabled, NUMA node 0" in lines
    assert rewritten


def test_status_names_each_pfs_numa_node_and_the_networks_policy(host):
    host.sysfs.add_numa_node(0, "0-7")
    host.sysfs.add_numa_node(1, "8-15")
    (host.sysfs.root / "bus/pci/devices/0000:af:00.0/numa_node").write_text("-1\n")
    code, out, _ = run_cli(host, "status")
    assert "  PF 0000:af:00.0 (0000:af:00.0): 4 of 127 VFs enabled, NUMA node unknown" in \
        out.splitlines()
    data = json.loads(run_cli(host, "status", "--json")[1])
    assert [(n["name"], n["numa_affinity"], n["pfs"][0]["numa_node"])
            for n in data["networks"]] == [("physnet1", "preferred", 0),
                                           ("physnet2", "preferred", None)]
    assert {(n["pf_spread"], n["settings_parity"]) for n in data["networks"]} == {
        ("preferred", "trust")}


def test_status_json(host):
    host.hook("migrate", teaming_guest("web1", ["0000:5e:02.3"], networks=["physnet2"]))
    code, out, _ = run_cli(host, "status", "--json")
    data = json.loads(out)
    physnet2 = next(n for n in data["networks"] if n["name"] == "physnet2")
    assert physnet2["counts"] == {"free": 3, "incoming": 1, "active": 0, "in-use": 0}
    vf = physnet2["pfs"][0]["vfs"][0]
    assert (vf["address"], vf["state"], vf["domain_name"], vf["driver"]) == \
        ("0000:af:00.2", "incoming", "web1", "mlx5_core")


def test_status_reports_stray_claims(host):
    host.hook("start", teaming_guest("local", [str(host.physnet2_vfs[0])]))
    host.sysfs.remove_vfs("0000:af:00.0")
    _, out, _ = run_cli(host, "status")
    assert "stray claim: VF 0000:af:00.2 (physnet2) active for local" in out


def test_doctor_reports_each_finding(host, tmp_path):
    hooks_dir = tmp_path / "hooks"
    (hooks_dir / "qemu.d").mkdir(parents=True)
    code, out, _ = run_cli(host, "doctor", "--hooks-dir", str(hooks_dir),
                           "--uri", "test:///default")
    assert code == 1
    assert f"FAIL hook: {hooks_dir}/qemu.d/vfmigrate is missing" in out
    assert "OK   network physnet1: 8 VFs on 1 PF" in out
    assert "OK   iommu: 12 IOMMU groups" in out
    assert "OK   vfio-pci: driver loaded" in out
    assert "OK   libvirt: libvirt at test:///default is" in out
    (hooks_dir / "qemu.d" / "vfmigrate").write_text("#!/bin/sh\n")
    (hooks_dir / "qemu.d" / "vfmigrate").chmod(0o755)
    code, out, _ = run_cli(host, "doctor", "--hooks-dir", str(hooks_dir),
                           "--uri", "test:///default")
    assert code == 0, out
    assert all(line.startswith(("OK ", "WARN")) for line in out.splitlines())


def test_doctor_with_bad_config(host, tmp_path):
    host.config_path.write_text("[network x]\n")
    code, out, _ = run_cli(host, "doctor", "--hooks-dir", str(tmp_path))
    assert code == 1
    assert f"FAIL config: {host.config_path}:1: pfs: network 'x' names no PFs" in out


def test_usage_errors_and_module_entry_point(host):
    code, _, err = run_cli(host, "frobnicate")
    assert code == 2
    assert err.startswith("vfmigrate: argument COMMAND: invalid choice: 'frobnicate'")
    assert err.count("\n") == 1
    result = subprocess.run([sys.executable, "-m", "vfmigrate", "--version"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("vfmigrate 0.")


def _test_driver_guest(connection, name, vf):
    from .test_listener_testdriver import hostdev_guest
    domain = connection.defineXML(hostdev_guest(name, vf))
    domain.create()
    return domain


def test_tag_labels_live_and_saved_definition(host):
    libvirt = pytest.importorskip("libvirt")
    connection = libvirt.open("test:///default")
    domain = _test_driver_guest(connection, "tagme", host.physnet2_vfs[1])
    try:
        code, out, err = run_cli(host, "tag", "tagme", "--network", "physnet2",
                                 "--uri", "test:///default")
        assert (code, err) == (0, "")
        assert out == "guest tagme: 1 VF device labelled network physnet2 " \
                      "(live and saved definition)\n"
        for flags in (0, libvirt.VIR_DOMAIN_XML_INACTIVE):
            assert 'mac="52:54:00:12:34:56" network="physnet2"' in domain.XMLDesc(flags)
        code, out, _ = run_cli(host, "tag", "tagme", "--network", "physnet2",
                               "--uri", "test:///default")
        assert out == "guest tagme: already labelled network physnet2\n"
        code, _, err = run_cli(host, "tag", "tagme", "--network", "physnet2", "--device",
                               "ua-nope", "--uri", "test:///default")
        assert code == 1 and "has no VF device 'ua-nope'" in err
        code, _, err = run_cli(host, "tag", "nosuch", "--network", "x", "--uri",
                               "test:///default")
        assert code == 6 and err.startswith("vfmigrate: libvirt: look up domain 'nosuch' failed")
    finally:
        domain.destroy()
        domain.undefine()
        connection.close()


def test_reconcile_dry_run_then_for_real(host):
    pytest.importorskip("libvirt")
    host.write_config(vf_reset="none")
    host.hook("start", teaming_guest("gone", [str(host.physnet1_vfs[5])]), domain="gone")
    code, out, _ = run_cli(host, "reconcile", "--dry-run", "--uri", "test:///default")
    assert code == 0
    assert out == ("would corrected VF 0000:3b:01.5 (physnet1) guest gone: "
                   "the guest is not running\n")
    assert len(host.live_claims()) == 1
    code, out, _ = run_cli(host, "reconcile", "--uri", "test:///default")
    assert out.splitlines() == [
        "corrected VF 0000:3b:01.5 (physnet1) guest gone: the guest is not running",
        "reset     VF 0000:3b:01.5 (physnet1) guest gone: left as it is (vf_reset = none)"]
    assert host.live_claims() == []
    code, out, _ = run_cli(host, "reconcile", "--uri", "test:///default")
    assert out == "ledger agrees with libvirt and sysfs: nothing to correct\n"


def test_hook_enable_status_disable(host, tmp_path):
    """The real probe (this machine) and runner: the staged copy's self-test really runs."""
    hooks_dir = tmp_path / "libvirt-hooks"
    source = host.hook_executable()      # hooks/qemu for this interpreter
    options = ("--hooks-dir", str(hooks_dir), "--source", str(source))
    code, out, err = run_cli(host, "hook", "enable", *options)
    assert (code, err) == (0, ""), out
    lines = out.splitlines()
    assert lines[0].startswith("vfmigrate: confinement: ")
    assert lines[1].startswith("vfmigrate: the hook's self-test passed ")
    assert lines[2] == f"vfmigrate: hook enabled: {hooks_dir}/qemu.d/vfmigrate"
    assert (hooks_dir / "qemu.d" / "vfmigrate").read_bytes() == source.read_bytes()
    code, out, _ = run_cli(host, "hook", "status", *options)
    assert code == 0, out
    assert f"OK   hook: {hooks_dir}/qemu.d/vfmigrate is installed (a copy) and its self-test " \
           "passes " in out
    code, out, _ = run_cli(host, "hook", "disable", *options)
    assert (code, out) == (0, f"vfmigrate: hook disabled: removed {hooks_dir}/qemu.d/vfmigrate "
                              "(a copy)\n")
    code, out, _ = run_cli(host, "hook", "status", *options)
    assert code == 1 and "FAIL hook: " in out and "is missing" in out


def test_hook_enable_with_a_failing_self_test_stays_disabled(host, tmp_path):
    hooks_dir = tmp_path / "libvirt-hooks"
    host.config_path.write_text("[network x]\n")
    code, out, _ = run_cli(host, "hook", "enable", "--hooks-dir", str(hooks_dir),
                           "--source", str(host.hook_executable()))
    assert code == 1
    assert f"vfmigrate: cause: the hook's self-test failed: config: {host.config_path}:1: " \
           "pfs: network 'x' names no PFs" in out
    assert out.splitlines()[-1].startswith("vfmigrate: hook disabled: nothing in ")
    assert os.listdir(hooks_dir / "qemu.d") == []


def test_hook_refuses_a_file_that_is_not_ours(host, tmp_path):
    (tmp_path / "h" / "qemu.d").mkdir(parents=True)
    (tmp_path / "h" / "qemu.d" / "vfmigrate").write_text("#!/bin/sh\n")
    code, _, err = run_cli(host, "hook", "disable", "--hooks-dir", str(tmp_path / "h"))
    assert code == 1
    assert err == (f"vfmigrate: {tmp_path}/h/qemu.d/vfmigrate is not vfmigrate's hook (a file "
                   "that is not vfmigrate's): move it away, then run 'vfmigrate hook enable'\n")
