"""Upgrades and downgrades with guests running (issue 17).

The previous release's .deb is built from git history (``previous_release`` in
tests/conftest.py) and installed on this machine.  Two testbed hosts run guests
with simulated VFs and claims through the installed hook and listener.  While
apt-get replaces the package, one thread calls the hosts' hook as libvirt does,
for a guest without VFs and for an incoming guest with one, and another migrates
a VF guest back and forth with ``virsh migrate --live``.  The testbed's hosts have
their own /etc/libvirt/hooks and no systemd, so what the postinst does there on a
real host (copy the new hook into qemu.d, restart the listener) is done for them
after apt-get returns, as the package's own postinst did for this machine.

Installs system-wide (root; CI's machine is disposable) and purges at the end.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.vfhosts import (INSTALLED_ENV, guest_mac_for, simulated_vf_of, vf_testbed,
                               wait_until, with_simulated_vf)
from tests.testbed.guests import no_os_guest_xml
from vfmigrate import __version__
from vfmigrate.ledger import SCHEMA_VERSION

from .test_packages import HOOK, PROGRAM, run

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="installs packages: needs root")

REPLACED = "vfmigrate: the vfmigrate package is being replaced or is broken ("
INCOMING_REFUSED = ("the guest stays where it is: migrate it again once the package manager "
                    "has finished, or reinstall vfmigrate\n")
# A hook call libvirt makes for a guest with nothing of vfmigrate's, in the order of a
# guest's life (migrate and restore filter the XML).
NO_VF_CALLS = [("migrate", "begin"), ("prepare", "begin"), ("start", "begin"),
               ("started", "begin"), ("stopped", "end"), ("release", "end")]


def with_uuid(xml: str) -> str:
    """libvirt gives the hook a guest's XML with its UUID."""
    name_end = xml.index("</name>") + len("</name>")
    return xml[:name_end] + f"<uuid>{uuid.uuid4()}</uuid>" + xml[name_end:]


class HookCalls(threading.Thread):
    """Calls the hosts' hook over and over, as libvirt would, until stopped.

    On ``quiet`` a guest without VFs goes through its whole life; on ``receiver``
    a guest with a VF of another host arrives (``migrate``) and its migration is
    then given up (``release``), which takes its claim back."""

    def __init__(self, quiet, receiver, sender) -> None:
        super().__init__(name="hook-calls", daemon=True)
        self.quiet, self.receiver = quiet, receiver
        self.plain = with_uuid(no_os_guest_xml("upgrade-plain"))
        self.arriving = with_simulated_vf(with_uuid(no_os_guest_xml("upgrade-arriving")),
                                          sender.vfs[-1], guest_mac_for("upgrade-arriving"))
        self.results: list[tuple[float, str, str, str, int, str, str]] = []
        self.stopping = threading.Event()

    def call(self, host, name: str, xml: str, operation: str, phase: str) -> None:
        done = host.host.run(["/etc/libvirt/hooks/qemu.d/vfmigrate", name, operation, phase,
                              "-"], input=xml, capture_output=True, text=True, timeout=60)
        self.results.append((time.monotonic(), host.name, name, operation, done.returncode,
                             done.stdout, done.stderr))

    def run(self) -> None:
        while not self.stopping.is_set():
            for operation, phase in NO_VF_CALLS:
                self.call(self.quiet, "upgrade-plain", self.plain, operation, phase)
            self.call(self.receiver, "upgrade-arriving", self.arriving, "migrate", "begin")
            self.call(self.receiver, "upgrade-arriving", self.arriving, "release", "end")

    def stop(self) -> None:
        self.stopping.set()
        self.join(120)

    def failures(self) -> list[tuple]:
        """Every call whose answer is not one the hook may give during an upgrade."""
        wrong = []
        for _, host, name, operation, code, stdout, stderr in self.results:
            if name == "upgrade-plain":
                fine = code == 0 and stderr == "" and stdout in ("", self.plain)
            elif operation == "migrate":
                fine = ((code == 0 and stderr == "" and "upgrade-arriving" in stdout)
                        or (code == 1 and stderr.startswith(REPLACED)
                            and stderr.endswith(INCOMING_REFUSED)))
            else:   # release: done, or let through with one line while the files are mixed
                fine = code == 0 and (stderr == "" or stderr.startswith(REPLACED))
            if not fine:
                wrong.append((host, name, operation, code, stderr[-500:]))
        return wrong

    def count_between(self, start: float, end: float) -> int:
        return sum(1 for result in self.results if start <= result[0] <= end)


