"""The MPI engine: ``mpiexec -n N hts run CAMPAIGN --engine mpi`` (or ``srun -n N …``).

Rank 0 runs the driver — the only process that opens the store — and hands
tasks to ranks 1…N-1 through :class:`mpi4py.futures.MPICommExecutor`, one
task per idle rank; each worker rank keeps its models loaded across tasks, as
a Parsl worker does.  All of rank 0's MPI traffic happens in mpi4py's manager
thread, so the driver's futures behave as with any other engine.  With one
rank, tasks run in the driver's thread.

mpi4py's executor replaced a hand-written task farm that polled every 2 ms:
it measured faster per task and no slower on the campaign test (figures in
the README's "MPI mode" paragraph), a task's exception comes back with its own type
(plus the worker's traceback as ``__cause__``), and idle ranks back off to
1 ms sleeps instead of spinning in a blocking receive.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future

from hts.execution.engine import run_now

__all__ = ["MPIEngine", "mpi_rank"]

log = logging.getLogger("hts.execution")


def mpi_rank() -> int:
    """This process's rank in ``MPI.COMM_WORLD`` (0 drives, the others serve)."""
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_rank()


class MPIEngine:
    """Tasks on the ranks of one MPI world; the driver on rank 0.

    Every rank constructs one; rank 0 then uses it as an engine and the others
    call :meth:`serve` (``hts run --engine mpi`` does both).  The split of the
    world into a manager and workers is collective, so it happens in
    :meth:`__init__` on rank 0 and in :meth:`serve` on the others.

    ``launcher`` is ``[]`` for one rank and refuses more: a task already runs
    on a rank of an MPI world, and starting a nested ``mpiexec`` from inside
    one is not supported by the MPI libraries this runs under.
    """

    name = "mpi"

    def __init__(self, comm=None) -> None:
        from mpi4py import MPI

        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self._context = None
        self._pool = None
        if self.rank == 0 and self.size > 1:
            from mpi4py.futures import MPICommExecutor

            self._context = MPICommExecutor(self.comm, root=0)
            self._pool = self._context.__enter__()

    def describe(self) -> str:
        return (
            f"mpi: {self.size} ranks (rank 0 drives and writes the store, "
            f"{max(self.size - 1, 1)} run tasks)"
        )

    def workers(self, label: str) -> int:
        return max(1, self.size - 1)

    def launcher(self, label: str, ranks: int | None = None) -> list[str]:
        if ranks and ranks > 1:
            from hts.execution.site_schema import SiteError

            raise SiteError(
                "a DFT job on several ranks cannot be launched from inside an MPI run; "
                "use the parsl engine with a site whose dft executor has an mpi_launcher"
            )
        return []

    # -- rank 0 ---------------------------------------------------------------

    def submit(self, label: str, fn: Callable, *args) -> Future:
        if self._pool is None:
            if self.rank != 0:
                raise RuntimeError(f"rank {self.rank} serves tasks; only rank 0 submits them")
            return run_now(fn, *args)
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        """Wait for running tasks, then release the worker ranks (their :meth:`serve` returns)."""
        context, self._context, self._pool = self._context, None, None
        if context is not None:
            context.__exit__(None, None, None)

    # -- ranks 1…N-1 ----------------------------------------------------------

    def serve(self) -> None:
        """Run tasks from rank 0 until rank 0 closes its engine."""
        if self.rank == 0:
            raise RuntimeError("rank 0 drives; serve() is for ranks 1…N-1")
        from mpi4py.futures import MPICommExecutor

        with MPICommExecutor(self.comm, root=0) as pool:
            assert pool is None  # noqa: S101 - a worker rank never gets the executor
