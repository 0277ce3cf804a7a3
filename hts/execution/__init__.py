"""Execution engines and sites: the only package that imports Parsl (or mpi4py)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["make_engine"]


def make_engine(
    kind: str,
    site_name: str,
    run_dir: Path,
    retries: int = 0,
    *,
    store: Path | None = None,
    allocation: bool = False,
):
    """An engine by kind: ``parsl`` (from the site file), ``mpi`` (under mpiexec/srun) or ``serial``."""
    from hts.execution.engine import ParslEngine, SerialEngine
    from hts.execution.sites import load_site

    if kind == "serial":
        return SerialEngine()
    if kind == "mpi":
        from hts.execution.mpi import MPIEngine

        return MPIEngine()
    if kind == "parsl":
        return ParslEngine(
            load_site(site_name), run_dir, retries=retries, store=store, allocation=allocation
        )
    raise ValueError(f"unknown engine {kind!r} (known: parsl, mpi, serial)")
