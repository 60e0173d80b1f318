"""The listener reads the live XML of a guest paused by a migration from libvirt's status
file, not with XMLDesc: libvirt 11 makes that call wait for the migration's job (up to
30 s, seen on a destination in the testbed's libvirt 11.3 tier), and the listener's main
loop, its watchdog and SIGTERM with it.

The domain objects here stand in for libvirt's, with the real libvirt module's constants;
the status files are real files in a temporary run directory.
"""

from __future__ import annotations

import libvirt
import pytest

from vfmigrate import domxml
from vfmigrate.running import status_domain_xml
from vfmigrate.virt import LibvirtHost

from .domains import guest_uuid, teaming_guest
from .test_safety_parsing import status_file

VF = "0000:3b:02.1"


class StandInDomain:
    """The calls LibvirtHost._guest makes on a libvirt domain."""

    def __init__(self, name: str, state: tuple[int, int], live_xml: bytes) -> None:
        self._name = name
        self._state = state
        self._live_xml = live_xml
        self.xmldesc_calls: list[int] = []

    def name(self) -> str:
        return self._name

    def UUIDString(self) -> str:  # noqa: N802 (libvirt's name)
        return guest_uuid(self._name)

    def isPersistent(self) -> int:  # noqa: N802
        return 0

    def state(self) -> list[int]:
        return list(self._state)

    def XMLDesc(self, flags: int = 0) -> str:  # noqa: N802
        self.xmldesc_calls.append(flags)
        return self._live_xml.decode()


PAUSED_BY_MIGRATION = (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION)
RUNNING = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED)


def test_a_guest_paused_by_a_migration_is_read_from_its_status_file(tmp_path):
    xml = teaming_guest("db", [VF])
    (tmp_path / "db.xml").write_bytes(status_file(xml, "db"))
    domain = StandInDomain("db", PAUSED_BY_MIGRATION, b"<domain/>")
    host = LibvirtHost(connection=None, libvirt_module=libvirt, status_dir=str(tmp_path))
    guest = host._guest(domain)
    assert domain.xmldesc_calls == []
    assert [str(d.address) for d in domxml.parse(guest.xml).devices] == [VF]
    assert guest.name == "db" and guest.uuid == guest_uuid("db")


def test_a_running_guest_and_a_saved_definition_still_come_from_libvirt(tmp_path):
    (tmp_path / "db.xml").write_bytes(status_file(teaming_guest("db", [VF]), "db"))
    host = LibvirtHost(connection=None, libvirt_module=libvirt, status_dir=str(tmp_path))
    running = StandInDomain("db", RUNNING, b"<domain>live</domain>")
    assert host._guest(running).xml == b"<domain>live</domain>"
    paused = StandInDomain("db", PAUSED_BY_MIGRATION, b"<domain>saved</domain>")
    assert host._guest(paused, inactive=True).xml == b"<domain>saved</domain>"
    assert paused.xmldesc_calls == [libvirt.VIR_DOMAIN_XML_INACTIVE]


def test_without_a_status_file_libvirt_is_asked(tmp_path):
    domain = StandInDomain("db", PAUSED_BY_MIGRATION, b"<domain>from libvirt</domain>")
    host = LibvirtHost(connection=None, libvirt_module=libvirt, status_dir=str(tmp_path))
    assert host._guest(domain).xml == b"<domain>from libvirt</domain>"
    remote = LibvirtHost(connection=None, libvirt_module=libvirt)   # no status_dir
    assert remote._guest(domain).xml == b"<domain>from libvirt</domain>"


def test_the_status_domain_is_the_domain_element_only(tmp_path):
    xml = teaming_guest("db", [VF])
    (tmp_path / "db.xml").write_bytes(status_file(xml, "db"))
    found = status_domain_xml(tmp_path, "db")
    assert found.startswith(b"<domain type='qemu' id='7'>")
    assert found.endswith(b"</domain>")
    assert b"domstatus" not in found and b"qemuCaps" not in found


@pytest.mark.parametrize("name", ["", "../db", "a/b", ".hidden", "nul\0"])
def test_a_name_that_is_not_a_file_name_reads_nothing(tmp_path, name):
    (tmp_path / "db.xml").write_bytes(status_file(teaming_guest("db", [VF]), "db"))
    assert status_domain_xml(tmp_path / "sub", name) is None


def test_a_truncated_or_missing_status_file_reads_nothing(tmp_path):
    whole = status_file(teaming_guest("db", [VF]), "db")
    (tmp_path / "db.xml").write_bytes(whole[:len(whole) // 2])
    assert status_domain_xml(tmp_path, "db") is None
    assert status_domain_xml(tmp_path, "gone") is None
