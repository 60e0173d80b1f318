"""Never harm a running guest (issue 12): what the hook reads must not mislead it.

Each scenario is built as it happens on a host: a domain XML as libvirt writes
it (or as a hostile source could send it), libvirt status files in the run
dir, a fake sysfs tree under the host's root, a real config file, and the
hook run through its real entry point (in process, or as the installed
executable in a subprocess with libvirt's environment).
"""

from __future__ import annotations

import pytest

from vfmigrate import METADATA_NAMESPACE, domxml, standins
from vfmigrate.running import running_guests

from .domains import guest_uuid, plain_guest, teaming_guest

SOURCE_VF = "0000:5e:02.3"


def one_line(result) -> str:
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("vfmigrate: "), \
        result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def with_entries(xml: bytes, *entries: str) -> bytes:
    """The guest with vfmigrate metadata holding these ``<v:vf …/>`` entries."""
    element = (f"<metadata><v:vfs xmlns:v='{METADATA_NAMESPACE}'>" + "".join(entries)
               + "</v:vfs></metadata>")
    return xml.replace(b"<memory", element.encode() + b"<memory", 1)


# -- defect 2: digits that isdigit() accepts but int() does not --------------

NON_ASCII_DIGITS = {
    # (what is replaced, by what, the attribute the message must name)
    "metadata vlan superscript two": (b"network='physnet1'", "network='physnet1' vlan='\u00b2'",
                                      "vlan '\u00b2'"),
    "interface vlan tag superscript": (b"<teaming type='transient'",
                                       "<vlan><tag id='\u00b2'/></vlan><teaming type='transient'",
                                       "<vlan><tag id='\u00b2'>"),
    "arabic-indic bus": (b"bus='0x5e'", "bus='\u0663'", "bus='\u0663'"),
    "fullwidth slot": (b"slot='0x02'", "slot='\uff12'", "slot='\uff12'"),
    "underscore function": (b"function='0x3'", "function='0x_3'", "function='0x_3'"),
    "signed domain": (b"domain='0x0000'", "domain='+0'", "domain='+0'"),
    "spaced bus": (b"bus='0x5e'", "bus=' 94'", "bus=' 94'"),
}


@pytest.mark.parametrize("case", NON_ASCII_DIGITS)
@pytest.mark.parametrize("operation", ["migrate", "prepare", "release"])
def test_non_ascii_digits_are_bad_xml_naming_the_attribute(host, case, operation):
    """Unicode digits (``'²'.isdigit()`` is True, ``int('²')`` fails; ``int('٣')`` is 3)
    and what Python's ``int()`` accepts but libvirt does not (``_``, signs, spaces) are
    one line, exit 3, in every operation: never an internal error (70)."""
    old, new, named = NON_ASCII_DIGITS[case]
    xml = teaming_guest("web1", [SOURCE_VF], networks=["physnet1"]).replace(
        old, new.encode(), 1)
    result = host.hook(operation, xml, domain="web1")
    assert result.code == 3, result.stderr
    assert named in one_line(result)
    assert result.stdout == b""
    assert not host.state_dir.exists()


def test_non_ascii_vlan_through_the_installed_hook(host):
    xml = teaming_guest("web1", [SOURCE_VF], networks=["physnet1"]).replace(
        b"network='physnet1'", "network='physnet1' vlan='\u00b2'".encode())
    result = host.hook_process("migrate", xml, domain="web1")
    assert result.code == 3
    assert "vlan '\u00b2' is not 0-4095" in one_line(result)


def test_octal_and_decimal_pci_parts_are_read_as_libvirt_reads_them():
    """libvirt reads address parts with strtoul(base 0): ``010`` is octal 8."""
    xml = teaming_guest("web1", [SOURCE_VF]).replace(b"bus='0x5e'", b"bus='94'").replace(
        b"slot='0x02'", b"slot='010'")
    [device] = domxml.parse(xml).devices
    assert str(device.address) == "0000:5e:08.3"


# -- defect 9: test-only metadata kinds on a production host -----------------

