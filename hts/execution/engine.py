"""Engines: where stage tasks run.  The only module family that imports Parsl.

An engine takes (resource label, function, arguments) and returns a
``concurrent.futures.Future``.  The driver never knows which engine it has.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from hts.execution.sites import Site, build_parsl_config, describe_config

__all__ = ["ParslEngine", "SerialEngine"]

log = logging.getLogger("hts.execution")


class SerialEngine:
    """Runs each task at once in the calling thread: for debugging and profiling."""

    name = "serial"

    def workers(self, label: str) -> int:
        return 1

    def submit(self, label: str, fn: Callable, *args) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except Exception as err:  # delivered like a remote failure
            fut.set_exception(err)
        return fut

    def launcher(self, label: str, ranks: int | None = None) -> list[str]:
        return ["mpiexec", "-n", str(ranks)] if ranks and ranks > 1 else []

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

    def describe(self) -> str:
        parts = [f"{label}: {text}" for label, text in describe_config(self.config)]
        return f"site {self.site.name} ({'; '.join(parts)}), run_dir {self.config.run_dir}"

    def workers(self, label: str) -> int:
        return self.site.executor(label).total_workers()

    def launcher(self, label: str, ranks: int | None = None) -> list[str]:
        """How tasks on this label start a parallel code (``mpiexec -n 4``, ``srun …``)."""
        return self.site.executor(label).launch_prefix(ranks)

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
        self._dfk.cleanup()
