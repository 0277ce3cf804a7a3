"""hts: high-throughput screening of crystalline materials.

From Python::

    import hts

    ds = hts.run("workflows/demo.yaml")          # or a dict, or structures in memory
    ds = hts.open_dataset("demo.zarr")           # a store, safe while a run writes it

(:mod:`hts.api`; :class:`hts.jobflow.ScreenMaker` makes a screen one job of a
jobflow/atomate2 Flow.)  Importing the package (or its CLI) loads no torch,
Parsl, zarr or model weights and touches no files; every heavy import happens
where it is used, so ``run`` and ``open_dataset`` import :mod:`hts.api` on call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["open_dataset", "run"]

if TYPE_CHECKING:
    import xarray as xr


def run(
    campaign: Any = None,
    *,
    store: Any = None,
    site: str | None = None,
    engine: str = "parsl",
    progress: bool = True,
) -> xr.Dataset:
    """Run (or resume) a campaign; returns its store as an ``xarray.Dataset``.

    ``campaign``: a YAML path, a mapping or a parsed campaign (None: the demo);
    ``store``/``site`` replace the campaign's.  See :func:`hts.api.run`.
    """
    from hts.api import run as _run

    return _run(campaign, store=store, site=site, engine=engine, progress=progress)


def open_dataset(store: Any, variables: list[str] | None = None) -> xr.Dataset:
    """A store's committed candidates as an ``xarray.Dataset`` (:func:`hts.api.open_dataset`)."""
    from hts.api import open_dataset as _open

    return _open(store, variables)
