"""The MPI engine: ``mpiexec -n N hts run CAMPAIGN --engine mpi`` (or ``srun -n N …``).

Rank 0 runs the driver — the only process that opens the store — and hands
tasks to ranks 1…N-1, one task per idle rank; each worker rank keeps its
models loaded across tasks, as a Parsl worker does.  All MPI calls on rank 0
happen in one dispatcher thread, so the driver's futures behave as with any
other engine.  With one rank, tasks run in the driver's thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future

__all__ = ["MPIEngine", "mpi_rank"]

log = logging.getLogger("hts.execution")

_TASK, _STOP = 1, 2


def mpi_rank() -> int:
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_rank()


class RemoteTaskError(RuntimeError):
    """A task that raised on a worker rank; the message carries its traceback."""


class MPIEngine:
    name = "mpi"

    def __init__(self) -> None:
        from mpi4py import MPI

        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        if self.rank == 0 and self.size > 1:
            self._thread = threading.Thread(target=self._dispatch, name="hts-mpi", daemon=True)
            self._thread.start()

    def describe(self) -> str:
        return f"mpi: {self.size} ranks (rank 0 drives and writes the store, {max(self.size - 1, 1)} run tasks)"

    def workers(self, label: str) -> int:
        return max(1, self.size - 1)

    def launcher(self, label: str, ranks: int | None = None) -> list[str]:
        if ranks and ranks > 1:
            from hts.execution.sites import SiteError

            raise SiteError(
                "a DFT job on several ranks cannot be launched from inside an MPI run; "
                "use the parsl engine with a site whose dft executor has an mpi_launcher"
            )
        return []

    # -- rank 0 ---------------------------------------------------------------

    def submit(self, label: str, fn: Callable, *args) -> Future:
        fut: Future = Future()
        if self.size == 1:
            try:
                fut.set_result(fn(*args))
            except Exception as err:
                fut.set_exception(err)
            return fut
        self._queue.put((fut, fn, args))
        return fut

    def _dispatch(self) -> None:
        """Send queued tasks to idle ranks, collect results; the only thread that talks MPI."""
        from mpi4py import MPI

        idle = list(range(1, self.size))
        running: dict[int, Future] = {}
        stopping = False
        while True:
            while idle and not stopping:
                try:
                    item = self._queue.get(timeout=0.01 if running else 0.1)
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                fut, fn, args = item
                if not fut.set_running_or_notify_cancel():
                    continue
                dest = idle.pop()
                try:
                    self.comm.send((_TASK, fn, args), dest=dest, tag=_TASK)
                except Exception as err:  # not picklable, say
                    idle.append(dest)
                    fut.set_exception(err)
                    continue
                running[dest] = fut
            if stopping and not running:
                break
            if running:
                status = MPI.Status()
                if self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=_TASK, status=status):
                    src = status.Get_source()
                    ok, value = self.comm.recv(source=src, tag=_TASK)
                    fut = running.pop(src)
                    idle.append(src)
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(RemoteTaskError(value))
                elif not idle or self._queue.empty():
                    threading.Event().wait(0.002)
        for dest in range(1, self.size):
            self.comm.send((_STOP, None, None), dest=dest, tag=_TASK)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    # -- ranks 1…N-1 ----------------------------------------------------------

    def serve(self) -> int:
        """Run tasks from rank 0 until told to stop; returns the number of tasks run."""
        n = 0
        while True:
            kind, fn, args = self.comm.recv(source=0, tag=_TASK)
            if kind == _STOP:
                return n
            try:
                reply = (True, fn(*args))
            except Exception as err:
                reply = (
                    False,
                    f"{type(err).__name__}: {err}\n(on rank {self.rank})\n{traceback.format_exc()[-2000:]}",
                )
            self.comm.send(reply, dest=0, tag=_TASK)
            n += 1
