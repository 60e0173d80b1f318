"""Hook decisions reach the journal with structured fields (sender injected)."""

from __future__ import annotations

import io

import pytest

from vfmigrate import hook
from vfmigrate.logs import Event

from .domains import guest_uuid, teaming_guest

journal = pytest.importorskip("systemd.journal")


def run_with_journal(host, operation, xml, domain):
    sent = []

    def sender(MESSAGE, **fields):  # python-systemd's journal.send signature
        sent.append({"MESSAGE": MESSAGE, **fields})

    stdout, stderr = io.BytesIO(), io.StringIO()
    code = hook.main(["vfmigrate", domain, operation, "begin", "-"], io.BytesIO(xml), stdout,
                     stderr=stderr, environ={"VFMIGRATE_CONFIG": str(host.config_path)},
                     journal_sender=sender)
    return code, stdout.getvalue(), stderr.getvalue(), sent


def test_reservation_is_logged_with_fields(host):
    xml = teaming_guest("web1", ["0000:5e:02.3"], networks=["physnet2"])
    code, _, stderr, sent = run_with_journal(host, "migrate", xml, "web1")
    assert (code, stderr) == (0, "")
    [entry] = sent
    assert entry["MESSAGE_ID"] == Event.RESERVED.message_id
    assert entry["SYSLOG_IDENTIFIER"] == "vfmigrate"
    assert (entry["VFMIGRATE_DOMAIN"], entry["VFMIGRATE_VF"], entry["VFMIGRATE_NETWORK"],
            entry["VFMIGRATE_ACTION"]) == ("web1", "0000:af:00.2", "physnet2", "reserved")
    assert entry["MESSAGE"] == ("guest web1 is arriving by migration: VF 0000:af:00.2 of "
                                "network physnet2 reserved for its interface ua-vf0 "
                                "(VF 0000:5e:02.3 on the source)")
    assert entry["PRIORITY"] == "6"
    assert guest_uuid("web1")


def test_refusal_goes_to_journal_and_one_line_to_stderr(host):
    xml = teaming_guest("web1", ["0000:5e:02.3"], networks=["physnet9"])
    code, _, stderr, sent = run_with_journal(host, "migrate", xml, "web1")
    assert code == 1
    assert stderr.count("\n") == 1 and "needs network 'physnet9'" in stderr
    [entry] = sent
    assert entry["MESSAGE_ID"] == Event.REFUSED.message_id
    assert entry["PRIORITY"] == "3"
    assert entry["VFMIGRATE_DOMAIN"] == "web1"
