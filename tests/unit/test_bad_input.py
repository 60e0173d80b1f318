"""Bad input of every kind: one line on stderr, the right exit code, ledger untouched."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from vfmigrate import domxml

from .domains import teaming_guest

SOURCE_VF = "0000:5e:02.3"
GOOD = teaming_guest("web1", [SOURCE_VF], networks=["physnet1"])

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<domain><name>&lol3;</name><uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid>
<devices><hostdev mode='subsystem' type='pci'/></devices></domain>"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE domain [<!ENTITY xxe SYSTEM "file:///etc/shadow">]>
<domain><name>&xxe;</name><devices><hostdev/></devices></domain>"""

XML_CASES = {
    "malformed": (GOOD[:-30], 3, "domain XML rejected: malformed XML at line"),
    "not a domain": (b"<network><name>hostdev</name></network>", 3,
                     "domain XML rejected: root element is <network>, not <domain>"),
    "billion laughs": (BILLION_LAUGHS, 3, "DOCTYPE and entity declarations are not allowed"),
    "xxe": (XXE, 3, "DOCTYPE and entity declarations are not allowed"),
    "10 MB": (GOOD.replace(b"<devices>", b"<devices>" + b"<!--" + b"x" * 10_000_000 + b"-->"),
              3, "is more than the 2097152 a domain XML may have"),
    "bad uuid": (GOOD.replace(b"<uuid>", b"<uuid>zz"), 3, "<uuid> is missing or invalid"),
    "bad pci address": (GOOD.replace(b"bus='0x5e'", b"bus='0x5e00'"), 3,
                        "source address: PCI address bus='0x5e00' is out of range"),
    "bad metadata vlan": (GOOD.replace(b"network='physnet1'", b"network='physnet1' vlan='5000'"),
                          3, "vlan '5000' is not 0-4095"),
    "bad metadata replug": (GOOD.replace(b"network='physnet1'",
                                         b"network='physnet1' replug='now'"),
                            3, "replug 'now' is not one of on-arrival, pending"),
    "bad metadata bridge": (GOOD.replace(b"network='physnet1'",
                                         b"network='physnet1' bridge='br0;reboot'"),
                            3, "bridge 'br0;reboot' is not a bridge name"),
    "bad metadata label": (GOOD.replace(b"network='physnet1'", b"network='../../etc'"), 3,
                           "network '../../etc' is not a valid label"),
    "unknown network": (GOOD.replace(b"network='physnet1'", b"network='physnet9'"), 1,
                        "needs network 'physnet9'"),
    # Digits str.isdigit() takes but int() does not ('²'), or int() reads but libvirt
    # does not ('٣' is 3 to Python; '_', signs, spaces): one line, exit 3, never 70.
    "superscript metadata vlan": (GOOD.replace(b"network='physnet1'",
                                               "network='physnet1' vlan='\u00b2'".encode()),
                                  3, "vlan '\u00b2' is not 0-4095"),
    "char reference to a superscript": (GOOD.replace(b"network='physnet1'",
                                                     b"network='physnet1' vlan='&#xB2;'"),
                                        3, "vlan '\u00b2' is not 0-4095"),
    "superscript vlan tag": (GOOD.replace(b"<teaming type='transient'",
                                          "<vlan><tag id='\u00b2'/></vlan><teaming "
                                          "type='transient'".encode()),
                             3, "<interface> <vlan><tag id='\u00b2'> is not a VLAN ID 0-4095"),
    "arabic-indic pci bus": (GOOD.replace(b"bus='0x5e'", "bus='\u0663'".encode()), 3,
                             "PCI address bus='\u0663' is not a number"),
    "underscore in pci function": (GOOD.replace(b"function='0x3'", b"function='0x_3'"), 3,
                                   "PCI address function='0x_3' is not a number"),
    "fullwidth metadata address": (GOOD.replace(b"network='physnet1'",
                                                "network='physnet1' address='0000:5e:02.\uff13'"
                                                .encode()),
                                   3, "is not a PCI address (DDDD:BB:SS.F)"),
    "nested 40,000 deep": (GOOD.replace(b"<devices>", b"<devices>" + b"<a>" * 40_000
                                        + b"</a>" * 40_000),
                           3, "elements are nested deeper than 1024 levels"),
    "NUL byte": (GOOD.replace(b"<memory", b"<memory\0"), 3, "NUL bytes"),
    "duplicate attribute": (GOOD.replace(b"bus='0x5e'", b"bus='0x5e' bus='0x3b'"), 3,
                            "duplicate attribute"),
    "latin-1 declared": (b"<?xml version='1.0' encoding='ISO-8859-1'?>"
                         + GOOD.replace(b"<name>web1", b"<name>w\xe9b1"), 3,
                         "not well-formed"),
}


def ledger_snapshot(host) -> list:
    if not host.state_dir.exists():
        return []
    with host.ledger() as ledger:
        return ledger.history(1000)


