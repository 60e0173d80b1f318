#!/usr/bin/python3
"""A libvirt qemu hook for testing the testbed: records each call, passes the XML through.

Appends one JSON line per call to /var/lib/vfmigrate/hook-calls.jsonl inside the host:
{"argv": [...], "hostname": ..., "name": <domain name from the XML>}; sends the same to the
host's journal (SYSLOG_IDENTIFIER=vfmt-record-hook) when python-systemd is importable.
For the XML filters (migrate, restore) it prints the XML back, with <description> set to the
contents of /etc/vfmigrate/hook-description when that file exists. When
/etc/vfmigrate/fail-migrate exists, a migrate call prints that file to stderr and exits 1.
"""

import json
import socket
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

CALLS = Path("/var/lib/vfmigrate/hook-calls.jsonl")
DESCRIPTION = Path("/etc/vfmigrate/hook-description")
FAIL_MIGRATE = Path("/etc/vfmigrate/fail-migrate")
FILTERS = {"migrate", "restore"}


def main(argv: list[str]) -> int:
    xml = sys.stdin.read()
    domain = ElementTree.fromstring(xml)
    operation = argv[2] if len(argv) > 2 else ""
    record = {"argv": argv[1:], "hostname": socket.gethostname(), "name": domain.findtext("name")}
    with CALLS.open("a") as calls:
        calls.write(json.dumps(record) + "\n")
    try:
        from systemd import journal  # type: ignore[attr-defined]
    except ImportError:
        pass
    else:
        journal.send(
            f"hook {' '.join(argv[1:])}",
            SYSLOG_IDENTIFIER="vfmt-record-hook",
            VFMT_OPERATION=operation,
            VFMT_DOMAIN=record["name"] or "",
        )
    if operation == "migrate" and FAIL_MIGRATE.exists():
        sys.stderr.write(FAIL_MIGRATE.read_text())
        return 1
    if operation in FILTERS:
        if DESCRIPTION.exists():
            description = domain.find("description")
            if description is None:
                description = ElementTree.Element("description")
                domain.insert(1, description)
            description.text = DESCRIPTION.read_text().strip()
            xml = ElementTree.tostring(domain, encoding="unicode")
        sys.stdout.write(xml)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
