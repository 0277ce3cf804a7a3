"""hts as one job of a jobflow Flow: generate → ScreenMaker → a job consuming its survivors,
run by jobflow.run_locally on a real thread pool and a real Zarr store."""

from __future__ import annotations

import numpy as np
from jobflow import Flow, job, run_locally
from pymatgen.core import Lattice, Structure

from hts.jobflow import ScreenMaker, ScreenOutput
from hts.store import open_dataset

LJ = {"prefilter": {"model": {"name": "lennard-jones"}, "keep": "e_above_hull <= 0.05"}}


@job
def generate() -> list[Structure]:
    """Rock-salt and CsCl cells of a few alkali halides (what an enumeration job would hand on)."""
    out = []
    for a, x, d in [("Na", "Cl", 5.6), ("K", "Cl", 6.3), ("Li", "F", 4.0), ("Na", "F", 4.6)]:
        out.append(
            Structure.from_spacegroup("Fm-3m", Lattice.cubic(d), [a, x], [[0] * 3, [0.5] * 3])
        )
        out.append(Structure(Lattice.cubic(d * 0.6), [a, x], [[0] * 3, [0.5] * 3]))
    return out


@job
def consume(structures: list[Structure], energies: list[float]) -> dict:
    """A downstream job: it receives real Structures, most stable first."""
    assert all(isinstance(s, Structure) for s in structures)
    return {
        "formulas": [s.composition.reduced_formula for s in structures],
        "ids": [s.properties["hts_id"] for s in structures],
        "energies": energies,
    }


def test_screen_maker_in_a_flow(tmp_path):
    campaign = {"name": "flow-screen", "stages": LJ}
    gen = generate()
    screen = ScreenMaker(campaign=campaign, store=str(tmp_path / "screen.zarr")).make(gen.output)
    use = consume(screen.output.structures, screen.output.energies)
    responses = run_locally(Flow([gen, screen, use]), root_dir=tmp_path, ensure_success=True)

    out = responses[screen.uuid][1].output
    assert isinstance(out, ScreenOutput)
    ds = open_dataset(tmp_path / "screen.zarr")
    assert out.funnel["candidates"] == ds.sizes["candidate"] == 8
    assert out.funnel["prefilter"]["tried"] == 8
    kept = ds.kept.values[:, 0] & (ds.status.values.astype(object) == "ok")
    assert out.funnel["prefilter"]["kept"] == int(kept.sum()) == len(out.structures) > 0
    assert out.e_above_hull == sorted(out.e_above_hull)  # most stable first
    by_id = {str(i): k for k, i in enumerate(ds.id.values.astype(object))}
    for s, e, cid in zip(out.structures, out.energies, out.ids, strict=True):
        row = by_id[cid]
        assert np.isclose(e, ds.energy_per_atom.values[row, 0])
        assert len(s) == int(ds.n_atoms.values[row])  # the relaxed cell, not the input
        assert np.allclose(s.lattice.matrix, ds.cell.values[row])

    downstream = responses[use.uuid][1].output
    assert downstream["ids"] == out.ids and downstream["energies"] == out.energies
    assert set(downstream["formulas"]) <= {"NaCl", "KCl", "LiF", "NaF"}


def test_screen_maker_resumes_its_store(tmp_path):
    """The same job again (a rerun after a crash) finds its work done in the store."""
    structures = [
        Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6), ["Na", "Cl"], [[0] * 3, [0.5] * 3])
    ]
    maker = ScreenMaker(
        campaign={"name": "again", "stages": LJ},
        store=str(tmp_path / "s.zarr"),
        engine="serial",
    )
    first = run_locally(maker.make(structures), root_dir=tmp_path, ensure_success=True)
    second = run_locally(maker.make(structures), root_dir=tmp_path, ensure_success=True)
    (a,) = [r[1].output for r in first.values()]
    (b,) = [r[1].output for r in second.values()]
    assert a.ids == b.ids and a.funnel == b.funnel and a.funnel["candidates"] == 1