@pytest.mark.parametrize("case", XML_CASES)
def test_bad_xml_gives_one_line_and_leaves_ledger(host, case):
    xml, code, message = XML_CASES[case]
    host.hook("migrate", teaming_guest("other", [SOURCE_VF], networks=["physnet1"]))
    before = ledger_snapshot(host)
    result = host.hook("migrate", xml)
    assert result.code == code
    assert result.stdout == b""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("vfmigrate: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert ledger_snapshot(host) == before


CONFIG_CASES = {
    "garbled": ("[vfmigrate\nstate_dir = /x\n", "vfmigrate.conf:1: [vfmigrate: section "
                "header must end with ']'"),
    "unknown key": ("[vfmigrate]\nstate_dri = /x\n", "vfmigrate.conf:2: state_dri: unknown key"),
    "no pfs": ("[network physnet1]\nallow_vfs = 0000:3b:01.*\n",
               "vfmigrate.conf:1: pfs: network 'physnet1' names no PFs"),
    "bad pf": ("[network physnet1]\npfs = ../../etc\n",
               "vfmigrate.conf:2: pfs: '../../etc' is neither a netdev name nor a PCI address"),
    "relative state dir": ("[vfmigrate]\nstate_dir = state\n",
                           "vfmigrate.conf:2: state_dir: must be an absolute path"),
    "bad timeout": ("[vfmigrate]\nreservation_timeout = soon\n",
                    "vfmigrate.conf:2: reservation_timeout: must be seconds"),
    "binary": ("\udcff", "vfmigrate.conf:0: -: cannot read"),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config_gives_file_line_key(host, case):
    text, message = CONFIG_CASES[case]
    host.config_path.write_bytes(text.encode("utf-8", "surrogateescape"))
    result = host.hook("migrate", GOOD)
    assert result.code == 4
    assert result.stderr == f"vfmigrate: {host.config_path.parent}/{message}" + \
        result.stderr.split(message, 1)[1]
    assert result.stderr.count("\n") == 1
    assert not host.state_dir.exists()


def test_missing_sysfs_root_is_a_host_state_error(host):
    host.write_config(sysfs_root=host.root / "nowhere")
    # write_config puts sysfs_root first; the later duplicate must be reported.
    result = host.hook("migrate", GOOD)
    assert result.code == 4 and "set twice" in result.stderr
    host.config_path.write_text(host.config_path.read_text().replace(
        f"sysfs_root = {host.sysfs.root}\n", ""))
    result = host.hook("migrate", GOOD)
    assert result.code == 5
    assert "cannot read sysfs at" in result.stderr and "nowhere/bus/pci/devices" in result.stderr
    assert host.live_claims() == []


def test_garbled_sysfs_value_is_a_host_state_error(host):
    from vfmigrate.cli import main
    import io
    (host.sysfs.root / "bus/pci/devices/0000:3b:00.0/sriov_numvfs").write_text("many\n")
    out, err = io.StringIO(), io.StringIO()
    code = main(["vfmigrate", "--config", str(host.config_path), "status"], out, err)
    assert code == 5
    assert "sriov_numvfs: expected a number, found 'many'" in err.getvalue()


def test_dangling_virtfn_link_is_skipped(host):
    pf = host.sysfs.root / "bus/pci/devices/0000:af:00.0"
    (pf / "virtfn0").unlink()
    os.symlink("../0000:af:07.7", pf / "virtfn0")
    result = host.hook("migrate", teaming_guest("g", [SOURCE_VF], networks=["physnet2"]))
    assert result.code == 0
    [device] = domxml.parse(result.stdout).devices
    assert str(device.address) == str(host.physnet2_vfs[1])


def test_corrupt_ledger_is_reported_and_left_for_the_admin(host):
    host.state_dir.mkdir(mode=0o700)
    ledger_file = host.state_dir / "ledger.sqlite3"
    garbage = b"this is not a database" * 100
    ledger_file.write_bytes(garbage)
    result = host.hook("migrate", GOOD)
    assert result.code == 5
    assert result.stderr.startswith(f"vfmigrate: ledger {ledger_file} is unreadable")
    assert "move it aside and run 'vfmigrate reconcile'" in result.stderr
    assert ledger_file.read_bytes() == garbage


def test_locked_ledger_times_out_with_one_line(host):
    host.write_config(lock_timeout=0.3)
    host.hook("migrate", teaming_guest("other", [SOURCE_VF], networks=["physnet1"]))
    before = ledger_snapshot(host)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time\n"
         "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
         "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(30)",
         str(host.state_dir / "ledger.sqlite3")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = host.hook("migrate", GOOD)
    finally:
        holder.kill()
        holder.wait()
    assert result.code == 5
    assert "stayed locked for 0.3 s" in result.stderr
    assert ledger_snapshot(host) == before


def test_newer_ledger_schema_is_refused(host):
    host.hook("migrate", teaming_guest("other", [SOURCE_VF], networks=["physnet1"]))
    db = sqlite3.connect(host.state_dir / "ledger.sqlite3")
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    result = host.hook("migrate", GOOD)
    assert result.code == 5
    assert "schema version 99 is newer than this vfmigrate supports (1)" in result.stderr


def test_internal_error_is_one_line_not_a_traceback(host, monkeypatch):
    from vfmigrate import claims

    def explode(*args, **kwargs):
        raise KeyError("boom")
    monkeypatch.setattr(claims.Claims, "reserve_incoming", explode)
    result = host.hook("migrate", GOOD)
    assert result.code == 70
    assert result.stderr == ("vfmigrate: internal error: KeyError: 'boom'; please report it "
                             "with the journal's traceback\n")


def test_more_tricks_change_nothing_they_should_not(host):
    """What else was tried against the migrate hook, and what it does (issue 12):

    * entities: DOCTYPE/ENTITY are refused (cases above); character references are
      decoded as libvirt decodes them (``bus='&#x30;x5e'`` is ``0x5e``) and the rewrite
      replaces the whole value, reference included;
    * a 1.9 MB attribute value on ``<alias>``: read in linear time, rewritten around;
    * duplicate attributes and NUL bytes: refused by the parser (cases above);
    * namespace tricks: vfmigrate's element under another prefix or as the default
      namespace is read the same; a ``vfmigrate:network`` attribute (namespaced) is not
      ``network``; entries outside ``<metadata>`` are not read; a second
      ``<vfmigrate:vfs>`` is ignored, as libvirt keeps only the first;
    * byte order marks: a UTF-8 BOM is read; UTF-16 (and any declared encoding but
      UTF-8) is refused by the parser; the hook's pre-check sees no ``hostdev`` in it;
    * CDATA around ``<uuid>`` text is text; attributes cannot be CDATA;
    * an attribute value holding `` bus='0x01'`` after a non-ASCII attribute name: only
      the real ``bus`` is rewritten (tests/unit/test_safety_parsing.py);
    * test-only metadata kinds (``simulated``, ``stand-in``) without ``allow_stand_ins``:
      claim nothing (below).
    """
    vf = str(host.physnet1_vfs[0])
    tricks = [
        GOOD.replace(b"bus='0x5e'", b"bus='&#x30;x5e'"),
        GOOD.replace(b"<alias name='ua-vf0'/>", b"<alias name='ua-vf0' x='" + b"a" * 1_900_000
                     + b"'/>"),
        GOOD.replace(b"vfmigrate:", b"v:").replace(b"xmlns:vfmigrate", b"xmlns:v"),
        GOOD.replace(b"<uuid>", b"<uuid><![CDATA[").replace(b"</uuid>", b"]]></uuid>"),
        b"\xef\xbb\xbf" + GOOD,
        GOOD.replace(b"<address type='pci' domain=",
                     "<address d\u00e9coy=\" bus='0x01'\" type='pci' domain=".encode()),
    ]
    for index, xml in enumerate(tricks):
        result = host.hook("migrate", xml.replace(b"<name>web1", f"<name>t{index}".encode()),
                           domain=f"t{index}")
        assert result.code == 0, (index, result.stderr)
        [device] = domxml.parse(result.stdout).devices
        assert str(device.address) == vf, index
        release = host.hook("release", result.stdout, domain=f"t{index}")
        assert release.code == 0 and host.live_claims() == [], index


def test_test_only_vf_entries_claim_nothing_on_a_production_host(host):
    """``device='simulated'``/``'stand-in'`` entries on a host without
    ``allow_stand_ins``: before, a guest with no PCI device took a VF per entry (here
    every VF of physnet2).  Now they claim nothing; the hook may refuse the guest in
    one line naming allow_stand_ins, or let it through unchanged."""
    from vfmigrate import METADATA_NAMESPACE
    from .domains import plain_guest
    entries = "".join(f"<v:vf mac='52:54:00:00:01:{index:02x}' network='physnet2' "
                      f"device='simulated'/>" for index in range(4))
    entries += "<v:vf mac='52:54:00:00:02:01' network='physnet1' device='stand-in' " \
               "bridge='br0' replug='on-arrival'/>"
    xml = plain_guest("nopci").replace(b"<memory", f"<metadata><v:vfs xmlns:v="
                                       f"'{METADATA_NAMESPACE}'>{entries}</v:vfs></metadata>"
                                       f"<memory".encode(), 1)
    before = ledger_snapshot(host)
    for operation in ("migrate", "prepare", "start", "started", "reconnect", "release"):
        result = host.hook(operation, xml, domain="nopci")
        assert result.stdout == b""
        assert result.code == 0 or (operation == "migrate" and result.code == 1
                                    and "allow_stand_ins" in result.stderr), result.stderr
        assert ledger_snapshot(host) == before, operation
