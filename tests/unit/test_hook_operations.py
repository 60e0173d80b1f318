"""The hook's contract, operation by operation, on a fake host."""

from __future__ import annotations

from vfmigrate import domxml
from vfmigrate.ledger import ACTIVE, INCOMING

from .domains import guest_uuid, plain_guest, teaming_guest

SOURCE_VF = "0000:5e:02.3"   # an address from the source host; means nothing here


def addresses_in(xml: bytes) -> list[str]:
    return [str(device.address) for device in domxml.parse(xml).devices]


def test_migrate_rewrites_to_a_free_vf_of_the_labelled_network_and_claims_it(host):
    xml = teaming_guest("web1", [SOURCE_VF], networks=["physnet2"])
    result = host.hook("migrate", xml, domain="web1")
    assert (result.code, result.stderr.count("\n")) == (0, 1), result.stderr
    assert addresses_in(result.stdout) == [str(host.physnet2_vfs[0])]
    [claim] = host.live_claims()
    assert (str(claim.vf), claim.network, claim.state, claim.domain_name) == \
        (str(host.physnet2_vfs[0]), "physnet2", INCOMING, "web1")
    assert claim.domain_uuid == guest_uuid("web1")


def test_unlabelled_device_uses_the_only_network(host):
    host.write_config({"physnet1": "ens1f0"})
    result = host.hook("migrate", teaming_guest("web1", [SOURCE_VF]))
    assert result.code == 0
    assert addresses_in(result.stdout) == [str(host.physnet1_vfs[0])]


def test_unlabelled_device_with_two_networks_is_refused_with_how_to_label_it(host):
    result = host.hook("migrate", teaming_guest("web1", [SOURCE_VF]), domain="web1")
    assert result.code == 1
    assert result.stdout == b""
    assert result.stderr == (
        "vfmigrate: interface ua-vf0 (VF 0000:5e:02.3) of guest 'web1' has no network label "
        "and this host has 2 networks (physnet1, physnet2); label it on the source with "
        "'vfmigrate tag web1 --network NAME'\n")
    assert host.live_claims() == []


def test_address_that_is_already_free_here_is_kept_and_output_is_empty(host):
    here = str(host.physnet1_vfs[5])
    result = host.hook("migrate", teaming_guest("web1", [here], networks=["physnet1"]))
    assert (result.code, result.stdout) == (0, b"")
    assert [str(c.vf) for c in host.live_claims()] == [here]


def test_address_on_the_wrong_network_is_moved(host):
    wrong = str(host.physnet1_vfs[0])
    result = host.hook("migrate", teaming_guest("web1", [wrong], networks=["physnet2"]))
    assert addresses_in(result.stdout) == [str(host.physnet2_vfs[0])]


def test_vfs_claimed_or_used_by_running_guests_are_skipped(host):
    host.hook("migrate", teaming_guest("first", [SOURCE_VF], networks=["physnet2"]))
    running = teaming_guest("running", [str(host.physnet2_vfs[1])], networks=["physnet2"])
    host.add_running_guest(running, "running")
    result = host.hook("migrate", teaming_guest("second", [SOURCE_VF], networks=["physnet2"]))
    assert addresses_in(result.stdout) == [str(host.physnet2_vfs[2])]


def test_no_free_vf_refuses_all_or_nothing(host):
    for name in ("a", "b", "c"):
        assert host.hook("migrate", teaming_guest(name, [SOURCE_VF],
                                                  networks=["physnet2"])).code == 0
    before = host.live_claims()
    xml = teaming_guest("big", [SOURCE_VF, SOURCE_VF], networks=["physnet2", "physnet2"])
    result = host.hook("migrate", xml, domain="big")
    assert result.code == 1
    assert result.stdout == b""
    # the VF its first device was tentatively given is not counted as another guest's
    assert result.stderr == ("vfmigrate: no free VF in network 'physnet2' on this host "
                             "(4 VFs, 3 claimed or in use, 1 already given to this guest's "
                             "other device)\n")
    assert host.live_claims() == before


def test_no_free_vf_counts_one_vf_as_one_vf(host):
    only_first = ", ".join(str(vf) for vf in host.physnet1_vfs[1:])
    host.write_config({"physnet1": f"ens1f0\ndeny_vfs = {only_first}"})
    assert host.hook("migrate", teaming_guest("a", [SOURCE_VF])).code == 0
    result = host.hook("migrate", teaming_guest("b", [SOURCE_VF]), domain="b")
    assert (result.code, result.stderr) == (1, "vfmigrate: no free VF in network 'physnet1' "
                                            "on this host (1 VF, 1 claimed or in use)\n")


def test_unknown_network_is_refused(host):
    result = host.hook("migrate", teaming_guest("web1", [SOURCE_VF], networks=["physnet9"]),
                       domain="web1")
    assert result.code == 1
    assert "needs network 'physnet9'" in result.stderr
    assert "configured: physnet1, physnet2" in result.stderr
    assert result.stderr.count("\n") == 1
    assert host.live_claims() == []


