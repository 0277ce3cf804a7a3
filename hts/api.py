"""hts from Python: run a campaign, read its store.

The command line and a notebook share this module: ``hts run`` is
:func:`execute` with a terminal display around it, and :func:`run` is the same
call returning the store as an ``xarray.Dataset``.  A campaign can be a YAML
file, a mapping (with ``candidates: {kind: structures, structures: [...]}``
for pymatgen ``Structure``s or ASE ``Atoms`` already in memory) or a parsed
:class:`~hts.spec.Campaign`.

Failures raise what the CLI reports and exits on, never a bare traceback from
deep inside: :class:`~hts.spec.CampaignError` (a bad field, named),
:class:`~hts.candidates.EmptySourceError`, :class:`~hts.store.StoreError` (a
store of another campaign, damaged, or locked by a running writer),
:class:`~hts.execution.sites.SiteError`, :class:`~hts.campaign.RunError` (the
machinery failed; everything committed is kept) and its
:class:`IncompleteRunError` (tasks died: what they held was not judged).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hts.campaign import RunError

if TYPE_CHECKING:
    import xarray as xr

    from hts.campaign import RunStats
    from hts.spec import Campaign

__all__ = ["IncompleteRunError", "execute", "incomplete", "load", "open_dataset", "run"]

DEMO = Path(__file__).parent / "data" / "demo.yaml"


class IncompleteRunError(RunError):
    """Tasks failed as a whole: their candidates were not judged (nothing recorded for them).

    ``stats`` holds the run's counts; running the same campaign again retries
    exactly what is missing.
    """

    def __init__(self, message: str, stats: RunStats) -> None:
        super().__init__(message)
        self.stats = stats


def load(
    campaign: str | os.PathLike | Mapping | Campaign | None,
    *,
    store: str | os.PathLike | None = None,
    site: str | None = None,
) -> Campaign:
    """A validated campaign from a file path, a mapping or a :class:`~hts.spec.Campaign`.

    ``None`` is the shipped demo campaign.  A mapping's relative paths (model
    files, reports) resolve against the working directory, a file's against
    its folder.  ``store`` and ``site`` replace the campaign's (a mapping may
    leave ``store`` out when ``store`` is given here).
    """
    from hts.spec import Campaign, load_campaign, parse_campaign

    if campaign is None:
        campaign = DEMO
    if isinstance(campaign, Campaign):
        c = campaign
    elif isinstance(campaign, str | os.PathLike):
        c = load_campaign(campaign)
    elif isinstance(campaign, Mapping):
        data = dict(campaign)
        if store is not None:
            data.setdefault("store", str(store))
        c = parse_campaign(data, source="<campaign mapping>", base_dir=os.getcwd())
    else:
        raise TypeError(
            f"campaign: expected a file path, a mapping or a Campaign, got {type(campaign).__name__}"
        )
    update: dict[str, Any] = {}
    if store is not None:
        update["store"] = str(store)
    if site is not None:
        update["site"] = site
    return c.model_copy(update=update) if update else c


def prepare_process(campaign: Campaign) -> None:
    """Thread counts fixed before torch is first imported in this process (no effect after).

    Oversubscribed cores ran 10–100× slower; the model loader sets torch's own
    count per worker, this covers OpenMP pools created at import.
    """
    os.environ.setdefault("OMP_NUM_THREADS", str(campaign.stages.prefilter.model.threads))
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def execute(
    campaign: Campaign,
    *,
    store_path: str | os.PathLike | None = None,
    engine: str = "parsl",
    allocation: bool = False,
    progress: Callable[[RunStats], None] | None = None,
    on_engine: Callable[[Any], None] | None = None,
) -> RunStats:
    """Run (or resume) ``campaign`` on a fresh engine of its site, always closing the engine.

    ``on_engine`` is told the engine once it is built (the CLI prints what it
    is).  An engine that cannot be built raises
    :class:`~hts.execution.sites.SiteError` (a bad site) or ``OSError`` (its
    run directory beside the store cannot be made).
    """
    from hts.campaign import run_campaign
    from hts.execution import make_engine

    store_path = Path(store_path or campaign.store)
    prepare_process(campaign)
    eng = make_engine(
        engine,
        campaign.site,
        Path(f"{store_path}.parsl"),
        retries=campaign.limits.task_retries,
        store=store_path,
        allocation=allocation,
    )
    try:
        if on_engine is not None:
            on_engine(eng)
        return run_campaign(campaign, eng, store_path=store_path, progress=progress)
    finally:
        eng.close()


def incomplete(stats: RunStats, again: str = "run the same command again") -> str:
    """What a run left unjudged because tasks died, in words ('' when nothing was)."""
    if not (stats.unscreened or stats.unrescored or stats.unvalidated):
        return ""
    return (
        f"{stats.unscreened} candidates not screened, {stats.unrescored} survivors not rescored "
        f"and {stats.unvalidated} DFT jobs not done, because their task failed as a whole "
        f"({len(stats.task_errors)} tasks; first: {stats.task_errors[0]}). Nothing was recorded "
        f"for them: fix the cause and {again} to retry them."
    )


def run(
    campaign: str | os.PathLike | Mapping | Campaign | None = None,
    *,
    store: str | os.PathLike | None = None,
    site: str | None = None,
    engine: str = "parsl",
    progress: bool = True,
) -> xr.Dataset:
    """Run (or resume) a campaign and return its store as an ``xarray.Dataset``.

    Parameters
    ----------
    campaign
        A campaign YAML file, a mapping of the same fields, or a parsed
        :class:`~hts.spec.Campaign`; ``None`` runs the shipped demo.  For
        structures in memory: ``{"candidates": {"kind": "structures",
        "structures": [...]}, ...}`` with pymatgen ``Structure``s, ASE
        ``Atoms`` or a mapping label → structure.
    store
        Where the Zarr store goes; replaces the campaign's ``store``.  Running
        again with the same campaign and store resumes: finished work is kept.
    site
        A site name or file; ``None`` keeps the campaign's (``local``, a Parsl
        thread pool, unless it says otherwise).
    engine
        ``parsl`` (the site's executors) or ``serial`` (in this process, no pool).
    progress
        Live counts while it runs (a line every few seconds where there is no terminal).

    Returns
    -------
    xarray.Dataset
        :func:`open_dataset` of the store: one row per candidate along
        ``candidate``, per-stage values along ``stage``.

    Raises
    ------
    IncompleteRunError
        Some tasks failed as a whole; the dataset holds what was judged
        (``err.stats``), and running again retries the rest.
    """
    from hts import render

    c = load(campaign, store=store, site=site)
    store_path = Path(c.store)
    with render.Display(c.name, quiet=not progress) as display:
        stats = execute(c, store_path=store_path, engine=engine, progress=display)
    if why := incomplete(stats, again="call hts.run again with the same campaign and store"):
        raise IncompleteRunError(f"{c.name}: incomplete: {why}", stats)
    return open_dataset(store_path)


def open_dataset(store: str | os.PathLike, variables: list[str] | None = None) -> xr.Dataset:
    """A store's committed candidates as an ``xarray.Dataset`` (safe while a run writes it).

    One row per candidate (``candidate``), stage values along ``stage`` (its
    coordinate names the stages; ``stage_model`` the model of each), the
    relaxed structures in the ragged ``species``/``positions`` arrays (see
    :func:`hts.store.structure_of`).  The store's own bookkeeping (its update
    log) is left out.
    """
    from hts.store import open_dataset as read

    return read(store, variables)
