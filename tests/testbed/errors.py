"""The testbed's exceptions: one hierarchy, each carrying the fields a failing test needs."""

from __future__ import annotations

from collections.abc import Sequence


class TestbedError(Exception):
    """Anything the testbed could not do."""

    __test__ = False  # not a pytest test class despite the name


class CommandFailed(TestbedError):
    """A command exited non-zero; the message carries its stderr."""

    def __init__(self, *, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"command {list(self.argv)} exited {returncode}: {stderr.strip() or stdout.strip()}"
        )


class WaitTimeout(TestbedError):
    """A bounded poll ran out of time; ``details`` holds the relevant log tail."""

    def __init__(self, *, what: str, timeout: float, details: str) -> None:
        self.what = what
        self.timeout = timeout
        self.details = details
        message = f"timed out after {timeout:g} s waiting for {what}"
        super().__init__(f"{message}\n{details}" if details else message)


class TeardownIncomplete(TestbedError):
    """Teardown finished but some steps failed; ``failures`` lists them."""

    def __init__(self, failures: Sequence[str]) -> None:
        self.failures = tuple(failures)
        super().__init__("testbed teardown incomplete:\n" + "\n".join(self.failures))
