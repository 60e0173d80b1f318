"""End-to-end tier: vfmigrate on real libvirt hosts (tests/testbed), real QEMU (TCG) and real
``virsh migrate --live``.  Needs root.

Every test runs on the system's libvirt 9.0 + QEMU 7.2 with libvirtd (``system``) and on
libvirt 11.3 + QEMU 10 from bookworm-backports with the modular daemons (``modular``). The
tests marked ``daemon_layout`` (where it matters which daemon runs QEMU and the hooks: the
listener and the daemon, faults of the daemon, migration in each mode) also run on 11.3
with libvirtd (``backports``), which differs from ``modular`` only in that.  Tests marked
``between_versions`` (a guest moving, refused or rolled back: where one version meets the
other's XML and migration stream) also run from ``system`` to ``modular`` and back.
``$VFMIGRATE_TEST_LIBVIRT`` names the flavours to run instead, each then for every test
(``backports`` too, and between ``system`` and each other one named).  A test's id names
its flavours (``system``, ``modular``, ``system-to-modular``), and the cost summary prints
the versions and daemons.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.testbed.fixtures import linux_guest_image  # noqa: F401  (a session fixture)
from tests.testbed.flavours import BASELINE_FLAVOUR, flavours_for_every_test, flavours_to_test

from .vfhosts import libvirt_flavours, vf_testbed

def libvirt_setups(between_versions: bool, daemon_layout: bool) -> list[tuple[str, str]]:
    """(flavour of host a, flavour of host b) for each run of a test."""
    every_test = flavours_for_every_test()
    names = flavours_to_test() if daemon_layout else every_test
    setups = [(name, name) for name in names]
    if between_versions and BASELINE_FLAVOUR in every_test:
        for other in every_test:
            if other != BASELINE_FLAVOUR:
                setups += [(BASELINE_FLAVOUR, other), (other, BASELINE_FLAVOUR)]
    return setups


def pytest_generate_tests(metafunc):
    if "libvirt_setup" in metafunc.fixturenames:
        marked = metafunc.definition.get_closest_marker
        setups = libvirt_setups(marked("between_versions") is not None,
                                marked("daemon_layout") is not None)
        metafunc.parametrize("libvirt_setup", setups, indirect=True,
                             ids=[a if a == b else f"{a}-to-{b}" for a, b in setups])


@pytest.fixture(autouse=True)
def libvirt_setup(request):
    """Makes the test's testbeds run the flavours of its parameter; says which in the
    cost summary (tests/conftest.py reads the ``libvirt`` user property)."""
    with libvirt_flavours(request.param) as flavours:
        first, second = flavours
        described = (first.label if first == second
                     else f"host a {first.label} / host b {second.label}")
        request.node.user_properties.append(("libvirt", described))
        yield flavours


def pytest_configure(config):
    # Turn SIGTERM into KeyboardInterrupt so that fixture teardowns still run.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))


@pytest.fixture
def hosts():
    """Two hosts, 4 simulated VFs each, listeners running and READY."""
    if os.geteuid() != 0:
        pytest.skip("the testbed needs root")
    with vf_testbed(2) as vf_hosts:
        yield vf_hosts