class Migrations(threading.Thread):
    """Migrates ``guest`` back and forth between two hosts until stopped."""

    def __init__(self, first, second, guest: str) -> None:
        super().__init__(name="migrations", daemon=True)
        self.hosts, self.guest = [first, second], guest
        self.results: list[tuple[float, str, int, str]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            source, destination = self.hosts
            done = source.host.migrate(self.guest, destination.host, check=False).completed
            self.results.append((time.monotonic(), f"{source.name}->{destination.name}",
                                 done.returncode, done.stderr))
            if done.returncode == 0:
                self.hosts.reverse()

    def stop(self) -> None:
        self.stopping.set()
        self.join(300)

    @property
    def where(self):
        return self.hosts[0]

    def failures(self) -> list[tuple]:
        return [(way, code, stderr[-500:]) for _, way, code, stderr in self.results
                if code != 0]


def apt_install(package: Path, *extra: str) -> subprocess.CompletedProcess:
    done = run(["apt-get", "install", "-y", "--no-install-recommends", *extra, str(package)],
               timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def replace_package_while_guests_work(hosts, package: Path, *extra: str,
                                      figures: dict, what: str):
    """apt-get install ``package`` while hooks run and a VF guest migrates; then what a
    systemd host's postinst does for the testbed's hosts.  The host the mover is on."""
    a, b = hosts
    calls = HookCalls(quiet=a, receiver=b, sender=a)
    here = a if a.host.domain_state("upgrade-mover") == "running" else b
    moves = Migrations(here, b if here is a else a, "upgrade-mover")
    calls.start()
    moves.start()
    try:
        started = time.monotonic()
        apt_install(package, *extra)
        ended = time.monotonic()
        time.sleep(2)                    # a migration begun before the end finishes
    finally:
        calls.stop()
        moves.stop()
    assert calls.failures() == []
    assert moves.failures() == []
    # The work overlapped the package manager, from the unpack to the postinst.
    during = calls.count_between(started, ended)
    assert during >= 20, calls.results[-3:]
    moved = sum(1 for result in moves.results if started <= result[0] <= ended)
    assert moved >= 1
    replaced = sum(1 for result in calls.results if result[6].startswith(REPLACED))
    figures[what] = (f"apt-get {ended - started:.1f} s; meanwhile {during} hook calls "
                     f"({replaced} saw a mixed package) and {moved} migrations")
    mover_host = moves.where
    assert mover_host.host.domain_state("upgrade-mover") == "running"
    # A release that saw a mixed package did nothing; libvirt would give the guest up again.
    b.host.run([HOOK, "upgrade-arriving", "release", "end", "-"], input=calls.arriving,
               capture_output=True, text=True, timeout=60)
    for vf_host in hosts:
        enabled = vf_host.vfmigrate("hook", "enable", "--no-restart-hint", check=False)
        assert enabled.returncode == 0, enabled.stdout + enabled.stderr
        vf_host.stop_listener()
        vf_host.start_listener()
    assert Path(HOOK).read_bytes() == Path(PROGRAM).read_bytes()
    return mover_host


def live_claims(vf_host) -> list[tuple[str, str, str]]:
    return [(name, vf, state) for name, vf, state in vf_host.claim_summary()
            if name != "upgrade-arriving" or state != "released"]


def test_upgrade_and_downgrade_with_hooks_and_migrations_running(built_deb, previous_release,
                                                                  monkeypatch, figures):
    old_version, old_deb = previous_release
    monkeypatch.setenv(INSTALLED_ENV, "1")
    run(["apt-get", "purge", "-y", "vfmigrate"], timeout=600)
    try:
        apt_install(old_deb)
        assert run(["/usr/bin/vfmigrate", "--version"]).stdout == f"vfmigrate {old_version}\n"
        with vf_testbed(2, vf_count=4) as hosts:
            a, b = hosts
            a.start_guest("upgrade-held", a.vfs[0])
            a.start_guest("upgrade-mover", a.vfs[1])
            a.host.create_domain(no_os_guest_xml("upgrade-quiet"))
            held = ("upgrade-held", str(a.vfs[0]), "active")

            mover_host = replace_package_while_guests_work(
                hosts, built_deb, figures=figures, what=f"upgrade {old_version} -> {__version__}")
            assert run(["/usr/bin/vfmigrate", "--version"]).stdout == f"vfmigrate {__version__}\n"
            for vf_host in hosts:
                wait_until(lambda: any(entry["MESSAGE"].startswith(f"vfmigrate {__version__} is "
                                                                   "ready")
                                       for entry in vf_host.journal()), 30,
                           f"the new listener on {vf_host.name} to say it is ready")
            vf = simulated_vf_of(mover_host.host.virsh("dumpxml", "upgrade-mover").stdout)
            mover = ("upgrade-mover", vf, "active")
            assert vf in [str(address) for address in mover_host.vfs]
            wait_until(lambda: sorted(live_claims(a) + live_claims(b)) == sorted([held, mover]),
                       30, "one live claim per VF guest", lambda: str(a.claims() + b.claims()))
            assert a.host.domain_state("upgrade-quiet") == "running"

            mover_host = replace_package_while_guests_work(
                hosts, old_deb, "--allow-downgrades", figures=figures,
                what=f"downgrade {__version__} -> {old_version}")
            assert run(["/usr/bin/vfmigrate", "--version"]).stdout == f"vfmigrate {old_version}\n"
            vf = simulated_vf_of(mover_host.host.virsh("dumpxml", "upgrade-mover").stdout)
            mover = ("upgrade-mover", vf, "active")
            wait_until(lambda: sorted(live_claims(a) + live_claims(b)) == sorted([held, mover]),
                       30, "one live claim per VF guest", lambda: str(a.claims() + b.claims()))

            refuses_a_newer_ledger(a, b, mover_host)
    finally:
        run(["apt-get", "purge", "-y", "vfmigrate"], timeout=600)
    # Hooks ran while dpkg replaced modules (0.3.0 added one): nothing of theirs stays.
    package_dir = Path("/usr/lib/python3/dist-packages/vfmigrate")
    assert not package_dir.exists(), \
        f"the purge left {sorted(str(path) for path in package_dir.rglob('*'))}"


def ledger_rows(path: Path) -> tuple:
    db = sqlite3.connect(path)
    try:
        return (db.execute("PRAGMA user_version").fetchone()[0],
                db.execute("SELECT * FROM claims ORDER BY id").fetchall())
    finally:
        db.close()


def refuses_a_newer_ledger(a, b, mover_host) -> None:
    """The old code meets host A's ledger as a newer release would leave it: one line,
    nothing changed, an incoming VF guest stays on its source, other guests start."""
    path = a.host.state_dir / "ledger.sqlite3"
    a.stop_listener()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    kept = ledger_rows(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    line = (f"schema version {SCHEMA_VERSION + 1} is newer than this vfmigrate supports "
            f"({SCHEMA_VERSION}); upgrade vfmigrate (the ledger is kept as it is)")
    status = a.vfmigrate("status", check=False)
    assert status.returncode != 0 and status.stdout == ""
    assert status.stderr.count("\n") == 1 and line in status.stderr
    if mover_host is a:
        a.host.migrate("upgrade-mover", b.host)
    refused = b.host.migrate("upgrade-mover", a.host, check=False).completed
    assert refused.returncode != 0 and line in refused.stderr
    assert b.host.domain_state("upgrade-mover") == "running"
    assert a.host.domain_state("upgrade-mover") is None
    a.host.create_domain(no_os_guest_xml("upgrade-later"))
    assert a.host.domain_state("upgrade-later") == "running"
    assert ledger_rows(path) == kept
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_the_deb_restarts_the_listener_on_upgrade_and_stops_it_only_on_removal(built_deb,
                                                                                tmp_path):
    """On a systemd host (not this machine) the old listener runs until the new
    package's postinst restarts it onto the new code, which reconciles at start."""
    subprocess.run(["dpkg-deb", "-e", str(built_deb), str(tmp_path)], check=True)
    postinst = (tmp_path / "postinst").read_text()
    restart = postinst.index("deb-systemd-invoke $_dh_action 'vfmigrate-listener.service'")
    assert 'if [ -n "$2" ]; then\n\t\t\t_dh_action=restart' in postinst[:restart]
    prerm = (tmp_path / "prerm").read_text()
    assert ('[ "$1" = remove ] && [ -d /run/systemd/system ] ; then\n'
            "\tdeb-systemd-invoke stop 'vfmigrate-listener.service'") in prerm
    assert prerm.count("deb-systemd-invoke") == 1
