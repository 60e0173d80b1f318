"""Proof that the testbed works: real libvirtd hosts, real QEMU (TCG), real migrations.

Most tests share one two-host testbed (module scope) whose hosts run ``data/record_hook.py``
as a qemu hook under this interpreter; tests that check creation and destruction make their
own. ``slow`` marks the Linux guest test (boots a kernel under TCG).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .errors import TestbedError
from .fixtures import started_testbed
from .guests import SerialLog, linux_guest_xml, no_os_guest_xml
from .host import Host
from .linux_guest import LinuxGuestImage
from .processes import is_running, pids_in_namespace, wait_until
from .testbed import REGISTRY_DIR, Testbed, clean_stale_instances

log = logging.getLogger(__name__)
RecordProperty = Callable[[str, object], None]
RECORD_HOOK = Path(__file__).with_name("data") / "record_hook.py"
HOOK_CALLS = "hook-calls.jsonl"
REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.testbed,
    pytest.mark.skipif(os.geteuid() != 0, reason="the testbed needs root"),
]


def install_record_hook(testbed: Testbed) -> None:
    for host in testbed.hosts:
        host.install_hook("record", RECORD_HOOK, interpreter=sys.executable)


@pytest.fixture(scope="module")
def testbed() -> Iterator[Testbed]:
    with started_testbed(2, prepare=install_record_hook) as started:
        yield started


@pytest.fixture
def hosts(testbed: Testbed) -> Iterator[tuple[Host, Host]]:
    """Hosts a and b, with no guests left over and the hook's control files removed."""
    a, b = testbed.hosts
    yield a, b
    for host in (a, b):
        for control in ("fail-migrate", "hook-description"):
            (host.etc_vfmigrate / control).unlink(missing_ok=True)
        if not host.libvirtd_running:
            host.restart_libvirtd()
        host.destroy_all_domains()
        for domain in host.domain_names(inactive=True):
            host.virsh("undefine", domain, check=False)


def measured(record_property: RecordProperty, name: str, value: float) -> None:
    """Keep a figure in the JUnit XML (``--junitxml``) and the log (``-o log_cli=true``)."""
    record_property(name, value)
    log.info("measured %s = %s", name, value)


def hook_calls(host: Host, domain: str) -> list[list[str]]:
    path = host.state_dir / HOOK_CALLS
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [record["argv"][1:] for record in records if record["argv"][0] == domain]


def downtime_ms(host: Host, domain: str) -> int:
    info = host.virsh("domjobinfo", "--completed", domain).stdout
    line = next(line for line in info.splitlines() if line.startswith("Total downtime:"))
    return int(line.split()[2])


# ---------------------------------------------------------------------- hosts