def simulated_only_guest(count: int, *, address: str | None = None) -> bytes:
    entries = [f"<v:vf mac='52:54:00:00:01:{index:02x}' network='physnet1' "
               f"device='simulated'" + (f" address='{address}'" if address else "") + "/>"
               for index in range(count)]
    entries.append("<v:vf mac='52:54:00:00:02:01' network='physnet2' device='stand-in' "
                   "bridge='br0'/>")
    return with_entries(plain_guest("nopci"), *entries)


def test_simulated_and_stand_in_entries_claim_nothing_without_allow_stand_ins(host):
    """A guest with no PCI device at all and 9 test-only entries: before, it took every
    VF of physnet1 and one of physnet2 on a host with ``allow_stand_ins`` unset."""
    xml = simulated_only_guest(9)
    result = host.hook("migrate", xml, domain="nopci")
    assert result.stdout == b""
    assert host.live_claims() == []
    if result.code:   # refusing is as good as ignoring, as long as it is one line
        assert "allow_stand_ins" in one_line(result)


def test_simulated_entry_naming_a_real_vf_claims_nothing_at_start(host):
    xml = simulated_only_guest(1, address=str(host.physnet1_vfs[0]))
    assert host.hook("prepare", xml, domain="nopci").code == 0
    assert host.live_claims() == []


def test_parse_honours_test_only_kinds_only_when_asked():
    xml = simulated_only_guest(2, address=SOURCE_VF)
    production = domxml.parse(xml)
    assert production.devices == [] and production.travelling_devices == []
    assert production.held_addresses == set()
    assert [entry.entry["device"] for entry in production.test_only] == \
        ["simulated", "simulated", "stand-in"]
    testbed = domxml.parse(xml, allow_stand_ins=True)
    assert [d.kind for d in testbed.travelling_devices] == ["metadata"] * 3
    assert testbed.test_only == []


def test_simulated_vfs_are_claimed_on_a_testbed_host(host):
    host.write_config(allow_stand_ins="yes")
    result = host.hook("migrate", simulated_only_guest(1), domain="nopci")
    assert result.code == 0, result.stderr
    if not host.state_dir.exists():
        pytest.xfail("the hook (hookrun.py, helper 'packaging') does not parse with "
                     "allow_stand_ins=config.allow_stand_ins yet")
    assert sorted(c.network for c in host.live_claims()) == ["physnet1", "physnet2"]
    parsed = domxml.parse(result.stdout, allow_stand_ins=True)
    assert all(str(d.address) != "None" for d in parsed.devices)


def test_test_only_entries_are_refused_by_the_migrate_hook(host):
    """Refusing is the safe choice for migrate/restore: ignoring them, the guest would
    arrive without the VF its metadata promises."""
    result = host.hook("migrate", simulated_only_guest(1), domain="nopci")
    if result.code == 0:
        pytest.xfail("the hook (hookrun.py, helper 'packaging') does not call "
                     "DomainXML.refuse_test_only yet")
    assert result.code == 1
    assert "allow_stand_ins = no" in one_line(result)
    assert host.live_claims() == []


# -- defect 10: one PF in two networks, by name and by address ---------------

def test_pf_named_by_netdev_and_by_address_in_two_networks_is_a_config_error(host):
    """physnet1 names the E810 by netdev, physnet2 by PCI address: before, a physnet2
    guest got physnet1's VF."""
    host.write_config({"physnet1": "ens1f0", "physnet2": "0000:3b:00.0"})
    xml = teaming_guest("web2", [SOURCE_VF], networks=["physnet2"])
    result = host.hook_process("migrate", xml, domain="web2")
    assert result.code == 4, result.stderr
    line = one_line(result)
    assert "0000:3b:00.0" in line and "'physnet1'" in line and "'physnet2'" in line
    assert result.stdout == b""
    assert not host.state_dir.exists() or host.live_claims() == []


