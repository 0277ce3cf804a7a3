"""Processes that must not outlive their driver: Parsl's HTEX interchange and local worker pools.

They are processes of their own: when the driver is SIGKILLed (a lost node's
process, ``kill -9``, the OOM killer) they live on, holding cores, until their
heartbeats time out minutes later — racing the next run for the machine.  The
driver starts them through this module:

``python -m hts.execution.watchdog --exec PID CMD...``
    for a process the driver starts itself (the interchange): asks the kernel
    to SIGKILL it when its parent dies (Linux ``PR_SET_PDEATHSIG``), then
    becomes CMD (``exec``), so signals, stdin (Parsl hands the interchange its
    settings there) and exit status are CMD's own, exactly as without it.
``python -m hts.execution.watchdog PID CMD...``
    for a process started through a provider's shell (a local worker pool,
    whose parent is not the driver): runs CMD in its own process group, checks
    every second that the driver (PID) is still there, and when it is gone stops
    the group (SIGTERM, then SIGKILL after a grace period).  A SIGTERM to the
    wrapper (the provider cancelling the block) is passed on; Ctrl-C at a
    terminal is left to the driver, which shuts the pool down in order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

__all__ = ["alive", "main"]

GRACE_S = 5.0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's (cannot happen for our driver, but safe)
        return True
    return True


def main(argv: list[str]) -> int:
    if argv[:1] == ["--exec"]:
        return _exec_with_parent(argv[1:])
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m hts.execution.watchdog [--exec] PID CMD...", file=sys.stderr)
        return 2
    pid, cmd = int(argv[0]), argv[1:]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the driver's to handle
    child = subprocess.Popen(cmd, start_new_session=True)

    def stop() -> None:
        try:
            os.killpg(child.pid, signal.SIGTERM)
            child.wait(GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, lambda s, f: (stop(), sys.exit(143)))
    while child.poll() is None:
        if not alive(pid):
            stop()
            break
        time.sleep(1.0)
    return child.wait()


def _exec_with_parent(argv: list[str]) -> int:
    """Become CMD, to be SIGKILLed by the kernel when the parent PID dies (Linux)."""
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m hts.execution.watchdog --exec PID CMD...", file=sys.stderr)
        return 2
    parent, cmd = int(argv[0]), argv[1:]
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
        if os.getppid() != parent:  # the parent died before the request took effect
            return 1
    os.execvp(cmd[0], cmd)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