def test_full_incoming_lifecycle_incoming_active_released(host):
    xml = teaming_guest("web1", [SOURCE_VF], networks=["physnet1"])
    rewritten = host.hook("migrate", xml, domain="web1").stdout
    for operation in ("prepare", "start"):
        assert host.hook(operation, rewritten, domain="web1").code == 0
        assert [c.state for c in host.live_claims()] == [INCOMING]
    assert host.hook("started", rewritten, domain="web1").code == 0
    assert [c.state for c in host.live_claims()] == [ACTIVE]
    assert host.hook("stopped", rewritten, domain="web1", extra="shutdown").code == 0
    assert host.hook("release", rewritten, domain="web1", extra="shutdown").code == 0
    assert host.live_claims() == []
    with host.ledger() as ledger:
        [row] = ledger.history()
    assert (row.state, row.reason) == ("released", "stopped: guest shut down")


def test_failed_incoming_migration_leaves_nothing(host):
    rewritten = host.hook("migrate", teaming_guest("web1", [SOURCE_VF],
                                                   networks=["physnet1"])).stdout
    host.hook("prepare", rewritten)
    host.hook("stopped", rewritten, extra="failed")
    host.hook("release", rewritten, extra="failed")
    assert host.live_claims() == []


def test_normal_start_claims_the_named_vfs_as_active(host):
    xml = teaming_guest("local", [str(host.physnet1_vfs[2])])
    assert host.hook("prepare", xml).code == 0
    assert host.hook("start", xml).code == 0
    [claim] = host.live_claims()
    assert (str(claim.vf), claim.network, claim.state) == \
        (str(host.physnet1_vfs[2]), "physnet1", ACTIVE)


def test_start_ignores_pci_devices_outside_the_configured_networks(host):
    assert host.hook("prepare", teaming_guest("gpu", ["0000:65:00.0"])).code == 0
    assert host.live_claims() == []


def test_start_naming_a_vf_reserved_for_an_incoming_guest_is_refused(host):
    rewritten = host.hook("migrate", teaming_guest("arriving", [SOURCE_VF],
                                                   networks=["physnet1"])).stdout
    taken = addresses_in(rewritten)[0]
    result = host.hook("prepare", teaming_guest("local", [taken]), domain="local")
    assert result.code == 1
    assert result.stderr == (f"vfmigrate: VF {taken} named by guest 'local' is claimed by "
                             "guest 'arriving' (incoming); give the guest another VF, or stop "
                             "the other guest first\n")
    assert [c.domain_name for c in host.live_claims()] == ["arriving"]


def test_start_naming_a_vf_a_running_guest_uses_is_refused(host):
    vf = str(host.physnet1_vfs[1])
    host.add_running_guest(teaming_guest("owner", [vf]), "owner")
    result = host.hook("start", teaming_guest("local", [vf]))
    assert result.code == 1
    assert "in use by running guest 'owner'" in result.stderr


def test_reconnect_reasserts_missing_claims_and_never_fails(host):
    vf = str(host.physnet1_vfs[3])
    xml = teaming_guest("survivor", [vf])
    host.add_running_guest(xml, "survivor")
    assert host.hook("reconnect", xml).code == 0
    [claim] = host.live_claims()
    assert (str(claim.vf), claim.state, claim.reason) == \
        (vf, ACTIVE, "reconnect: claim was missing")
    assert host.hook("reconnect", b"<domain><garbage").code == 0
    host.config_path.write_text("[nonsense\n")
    assert host.hook("reconnect", xml).code == 0


def test_reconnect_logs_a_vf_that_two_guests_name(host):
    vf = str(host.physnet1_vfs[3])
    host.hook("start", teaming_guest("first", [vf]))
    result = host.hook("reconnect", teaming_guest("second", [vf]), domain="second")
    assert result.code == 0
    assert f"VF {vf} named by guest 'second' is also claimed by guest 'first'" in result.stderr


def test_restore_is_a_filter_like_migrate(host):
    result = host.hook("restore", teaming_guest("saved", [SOURCE_VF], networks=["physnet1"]))
    assert result.code == 0
    assert addresses_in(result.stdout) == [str(host.physnet1_vfs[0])]
    assert [c.reason for c in host.live_claims()] == ["restore: for interface ua-vf0 "
                                                      "(VF 0000:5e:02.3)"]


def test_retry_of_a_migration_supersedes_the_stale_incoming_claims(host):
    xml = teaming_guest("web1", [SOURCE_VF], networks=["physnet1"])
    host.hook("migrate", xml)
    host.hook("migrate", xml)
    claims = host.live_claims()
    assert len(claims) == 1
    with host.ledger() as ledger:
        assert [c.reason for c in ledger.history()][-1] == "superseded by a new migrate"


