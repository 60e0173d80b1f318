"""End-to-end tier: vfmigrate on real libvirtd hosts (tests/testbed), real QEMU
(TCG) and real ``virsh migrate --live``.  Needs root."""

from __future__ import annotations

import os
import signal

import pytest

from tests.testbed.fixtures import linux_guest_image  # noqa: F401  (a session fixture)

from .vfhosts import vf_testbed


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
