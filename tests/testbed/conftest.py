"""Fixtures and markers for the testbed's own tests."""

from __future__ import annotations

import signal
from types import FrameType

import pytest

from .fixtures import linux_guest_image, testbed_factory

__all__ = ["linux_guest_image", "testbed_factory"]


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: boots a Linux guest under TCG (tens of seconds)")
    # A SIGTERM (CI timeout, `kill`) then unwinds like Ctrl-C: fixture teardowns run and
    # the testbeds' namespaces and daemons are removed instead of left behind.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
