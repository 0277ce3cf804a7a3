"""A screen as one job of a jobflow / atomate2 Flow.

atomate2 users compose Flows of Makers: generate structures → screen them →
hand the survivors to their own makers (DFT, phonons, elastic constants).
:class:`ScreenMaker` is that middle step: its job runs a whole hts campaign —
student prefilter, teacher rescoring, DFT validation if the campaign has it —
on the given structures (or the campaign's own candidates) and returns a
:class:`ScreenOutput` whose ``structures`` the next job takes as
``job.output.structures``::

    from jobflow import Flow, run_locally
    from hts.jobflow import ScreenMaker

    screen = ScreenMaker(campaign="my-campaign.yaml").make(generate.output)
    relax = MyDFTMaker().make(screen.output.structures[0])   # the most stable survivor
    run_locally(Flow([generate, screen, relax]))

The job is resumable like ``hts run``: run again with the same campaign and
store, finished work is kept.  A failed run raises inside the job (jobflow
marks it failed), naming the cause.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobflow import Maker, job
from pydantic import BaseModel, ConfigDict, Field
from pymatgen.core import Structure

__all__ = ["ScreenMaker", "ScreenOutput", "screen_output"]


class ScreenOutput(BaseModel):
    """What a screen hands the next job: its survivors, most stable first, and its funnel."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: str = Field(description="Path of the campaign's Zarr store (everything, every stage).")
    funnel: dict[str, Any] = Field(
        description="candidates: rows in the store; failed: inputs no model could judge; per "
        "stage: tried, scored and kept (the counts hts status and the dashboard show)."
    )
    structures: list[Structure] = Field(
        description="The final survivors' relaxed structures, lowest energy above the hull "
        "first; each one's properties hold hts_id, source, e_above_hull and energy_per_atom."
    )
    energies: list[float] = Field(
        description="Energy per atom (eV/atom) of each survivor, same order, from the deepest "
        "stage that scored it."
    )
    e_above_hull: list[float] = Field(description="eV/atom, same order, the deepest stage's.")
    ids: list[str] = Field(description="hts candidate ids, same order.")


@dataclass
class ScreenMaker(Maker):
    """Screen structures with an hts campaign (a jobflow Maker, atomate2's conventions).

    Parameters
    ----------
    name
        The job's name.
    campaign
        A campaign YAML path or a mapping of its fields (its ``candidates`` are
        replaced by the structures :meth:`make` is given); ``None`` is the
        shipped demo campaign's funnel (its student knows the demo's 18
        elements: bring a campaign for other chemistry).
    store
        Where the Zarr store goes; default: the campaign's ``store``, or
        ``hts-screen.zarr`` in the job's directory for a mapping without one.
    site
        A site name or file (``None``: the campaign's, ``local`` by default).
    engine
        ``parsl`` (the site's executors) or ``serial`` (inside the job's process).
    """

    name: str = "hts screen"
    campaign: str | dict | None = None
    store: str | None = None
    site: str | None = None
    engine: str = "parsl"

    @job(output_schema=ScreenOutput)
    def make(self, structures: list | dict | None = None) -> ScreenOutput:
        """Run the campaign on ``structures`` (pymatgen or ASE; ``None``: its own candidates)."""
        from hts import api

        campaign = self._campaign(structures)
        api.run(campaign, site=self.site, engine=self.engine, progress=False)
        return screen_output(campaign.store)

    def _campaign(self, structures):
        """The campaign to run, its candidates replaced by ``structures`` when given."""
        from hts import api

        campaign = self.campaign
        if isinstance(campaign, dict):
            data = dict(campaign)
            if structures is not None:
                data["candidates"] = {"kind": "structures", "structures": structures}
            data.setdefault("store", str(Path.cwd() / "hts-screen.zarr"))
            c = api.load(data, store=self.store)
        else:
            c = api.load(campaign, store=self.store)
            if structures is not None:
                from hts.spec import StructureSource

                c = c.model_copy(
                    update={"candidates": StructureSource(kind="structures", structures=structures)}
                )
        return c


def screen_output(store: str | os.PathLike) -> ScreenOutput:
    """The :class:`ScreenOutput` of a finished store: survivors, most stable first."""
    import numpy as np

    from hts.store import StoreReader, open_dataset, structure_of
    from hts.store.best import rank_keys

    ds = open_dataset(store)
    ok = ds.status.values.astype(object) == "ok"
    survivors = np.flatnonzero(ok & ds.kept.values[:, -1])
    # each row at the deepest stage that scored it, as hts status and the dashboard rank it
    _, depth = rank_keys(ds.e_above_hull.values, ds.formation_energy.values)
    rows = np.arange(len(depth))
    ehull = ds.e_above_hull.values[rows, depth]
    energy = ds.energy_per_atom.values[rows, depth]
    survivors = survivors[np.argsort(ehull[survivors], kind="stable")]
    from pymatgen.io.ase import AseAtomsAdaptor

    structures = []
    for i in survivors:
        s = AseAtomsAdaptor.get_structure(structure_of(ds, int(i)))
        s.properties.update(
            {
                "hts_id": str(ds.id.values[i]),
                "source": str(ds.source.values[i]),
                "e_above_hull": float(ehull[i]),
                "energy_per_atom": float(energy[i]),
            }
        )
        structures.append(s)
    counters = StoreReader(store).counters()
    funnel: dict[str, Any] = {"candidates": int(ds.sizes["candidate"]), "failed": int((~ok).sum())}
    for k, stage in enumerate(counters.stages):
        funnel[stage] = {
            "tried": int(counters.tried[k]),
            "scored": int(counters.scored[k]),
            "kept": int(counters.kept[k]),
        }
    return ScreenOutput(
        store=os.fspath(Path(store).resolve()),
        funnel=funnel,
        structures=structures,
        energies=[float(energy[i]) for i in survivors],
        e_above_hull=[float(ehull[i]) for i in survivors],
        ids=[str(ds.id.values[i]) for i in survivors],
    )