def test_expired_incoming_claims_are_reclaimed(host):
    host.write_config({"physnet2": "0000:af:00.0"}, reservation_timeout=60)
    for name in ("a", "b", "c", "d"):
        host.hook("migrate", teaming_guest(name, [SOURCE_VF]), clock=lambda: 1000.0)
    host.add_running_guest(teaming_guest("a", [str(host.physnet2_vfs[0])]), "a")
    refused = host.hook("migrate", teaming_guest("e", [SOURCE_VF]), clock=lambda: 1030.0)
    assert refused.code == 1
    later = host.hook("migrate", teaming_guest("e", [SOURCE_VF]), clock=lambda: 1061.0)
    assert later.code == 0, later.stderr
    owners = sorted(c.domain_name for c in host.live_claims())
    assert owners == ["a", "e"]   # a is running so its claim stays; b, c, d expired
    for name in ("b", "c", "d"):
        assert f"it was reserved for guest '{name}', which never arrived" in later.stderr


def test_guest_without_vf_is_untouched_even_without_config(host):
    host.config_path.unlink()
    for operation in ("migrate", "restore", "prepare", "start", "started", "stopped",
                      "release", "reconnect", "attach"):
        result = host.hook(operation, plain_guest("plain"))
        assert (result.code, result.stdout, result.stderr) == (0, b"", ""), operation
    assert not host.state_dir.exists()


def test_vf_guest_on_unconfigured_host_starts_but_cannot_migrate_in(host):
    host.config_path.unlink()
    xml = teaming_guest("web1", [SOURCE_VF], networks=["physnet1"])
    assert host.hook("start", xml).code == 0
    result = host.hook("migrate", xml, domain="web1")
    assert result.code == 1
    assert "vfmigrate is not configured on this host" in result.stderr


def test_network_pool_interfaces_are_left_to_libvirt(host):
    xml = teaming_guest("pool", [])
    xml = xml.replace(b"<devices>\n", b"<devices>\n<interface type='network'><source "
                      b"network='pool'/><teaming type='transient' persistent='ua-x'/>"
                      b"</interface><hostdev mode='subsystem' type='usb'/>\n")
    result = host.hook("migrate", xml)
    assert (result.code, result.stdout) == (0, b"")
    assert not host.state_dir.exists()


def test_hostdev_teaming_is_rewritten(host):
    xml = teaming_guest("db", [SOURCE_VF], networks=["physnet1"], hostdev=True)
    result = host.hook("migrate", xml)
    assert result.code == 0
    [device] = domxml.parse(result.stdout).devices
    assert (device.kind, str(device.address)) == ("hostdev", str(host.physnet1_vfs[0]))


def test_metadata_only_vfs_are_claimed_and_their_address_rewritten(host):
    from vfmigrate import METADATA_NAMESPACE
    host.write_config(allow_stand_ins="yes")   # 'simulated' is a testbed kind
    xml = plain_guest("batch").replace(b"<memory", (
        f"<metadata><v:vfs xmlns:v='{METADATA_NAMESPACE}'>"
        f"<v:vf mac='52:54:00:00:00:aa' network='physnet2' address='{SOURCE_VF}' "
        f"replug='on-arrival' device='interface'/>"
        f"<v:vf mac='52:54:00:00:00:bb' network='physnet1' device='simulated'/>"
        f"<v:vf mac='52:54:00:00:00:cc' network='physnet1' address='{SOURCE_VF}'/>"
        f"</v:vfs></metadata><memory").encode())
    result = host.hook("migrate", xml)
    assert result.code == 0, result.stderr
    devices = domxml.parse(result.stdout, allow_stand_ins=True).devices
    assert [(d.kind, str(d.address), d.replug) for d in devices] == [
        ("metadata", str(host.physnet2_vfs[0]), "pending"),   # the listener plugs it in
        ("metadata", str(host.physnet1_vfs[0]), None)]
    # The third entry is a label its unplugged device left behind: it holds nothing.
    assert sorted(c.network for c in host.live_claims()) == ["physnet1", "physnet2"]


def test_allow_and_deny_lists_limit_the_pool(host):
    first, second, third = (str(vf) for vf in host.physnet1_vfs[:3])
    host.config_path.write_text(host.config_path.read_text()
                                .replace("pfs = ens1f0", f"pfs = ens1f0\ndeny_vfs = {first}\n"
                                         "allow_vfs = 0000:3b:01.[0-2]"))
    results = [host.hook("migrate", teaming_guest(n, [SOURCE_VF], networks=["physnet1"]))
               for n in ("a", "b", "c")]
    assert [addresses_in(r.stdout) for r in results[:2]] == [[second], [third]]
    assert results[2].code == 1
    assert "(2 VFs, 2 claimed or in use)" in results[2].stderr


def test_guest_already_running_here_is_refused(host):
    xml = teaming_guest("web1", [SOURCE_VF], networks=["physnet1"])
    host.add_running_guest(xml, "web1")
    result = host.hook("migrate", xml, domain="web1")
    assert result.code == 1
    assert "already running on this host" in result.stderr
    assert host.live_claims() == []


def test_other_operations_and_bad_argv(host):
    xml = teaming_guest("web1", [SOURCE_VF], networks=["physnet1"])
    assert host.hook("attach", xml).code == 0
    assert host.live_claims() == []
    import io
    from vfmigrate import hook
    stderr = io.StringIO()
    assert hook.main(["vfmigrate"], io.BytesIO(b""), io.BytesIO(), stderr=stderr) == 2
    assert stderr.getvalue().startswith("vfmigrate: usage: ")