def test_pf_overlap_is_refused_at_start_too(host):
    host.write_config({"physnet1": "ens1f0", "physnet2": "0000:3B:00.0, 0000:af:00.0"})
    xml = teaming_guest("web2", [str(host.physnet1_vfs[0])], networks=["physnet2"])
    result = host.hook("prepare", xml, domain="web2")
    assert result.code == 4
    assert "in network 'physnet1' (as ens1f0) and in network 'physnet2' (as 0000:3B:00.0)" \
        in one_line(result)


# -- defect 12a: an attribute value that looks like an attribute -------------

@pytest.mark.parametrize("decoy", [
    "d\u00e9coy=\" bus='0x01' slot='0x00'\"",          # a non-ASCII attribute name
    "xmlns:x='urn:x' x:note=\" bus='0x01'\"",           # a namespaced one
    "note=\"it's bus='0x01'\"",                         # a quote of the other kind
])
def test_rewrite_changes_only_the_real_attribute(host, decoy):
    xml = teaming_guest("web1", [SOURCE_VF], networks=["physnet1"]).replace(
        b"<address type='pci' domain=", f"<address {decoy} type='pci' domain=".encode())
    result = host.hook("migrate", xml, domain="web1")
    assert result.code == 0, result.stderr
    [device] = domxml.parse(result.stdout).devices
    assert str(device.address) == str(host.physnet1_vfs[0])
    assert decoy.encode() in result.stdout
    [claim] = host.live_claims()
    assert claim.vf == host.physnet1_vfs[0]


def test_metadata_address_rewrite_skips_a_decoy_value(host):
    xml = with_entries(plain_guest("batch"),
                       f"<v:vf n\u00f6te=\" address='{SOURCE_VF}'\" mac='52:54:00:00:00:aa' "
                       f"network='physnet2' replug='on-arrival' device='interface'/>")
    result = host.hook("migrate", xml, domain="batch")
    assert result.code == 0, result.stderr
    [device] = domxml.parse(result.stdout).devices
    assert (str(device.address), device.replug) == (str(host.physnet2_vfs[0]), "pending")
    assert f"n\u00f6te=\" address='{SOURCE_VF}'\"".encode() in result.stdout


# -- defect 12b: nesting depth -----------------------------------------------

def nested(depth: int, where: bytes = b"<devices>") -> bytes:
    xml = teaming_guest("deep", [SOURCE_VF], networks=["physnet1"])
    return xml.replace(where, where + b"<a>" * depth + b"</a>" * depth, 1)


@pytest.mark.parametrize("where", [b"<devices>", b"<teaming", b"<metadata>"])
def test_deep_nesting_is_refused_in_one_line(host, where):
    """40,000 nested elements took 8 s to parse (quadratic); now refused at once."""
    xml = nested(40_000, where) if where != b"<teaming" else teaming_guest(
        "deep", [SOURCE_VF], networks=["physnet1"]).replace(
        b"<teaming", b"<a>" * 40_000 + b"</a>" * 40_000 + b"<teaming", 1)
    result = host.hook("migrate", xml, domain="deep")
    assert result.code == 3
    assert "nested deeper than" in one_line(result)


def test_nesting_libvirt_accepts_still_parses():
    [device] = domxml.parse(nested(200, b"<metadata>")).devices
    assert str(device.address) == SOURCE_VF


# -- defect 12c: a teamed device without a readable host address -------------

@pytest.mark.parametrize("source", [
    "<source/>", "", "<source><address type='usb' bus='1' device='2'/></source>"])
def test_teamed_device_without_host_address_claims_nothing(host, source):
    """libvirt rejects such a device, so it cannot travel; before, it took a VF that
    nothing would ever use.  A good VF of the same guest still gets its VF."""
    xml = teaming_guest("web1", [SOURCE_VF, SOURCE_VF], networks=["physnet1", "physnet1"])
    first = xml.index(b"<source>\n        <address type='pci'")
    end = xml.index(b"</source>", first) + len(b"</source>")
    xml = xml[:first] + source.encode() + xml[end:]
    parsed = domxml.parse(xml)
    assert [d.alias for d in parsed.travelling_devices] == ["ua-vf1"]
    result = host.hook("migrate", xml, domain="web1")
    assert result.code == 0, result.stderr
    assert [c.vf for c in host.live_claims()] == [host.physnet1_vfs[0]]


