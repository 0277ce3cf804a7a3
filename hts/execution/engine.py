"""Engines: where stage tasks run.  The only module family that imports Parsl.

An engine takes (resource label, function, arguments) and returns a
``concurrent.futures.Future``.  The driver never knows which engine it has:
everything it may ask is the :class:`Engine` protocol, and
tests/execution/test_engine.py holds every engine to it alike.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Protocol, runtime_checkable

from hts.execution.parsl_config import build_parsl_config, describe_config
from hts.execution.site_schema import Site

__all__ = ["Engine", "ParslEngine", "SerialEngine", "local_launcher"]

log = logging.getLogger("hts.execution")


@runtime_checkable
class Engine(Protocol):
    """What the driver needs from wherever its tasks run.

    ``workers(label)``
        How many tasks on ``label`` run at once (≥ 1): the driver keeps that
        many in flight, plus backpressure headroom.
    ``submit(label, fn, *args)``
        Run ``fn(*args)`` on a worker of ``label``; the future holds its
        result, or the exception the task raised (for a remote task, an
        exception that carries the remote traceback).  ``fn`` and ``args``
        must be picklable for engines that run tasks in other processes.
    ``launcher(label, ranks)``
        The words put in front of a parallel code's command line so that a
        task on ``label`` starts it on exactly ``ranks`` MPI ranks (DFT).
        ``[]`` means "run it as one plain process" and is only ever the answer
        for one rank; for one rank an engine may also return its launcher on
        one rank (a Parsl site whose executor names an ``mpi_launcher``, so
        the code sees the same MPI environment at any size).  ``ranks=None``
        is the engine's default for the label (the site's ``ranks_per_task``
        for Parsl, 1 otherwise).  An engine that cannot start a code on that
        many ranks from its tasks raises
        :class:`~hts.execution.site_schema.SiteError`, never ``[]``; the
        driver asks in its preflight, so that happens before any work.
    ``close()``
        Release workers and blocks; calling it again does nothing.
    ``describe()``
        One line for the log: what runs where.
    """

    name: str

    def workers(self, label: str) -> int: ...

    def submit(self, label: str, fn: Callable, *args) -> Future: ...

    def launcher(self, label: str, ranks: int | None = None) -> list[str]: ...

    def close(self) -> None: ...

    def describe(self) -> str: ...


def local_launcher(words: list[str]) -> list[str]:
    """``words`` with the launcher taken from this interpreter's environment when it has one.

    A parallel code started from the driver's own process (the serial engine,
    Parsl's thread pool) uses the ``mpiexec`` installed next to the interpreter
    (PyPI's MPICH, the one GPAW and mpi4py are built against) even when the
    environment was never activated, without touching the driver's PATH.
    Elsewhere the bare name stays, for the worker's PATH to resolve.
    """
    if not words:
        return words
    tool = Path(sys.executable).parent / words[0]
    return [str(tool), *words[1:]] if tool.is_file() else list(words)


def run_now(fn: Callable, *args) -> Future:
    """A finished future of ``fn(*args)``: its result, or the exception it raised."""
    fut: Future = Future()
    try:
        fut.set_result(fn(*args))
    except Exception as err:  # delivered like a remote failure
        fut.set_exception(err)
    return fut


class SerialEngine:
    """Runs each task at once in the calling thread: for debugging and profiling.

    Its tasks run in the driver's process on this machine, so a parallel code
    is started with ``mpiexec -n ranks`` (see :func:`local_launcher`).
    """

    name = "serial"

    def workers(self, label: str) -> int:
        return 1

    def submit(self, label: str, fn: Callable, *args) -> Future:
        return run_now(fn, *args)

    def launcher(self, label: str, ranks: int | None = None) -> list[str]:
        return local_launcher(["mpiexec", "-n", str(ranks)]) if ranks and ranks > 1 else []

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return "serial (in the driver thread)"


class ParslEngine:
    """Parsl executors built from a site; one DataFlowKernel owned by this object, not global."""

    name = "parsl"

    def __init__(
        self,
        site: Site,
        run_dir: Path,
        retries: int = 0,
        *,
        store: Path | None = None,
        allocation: bool = False,
    ) -> None:
        from parsl.dataflow.dflow import DataFlowKernel

        self.site = site
        self.config = build_parsl_config(
            site, run_dir, retries=retries, store=store, allocation=allocation
        )
        log.info("parsl config: %s", self.describe())
        self._dfk = DataFlowKernel(self.config)
        self._apps: dict[tuple[int, str], Callable] = {}
        self._closed = False

    def describe(self) -> str:
        parts = [f"{label}: {text}" for label, text in describe_config(self.config)]
        return f"site {self.site.name} ({'; '.join(parts)}), run_dir {self.config.run_dir}"

    def workers(self, label: str) -> int:
        return self.site.executor(label).total_workers()

    def launcher(self, label: str, ranks: int | None = None) -> list[str]:
        """The executor's ``mpi_launcher`` for ``ranks`` (``mpiexec -n 4``, ``srun …``).

        A thread-pool executor runs its tasks in the driver's process, so its
        launcher is resolved as the serial engine's is (:func:`local_launcher`).
        """
        spec = self.site.executor(label)
        words = spec.launch_prefix(ranks)
        return local_launcher(words) if spec.kind == "threads" else words

    def submit(self, label: str, fn: Callable, *args) -> Future:
        from parsl import python_app

        label = self.site.label_for(label)  # a clear error when the site lacks it
        key = (id(fn), label)
        if key not in self._apps:
            self._apps[key] = python_app(
                fn, data_flow_kernel=self._dfk, executors=[label], cache=False
            )
        return self._apps[key](*args)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._dfk.cleanup()
