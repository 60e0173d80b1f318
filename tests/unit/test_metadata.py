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


def with_vfs_element(xml: bytes, *entries: str) -> bytes:
    element = (f"<metadata><vfmigrate:vfs xmlns:vfmigrate='{METADATA_NAMESPACE}'>"
               + "".join(f"<vfmigrate:vf {entry}/>" for entry in entries)
               + "</vfmigrate:vfs></metadata>")
    return xml.replace(b"<memory", element.encode() + b"<memory", 1)


def test_the_parser_and_the_writers_tie_entries_to_devices_alike():
    """One rule (metadata.device_of): alias first, then MAC; the last entry for a device
    counts.  Here one entry names device 0's alias with device 1's MAC, and device 1
    has two entries: the parser's labels must be what the writer edits."""
    base = teaming_guest("g", ["0000:3b:01.1", "0000:3b:01.2"])
    devices = domxml.parse(base).devices
    mac1 = devices[1].mac
    xml = with_vfs_element(base, f"alias='ua-vf0' mac='{mac1}' network='first'",
                           f"mac='{mac1.upper()}' network='second'",
                           f"alias='ua-vf1' network='third'")
    parsed = domxml.parse(xml)
    assert [d.network for d in parsed.devices] == ["first", "third"]
    entries = [dict(entry) for entry in parsed.metadata_entries]
    for device in parsed.devices:
        entry = metadata.entry_of(device, entries, parsed.devices)
        assert entry["network"] == device.network
    labelled = metadata.labelled_entries(parsed, lambda address: "physnet1")
    relabelled = domxml.parse(with_vfs_element(
        base, *(" ".join(f"{k}='{v}'" for k, v in entry.items()) for entry in labelled)))
    assert [d.network for d in relabelled.devices] == ["physnet1", "physnet1"]


def test_the_hook_turns_on_arrival_into_pending_and_nothing_else():
    assert metadata.arrival_state(metadata.ON_ARRIVAL) == metadata.PENDING
    assert [metadata.arrival_state(state) for state in (None, metadata.PENDING)] == \
        [None, metadata.PENDING]
    assert metadata.REPLUG_STATES == ("on-arrival", "pending")


def test_pending_entries_are_found_parsed_and_unparsed():
    assert metadata.is_pending({"mac": "52:54:00:00:00:01", "replug": "pending"})
    assert not metadata.is_pending({"replug": "on-arrival"})
    assert not metadata.is_pending({})
    vf = "0000:3b:01.1"
    xml = with_vfs_element(teaming_guest("g", []), f"mac='52:54:00:00:00:01' address='{vf}' "
                                                   "network='physnet1' replug='on-arrival'")
    assert not metadata.may_have_pending(xml)
    [device] = domxml.parse(xml).devices
    arrived = domxml.parse(xml).rewrite([(device, device.address)])
    assert metadata.may_have_pending(arrived)
    assert metadata.may_have_pending(arrived.replace(b"'pending'", b'"pending"'))
    [entry] = domxml.parse(arrived).metadata_entries
    assert metadata.is_pending(entry)


class Seen:
    """A device as another reading of the guest has it."""

    def __init__(self, alias: str | None, mac: str | None) -> None:
        self.alias, self.mac = alias, mac


def test_a_device_is_found_again_by_alias_else_mac_and_never_guessed():
    live = [Seen("hostdev0", "52:54:00:00:00:01"), Seen("ua-vf1", "52:54:00:00:00:02"),
            Seen("hostdev2", "52:54:00:00:00:03"), Seen("hostdev3", "52:54:00:00:00:03")]
    assert metadata.counterpart(Seen(None, "52:54:00:00:00:01"), live) is live[0]
    assert metadata.counterpart(Seen("ua-vf1", None), live) is live[1]
    # alias first, as an entry finds its device: the MAC is asked only if no alias matches
    assert metadata.counterpart(Seen("ua-vf1", "52:54:00:00:00:01"), live) is live[1]
    assert metadata.device_of({"alias": "ua-vf1", "mac": "52:54:00:00:00:01"}, live) is live[1]
    assert metadata.counterpart(Seen("ua-gone", "52:54:00:00:00:02"), live) is live[1]
    # two devices answer: none is taken
    assert metadata.counterpart(Seen(None, "52:54:00:00:00:03"), live) is None
    assert metadata.counterpart(Seen(None, None), live) is None
    assert metadata.counterpart(Seen("ua-gone", "52:54:00:00:00:09"), live) is None