# -- S4: <devices> inside <metadata> of a running guest's status file --------

def status_file(domain_xml: bytes, name: str) -> bytes:
    """A running guest's status file shaped like libvirt 9.0's: private data first
    (with a ``<devices>`` of aliases), the domain after."""
    body = domain_xml.decode().replace("<domain type='qemu'>",
                                       "<domain type='qemu' id='7'>", 1)
    return (f"<!--\nWARNING: THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE\n"
            f"OVERWRITTEN AND LOST.\n-->\n"
            f"<domstatus state='running' reason='booted' pid='4242'>\n"
            f"  <taint flag='high-privileges'/>\n"
            f"  <monitor path='/var/lib/libvirt/qemu/domain-7-{name}/monitor.sock' "
            f"type='unix'/>\n  <vcpus>\n    <vcpu id='0' pid='4250'/>\n  </vcpus>\n"
            f"  <qemuCaps>\n    <flag name='kvm'/>\n    <flag name='vfio-pci'/>\n"
            f"  </qemuCaps>\n  <devices>\n    <device alias='hostdev0'/>\n"
            f"    <device alias='net0'/>\n  </devices>\n"
            f"  <libDir path='/var/lib/libvirt/qemu/domain-7-{name}'/>\n"
            f"{body}</domstatus>\n").encode()


CMDB = "http://cmdb.example.org/xmlns/asset/1"


def foreign_metadata(xml: bytes, inner: str) -> bytes:
    """Another application's metadata element, default namespace, before <devices>."""
    element = f"<metadata><asset xmlns='{CMDB}'>{inner}</asset></metadata>"
    return xml.replace(b"<memory", element.encode() + b"<memory", 1)


def hostdev(address: str) -> str:
    from vfmigrate.pci import PciAddress
    attrs = " ".join(f"{k}='{v}'" for k, v in PciAddress.parse(address).xml_attributes().items())
    return (f"<hostdev mode='subsystem' type='pci' managed='yes'><source>"
            f"<address type='pci' {attrs}/></source></hostdev>")


def test_devices_in_metadata_do_not_hide_a_running_guests_vf(host):
    held = str(host.physnet1_vfs[0])
    xml = teaming_guest("db", [held])
    xml = foreign_metadata(xml, "<devices><disk serial='A1'/></devices>")
    (host.run_dir / "db.xml").write_bytes(status_file(xml, "db"))
    guests = running_guests(host.run_dir)
    assert [str(a) for a in guests[guest_uuid("db")].held] == [held]
    result = host.hook("migrate", teaming_guest("web1", [SOURCE_VF], networks=["physnet1"]),
                       domain="web1")
    assert result.code == 0, result.stderr
    [device] = domxml.parse(result.stdout).devices
    assert str(device.address) != held


def test_devices_in_metadata_do_not_forge_a_vf(host):
    xml = foreign_metadata(plain_guest("idle"), f"<devices>{hostdev(str(host.physnet1_vfs[0]))}"
                                               f"</devices>")
    (host.run_dir / "idle.xml").write_bytes(status_file(xml, "idle"))
    assert running_guests(host.run_dir)[guest_uuid("idle")].held == frozenset()


def test_prefixed_devices_in_metadata_and_namespaces_on_domain(host):
    """A prefixed ``<x:devices>`` in metadata, and a prefix libvirt declares on
    ``<domain>`` used inside ``<devices>``: the guest's own VF is found."""
    held = str(host.physnet2_vfs[1])
    xml = teaming_guest("db", [held], hostdev=True)
    xml = xml.replace(b"<domain type='qemu'>",
                      b"<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/"
                      b"qemu/1.0'>")
    xml = xml.replace(b"<memory", f"<metadata><x:devices xmlns:x='{CMDB}'>"
                      f"{hostdev(SOURCE_VF).replace('<', '<x:').replace('<x:/', '</x:')}"
                      f"</x:devices></metadata><memory".encode())
    xml = xml.replace(b"</devices>", b"<qemu:extra/></devices>")
    (host.run_dir / "db.xml").write_bytes(status_file(xml, "db"))
    problems: list[str] = []
    guests = running_guests(host.run_dir, problems)
    assert problems == []
    assert [str(a) for a in guests[guest_uuid("db")].held] == [held]


