"""The hook's own rtnetlink requests (vfmigrate.rtnl) against this machine's kernel.

No PF here has VFs, so the requests go to ``lo`` in a network namespace of their own:
a well-formed VF request passes the kernel's attribute validation and reaches the
driver, which has no VF operations (EOPNOTSUPP); a malformed one is stopped by the
validation (ERANGE).  The SR-IOV lab applies the same requests to igb VFs and checks
them with ``ip link``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from .conftest import PACKAGE_PARENT

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="needs root and unshare(1) for a network namespace")

PROBE = """
import errno, json, sys, _struct
sys.path.insert(0, sys.argv[1])
from vfmigrate import rtnl
results = {}
route = rtnl.RouteSocket()
[lo] = route.link_lookup(ifname="lo")
results["absent"] = route.link_lookup(ifname="no-such-netdev")
requests = {"trust": {"trust": 1}, "spoofchk": {"spoofchk": 0},
            "rate": {"rate": {"min_tx_rate": 0, "max_tx_rate": 100}},
            "link_state": {"link_state": 2}, "vlan": {"vlan": {"vlan": 5, "qos": 3}},
            "mac": {"mac": "52:54:00:00:00:01"}}
def outcome(index, request):
    try:
        route.link("set", index=index, vf=dict(request, vf=0))
        return "ok"
    except OSError as error:
        return "EOPNOTSUPP" if error.errno == errno.EOPNOTSUPP else errno.errorcode[error.errno]
for name, request in requests.items():
    results[name] = outcome(lo, request)
results["no such ifindex"] = outcome(99999, requests["trust"])
rtnl._vf_payload = lambda key, vf, value: _struct.pack("=I", vf)   # truncated payload
results["truncated"] = outcome(lo, requests["trust"])
route.close()
print(json.dumps(results))
"""


def test_requests_are_well_formed_for_the_kernel():
    result = subprocess.run(["unshare", "-n", sys.executable, "-I", "-c", PROBE,
                             str(PACKAGE_PARENT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    assert results.pop("absent") == []
    assert results == {"trust": "EOPNOTSUPP", "spoofchk": "EOPNOTSUPP", "rate": "EOPNOTSUPP",
                       "link_state": "EOPNOTSUPP", "vlan": "EOPNOTSUPP", "mac": "EOPNOTSUPP",
                       "no such ifindex": "ENODEV", "truncated": "ERANGE"}
