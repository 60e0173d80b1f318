"""pytest fixtures for tests that need real libvirt hosts.

Use from any test module (import the fixtures you need into the module or a conftest)::

    from tests.testbed.fixtures import linux_guest_image, testbed_factory  # noqa: F401

    def test_something(testbed_factory):
        def prepare(testbed):                      # runs after create(), before start()
            for host in testbed.hosts:
                host.install_hook("vfmigrate", HOOK, interpreter=sys.executable)
                (host.etc_vfmigrate / "vfmigrate.conf").write_text(...)
        testbed = testbed_factory(2, prepare=prepare)
        a, b = testbed.hosts
        ...

For a module- or session-scoped testbed write your own fixture around :func:`started_testbed`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from .linux_guest import LinuxGuestImage, build_linux_guest
from .testbed import Testbed, default_cache_dir

Prepare = Callable[[Testbed], None]


@contextmanager
def started_testbed(
    host_count: int = 2, *, prepare: Prepare | None = None, **options: Any
) -> Iterator[Testbed]:
    """A started testbed, torn down on exit; ``prepare`` runs between create() and start()."""
    testbed = Testbed(host_count, start_on_enter=False, **options)
    with testbed:
        if prepare is not None:
            prepare(testbed)
        testbed.start()
        yield testbed


@pytest.fixture
def testbed_factory() -> Iterator[Callable[..., Testbed]]:
    """``make(host_count=2, *, prepare=None, **Testbed options)`` -> a started Testbed;
    every testbed made is torn down after the test, whatever happened."""
    made: list[Testbed] = []

    def make(host_count: int = 2, *, prepare: Prepare | None = None, **options: Any) -> Testbed:
        testbed = Testbed(host_count, start_on_enter=False, **options)
        made.append(testbed)
        testbed.create()
        if prepare is not None:
            prepare(testbed)
        testbed.start()
        return testbed

    yield make
    errors = []
    for testbed in reversed(made):
        try:
            testbed.teardown()
        except Exception as error:  # tear down the others before reporting
            errors.append(error)
    if errors:
        raise errors[0]


@pytest.fixture(scope="session")
def linux_guest_image() -> LinuxGuestImage:
    """The tiny Linux guest, built once per cache key (see linux_guest.py)."""
    return build_linux_guest(default_cache_dir())