def test_refusing_test_only_entries_is_one_line_exit_1():
    """What the migrate hook raises for them (``DomainXML.refuse_test_only``)."""
    from vfmigrate.errors import exit_code_for
    parsed = domxml.parse(simulated_only_guest(1))
    with pytest.raises(standins.TestOnlyVF) as refused:
        parsed.refuse_test_only("/etc/vfmigrate/vfmigrate.conf")
    assert exit_code_for(refused.value) == 1
    assert str(refused.value) == (
        "guest 'nopci' has a simulated VF (52:54:00:00:01:00), a stand-in VF "
        "(52:54:00:00:02:01) in vfmigrate's metadata, which only testbeds use, and "
        "/etc/vfmigrate/vfmigrate.conf has allow_stand_ins = no; remove the entry from the "
        "guest's metadata, or set allow_stand_ins = yes on a testbed")
    domxml.parse(simulated_only_guest(1), allow_stand_ins=True).refuse_test_only("x")


def test_a_document_not_in_utf8_is_refused_by_the_parser(host):
    """libvirt writes UTF-8 only.  A UTF-16 document parsed, claimed a VF and came out of
    the rewrite with ASCII bytes spliced into UTF-16 (garbage for libvirt).  The hook's
    cheap pre-check never sees ``hostdev`` in it (the guest has no VF for vfmigrate)."""
    xml = teaming_guest("web1", [SOURCE_VF], networks=["physnet1"])
    utf16 = ('<?xml version="1.0" encoding="UTF-16"?>' + xml.decode()).encode("utf-16")
    with pytest.raises(domxml.BadDomainXML, match="malformed XML"):
        domxml.parse(utf16)
    result = host.hook("migrate", utf16, domain="web1")
    assert (result.code, result.stdout, host.state_dir.exists()) == (0, b"", False)
    # A UTF-8 byte order mark is UTF-8: still read.
    assert len(domxml.parse(b"\xef\xbb\xbf" + xml).devices) == 1


def test_only_the_first_vfmigrate_element_in_metadata_is_read(host):
    """libvirt keeps one metadata element per namespace (the first); a second one,
    which another tool could append, relabelled the guest's VF to another network."""
    xml = teaming_guest("web1", [SOURCE_VF], networks=["physnet1"]).replace(
        b"</metadata>", f"<z:vfs xmlns:z='{METADATA_NAMESPACE}'><z:vf alias='ua-vf0' "
                        f"network='physnet2'/></z:vfs></metadata>".encode())
    result = host.hook("migrate", xml, domain="web1")
    assert result.code == 0, result.stderr
    assert [(c.vf, c.network) for c in host.live_claims()] == [(host.physnet1_vfs[0],
                                                                "physnet1")]


def test_an_unreadable_status_file_still_holds_its_vfs(host):
    """A running guest whose status file vfmigrate cannot parse (here cut short inside
    ``<devices>``) was skipped: its VF looked free and the next guest got it."""
    held = str(host.physnet1_vfs[0])
    status = status_file(teaming_guest("db", [held]), "db")
    (host.run_dir / "db.xml").write_bytes(status[:status.index(b"<alias name='ua-vf0'/>")])
    problems: list[str] = []
    guests = running_guests(host.run_dir, problems)
    assert held in {str(a) for a in guests[guest_uuid("db")].held}
    [problem] = problems
    assert "db.xml" in problem and "every PCI address in it counts as in use" in problem
    result = host.hook("migrate", teaming_guest("web1", [SOURCE_VF], networks=["physnet1"]),
                       domain="web1")
    assert result.code == 0, result.stderr
    [device] = domxml.parse(result.stdout).devices
    assert str(device.address) != held