def test_hosts_are_separate_libvirt_hosts(hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    hostnames = {host.run(["hostname"], capture_output=True, text=True).stdout.strip()
                 for host in hosts}
    assert hostnames == {a.hostname, b.hostname}
    uuids = {host.virsh("capabilities").stdout.split("<uuid>")[1].split("<")[0] for host in hosts}
    assert uuids == {a.host_uuid, b.host_uuid}
    # Each host reaches the other's libvirtd over TCP.
    assert a.run(["virsh", "-c", b.uri, "hostname"], capture_output=True,
                 text=True).stdout.strip() == b.hostname
    # The test process itself reaches each libvirtd through its socket on the real filesystem.
    libvirt = pytest.importorskip("libvirt")
    connection = libvirt.open(a.local_uri)
    try:
        assert connection.getHostname() == a.hostname
    finally:
        connection.close()
    # vfmigrate's directories are per host.
    (a.etc_vfmigrate / "marker").write_text("a\n")
    try:
        seen = [host.run(["cat", "/etc/vfmigrate/marker"], capture_output=True, text=True)
                for host in hosts]
        assert seen[0].stdout == "a\n" and seen[1].returncode != 0
    finally:
        (a.etc_vfmigrate / "marker").unlink()
    assert "default" not in a.virsh("net-list", "--autostart", "--name").stdout


def test_journald_per_host_receives_the_hooks_logs(hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    a.run(["systemd-cat", "-t", "vfmt-probe", "echo", "hello from a"], check=True)
    entries = wait_until(lambda: a.journal_json(SYSLOG_IDENTIFIER="vfmt-probe"),
                         timeout=10, what="the probe message in a's journal")
    assert entries[-1]["MESSAGE"] == "hello from a"
    assert entries[-1]["_HOSTNAME"] == a.hostname
    assert b.journal_json(SYSLOG_IDENTIFIER="vfmt-probe") == []


# ---------------------------------------------------------------------- no-OS guest


def test_no_os_guest_live_migrates_p2p_then_direct(
    testbed: Testbed, hosts: tuple[Host, Host], record_property: RecordProperty
) -> None:
    a, b = hosts
    started = time.monotonic()
    a.create_domain(no_os_guest_xml("noos", serial_log=testbed.shared_dir / "noos.log"))
    measured(record_property, "no_os_start_seconds", round(time.monotonic() - started, 2))
    (source_qemu,) = a.qemu_pids()

    p2p = a.migrate("noos", b, p2p=True)
    assert a.domain_names() == [] and b.domain_names() == ["noos"]
    assert b.domain_state("noos") == "running"
    assert not is_running(source_qemu) and len(b.qemu_pids()) == 1
    measured(record_property, "no_os_p2p_migration_seconds", round(p2p.wall_seconds, 2))
    measured(record_property, "no_os_p2p_downtime_ms", downtime_ms(b, "noos"))

    direct = b.migrate("noos", a, p2p=False)
    assert a.domain_names() == ["noos"] and b.domain_names() == []
    measured(record_property, "no_os_direct_migration_seconds", round(direct.wall_seconds, 2))


def test_persistent_guest_migrates_with_undefinesource(hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    a.create_domain(no_os_guest_xml("keeper"), persistent=True)
    a.migrate("keeper", b, "--persistent", "--undefinesource")
    assert a.domain_names(inactive=True) == []
    assert b.virsh("list", "--persistent", "--name").stdout.split() == ["keeper"]
    assert b.domain_state("keeper") == "running"


def test_hook_runs_on_start_and_filters_incoming_migration(hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    (b.etc_vfmigrate / "hook-description").write_text("rewritten by the hook on b")
    a.create_domain(no_os_guest_xml("hooked"))
    assert hook_calls(a, "hooked") == [
        ["prepare", "begin", "-"], ["start", "begin", "-"], ["started", "begin", "-"],
    ]
    a.migrate("hooked", b)
    assert hook_calls(b, "hooked")[:4] == [
        ["migrate", "begin", "-"],
        ["prepare", "begin", "-"], ["start", "begin", "-"], ["started", "begin", "-"],
    ]
    assert ["migrate", "begin", "-"] not in hook_calls(a, "hooked")  # never on the source
    assert "<description>rewritten by the hook on b</description>" in b.virsh(
        "dumpxml", "hooked").stdout
    wait_until(lambda: ["release", "end", "-"] in hook_calls(a, "hooked"), timeout=10,
               what="the release hook on the source")
    journal = b.journal_json(SYSLOG_IDENTIFIER="vfmt-record-hook", VFMT_DOMAIN="hooked")
    assert [entry["VFMT_OPERATION"] for entry in journal][:1] == ["migrate"]
    assert {entry["_HOSTNAME"] for entry in journal} == {b.hostname}


def test_hook_installed_after_a_hookless_start_needs_a_restart() -> None:
    with Testbed(1, journald=False) as testbed:
        (host,) = testbed.hosts
        with pytest.raises(TestbedError, match="restart_libvirtd"):
            host.install_hook("record", RECORD_HOOK, interpreter=sys.executable)
        host.stop_libvirtd()
        installed = host.install_hook("record", RECORD_HOOK, interpreter=sys.executable)
        assert installed.read_text().splitlines()[0] == f"#!{sys.executable}"
        assert installed.stat().st_mode & 0o777 == 0o755
        host.restart_libvirtd()
        host.create_domain(no_os_guest_xml("late"))
        assert hook_calls(host, "late")[:1] == [["prepare", "begin", "-"]]


def test_failing_migrate_hook_cancels_migration(hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    (b.etc_vfmigrate / "fail-migrate").write_text("no VF free on this host\n")
    a.create_domain(no_os_guest_xml("refused"))
    result = a.migrate("refused", b, check=False)
    stderr = result.completed.stderr
    assert result.completed.returncode != 0
    assert "Hook script execution failed" in stderr and "no VF free on this host" in stderr
    assert a.domain_state("refused") == "running"
    assert b.domain_names() == [] and b.qemu_pids() == []


def test_guest_survives_libvirtd_kill_and_restart(hosts: tuple[Host, Host]) -> None:
    a, _ = hosts
    a.create_domain(no_os_guest_xml("survivor"))
    qemu_before = a.qemu_pids()
    old_pid = a.libvirtd_pid
    a.kill_libvirtd(signal.SIGKILL)
    assert not a.libvirtd_running and not is_running(old_pid)
    a.restart_libvirtd()
    assert a.libvirtd_pid != old_pid
    assert a.qemu_pids() == qemu_before
    assert a.domain_state("survivor") == "running"
    assert ["reconnect", "begin", "-"] in hook_calls(a, "survivor")


# ---------------------------------------------------------------------- Linux guest


@pytest.mark.slow
def test_linux_guest_boots_migrates_and_keeps_running(
    testbed: Testbed,
    hosts: tuple[Host, Host],
    linux_guest_image: LinuxGuestImage,
    record_property: RecordProperty,
) -> None:
    a, b = hosts
    serial = SerialLog(testbed.shared_dir / "linux.log")
    started = time.monotonic()
    a.create_domain(linux_guest_xml("linux", linux_guest_image, serial.path))
    serial.wait_ready(timeout=120)
    measured(record_property, "linux_ready_seconds", round(time.monotonic() - started, 2))
    assert "iface eth0 mac=" in serial.text() and "driver=virtio_net" in serial.text()
    assert "insmod-failed" not in serial.text()
    assert a.ping("192.0.2.130", count=3)
    (qemu,) = a.qemu_pids()
    measured(record_property, "linux_qemu_rss_kib", _rss_kib(qemu))

    migration = a.migrate("linux", b)
    measured(record_property, "linux_migration_seconds", round(migration.wall_seconds, 2))
    measured(record_property, "linux_downtime_ms", downtime_ms(b, "linux"))
    tick = serial.last_tick()
    wait_until(lambda: serial.last_tick() >= tick + 2, timeout=30,
               what="the guest to keep ticking on b")
    assert b.domain_state("linux") == "running" and a.domain_names() == []
    assert b.ping("192.0.2.130", count=3)
    assert not a.ping("192.0.2.130", timeout=1)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


# ---------------------------------------------------------------------- lifecycle


def test_teardown_leaves_no_namespaces_mounts_or_processes() -> None:
    testbed = Testbed(2)
    with testbed:
        a = testbed.hosts[0]
        a.create_domain(no_os_guest_xml("doomed"))
        listener = a.popen(["sleep", "1000"])
        netns = [host.netns for host in testbed.hosts] + [testbed.hub_netns]
        pids = [pid for host in testbed.hosts for pid in host.started_pids()]
        pids += a.qemu_pids() + [listener.pid]
        mount_namespaces = {os.stat(f"/proc/{host.holder_pid}/ns/mnt").st_ino
                            for host in testbed.hosts}
        directory = testbed.directory
    assert not any(Path("/run/netns", name).exists() for name in netns)
    assert [pid for pid in pids if is_running(pid)] == []
    assert not _processes_in_mount_namespaces(mount_namespaces)
    assert not directory.exists()
    assert not (REGISTRY_DIR / f"{testbed.instance_id}.lock").exists()


def _processes_in_mount_namespaces(inodes: set[int]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.stat(entry / "ns" / "mnt").st_ino in inodes:
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_failed_start_tears_down_and_reports_libvirtd_log() -> None:
    testbed = Testbed(1, journald=False, libvirtd_conf_extra={"listen_addr": "198.51.100.7"})
    with pytest.raises(TestbedError, match="libvirtd exited") as raised:
        testbed.start()
    assert "Unable to bind to port" in str(raised.value)  # libvirtd's own words, from its log
    assert not Path("/run/netns", testbed.hosts[0].netns).exists()
    assert not testbed.directory.exists()


def test_testbed_of_a_killed_run_is_cleaned_by_the_next_start() -> None:
    owner = subprocess.Popen(
        [sys.executable, "-m", "tests.testbed", "up", "--hosts", "1", "--no-journald", "--hold"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert owner.stdout is not None
        description = json.loads(_read_json_document(owner.stdout))
    finally:
        owner.kill()  # SIGKILL: no teardown runs
        owner.wait()
    (host,) = description["hosts"]
    assert Path("/run/netns", host["netns"]).exists()
    assert all(is_running(pid) for pid in host["pids"])

    removed = clean_stale_instances()
    assert description["instance"] in removed
    assert not Path("/run/netns", host["netns"]).exists()
    assert not any(is_running(pid) for pid in host["pids"])
    assert pids_in_namespace(Path("/run/netns", host["netns"])) == []
    assert not Path(description["directory"]).exists()


def _read_json_document(stream: object) -> str:
    lines = []
    for line in stream:  # type: ignore[attr-defined]
        lines.append(line)
        if line.rstrip() == "}":
            return "".join(lines)
    raise AssertionError("the `up --hold` process printed no description:\n" + "".join(lines))
