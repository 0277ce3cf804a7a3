"""``python -m hts.execution.watchdog PID CMD...``: run CMD for as long as process PID lives.

Parsl's HTEX interchange and a local worker pool are processes of their own:
when the driver is SIGKILLed (a lost node's process, ``kill -9``, the OOM
killer) they live on, holding cores, until their heartbeats time out minutes
later — racing the next run for the machine.  The driver starts them through
this wrapper instead: it runs CMD in its own process group, checks every
second that the driver (PID) is still there, and when it is gone stops the
whole group (SIGTERM, then SIGKILL after a grace period).  Standard input and
output pass through untouched (Parsl hands the interchange its settings on
stdin), and the wrapper exits with CMD's status.
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
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m hts.execution.watchdog PID CMD...", file=sys.stderr)
        return 2
    pid, cmd = int(argv[0]), argv[1:]
    child = subprocess.Popen(cmd, start_new_session=True)

    def stop(signum=signal.SIGTERM, frame=None) -> None:
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
