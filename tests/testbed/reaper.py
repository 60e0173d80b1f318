"""Run one command as a child subreaper's child: ``reaper.py PID_FILE -- COMMAND ARGS...``.

Why: libvirtd double-forks QEMU, so QEMU's parent is the nearest subreaper, normally PID 1.
PID 1 on this machine kind reaps orphans only every ~2 s, and libvirt counts a zombie as a
live QEMU: every ``virsh destroy`` and every migration source took ~1.9 s longer. Under this
reaper the orphans are reaped at once.

Contract: writes the command's PID to PID_FILE as soon as it runs; forwards SIGTERM, SIGINT
and SIGHUP to the command while it runs (afterwards they end the reaper); reaps every child,
own or adopted; exits once no child is left, with the command's exit status (128 + signal
for a signal). Only the standard library: it runs under any python3.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from types import FrameType

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        sys.stderr.write("usage: reaper.py PID_FILE -- COMMAND [ARGS...]\n")
        return 2
    pid_file, command = argv[1], argv[3:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.stderr.write(f"reaper: prctl: {os.strerror(ctypes.get_errno())}\n")
        return 1
    child = os.fork()
    if child == 0:
        try:
            os.execvp(command[0], command)
        finally:
            os._exit(127)
    temporary = f"{pid_file}.tmp"
    with open(temporary, "w") as handle:
        handle.write(f"{child}\n")
    os.replace(temporary, pid_file)

    command_status: int | None = None

    def forward(signum: int, frame: FrameType | None) -> None:
        if command_status is None:
            os.kill(child, signum)
        else:
            raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            command_status = code if code >= 0 else 128 - code
    return command_status if command_status is not None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
