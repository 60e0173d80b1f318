from __future__ import annotations

from vfmigrate import METADATA_NAMESPACE, domxml, metadata

from .domains import teaming_guest


def test_render_quotes_and_orders_attributes():
    element = metadata.render([{"network": "physnet1", "mac": "52:54:00:00:00:01"},
                               {"alias": "ua-x", "network": 'we"ird', "vlan": "7"}])
    assert element == ('<vfs>\n  <vf mac="52:54:00:00:00:01" network="physnet1"/>\n'
                       '  <vf alias="ua-x" network="we&quot;ird" vlan="7"/>\n</vfs>')


def test_labelled_entries_add_and_correct_labels_keep_others():
    xml = teaming_guest("g", ["0000:3b:01.1", "0000:3b:01.2"], networks=["wrong", None])
    xml = xml.replace(b"</vfmigrate:vfs>", b"<vfmigrate:vf mac='52:54:00:99:99:99' "
                      b"network='elsewhere' replug='on-arrival'/></vfmigrate:vfs>")
    parsed = domxml.parse(xml)
    entries = metadata.labelled_entries(parsed, lambda address: "physnet1")
    assert entries == [{"alias": "ua-vf0", "network": "physnet1"},
                       {"mac": "52:54:00:99:99:99", "network": "elsewhere", "replug": "on-arrival"},
                       {"mac": parsed.devices[1].mac, "network": "physnet1"}]
    relabelled = teaming_guest("g", ["0000:3b:01.1"], networks=["physnet1"])
    assert metadata.labelled_entries(domxml.parse(relabelled), lambda a: "physnet1") is None
    assert metadata.labelled_entries(parsed, lambda address: None) is None


def test_rendered_metadata_is_read_back_by_the_parser():
    entries = [{"mac": "52:54:00:00:00:01", "network": "physnet1", "address": "0000:3b:01.1",
                "replug": "on-arrival", "vlan": "12"}]
    element = metadata.render(entries).replace("<vfs>", f'<vfmigrate:vfs xmlns:vfmigrate='
                                                        f'"{METADATA_NAMESPACE}">')
    element = element.replace("<vf ", "<vfmigrate:vf ").replace("</vfs>", "</vfmigrate:vfs>")
    xml = teaming_guest("g", []).replace(b"<memory",
                                         f"<metadata>{element}</metadata><memory".encode())
    [device] = domxml.parse(xml).devices
    assert (device.kind, str(device.address), device.network, device.vlan, device.replug) == \
        ("metadata", "0000:3b:01.1", "physnet1", 12, "on-arrival")
