from __future__ import annotations

from collections import Counter

import numpy as np

from hts.candidates import open_source
from hts.distill.config import Sampling
from hts.distill.sample import label_chunk, split_of, stratified
from hts.models.analytic import LennardJonesModel
from hts.spec import ModelSpec, RelaxSettings, parse_campaign
from tests.conftest import lj_campaign


def _candidates(tmp_path):
    return list(open_source(parse_campaign(lj_campaign(tmp_path))))


def test_stratified_covers_every_prototype_and_spreads_chemical_systems(tmp_path):
    cands = _candidates(tmp_path)
    picked = stratified(cands, 12, seed=0)
    assert len(picked) == 12 and len({c.id for c in picked}) == 12
    protos = Counter(c.prototype for c in picked)
    assert set(protos) == {c.prototype for c in cands}
    assert max(protos.values()) - min(protos.values()) <= 1
    # within a prototype no chemical system repeats before all have been used once
    for p in protos:
        systems = [c.chemsys for c in picked if c.prototype == p]
        assert len(systems) == len(set(systems))
    assert [c.id for c in stratified(cands, 12, seed=0)] == [c.id for c in picked]
    assert len(stratified(cands, 10_000, seed=1)) == len(cands)


def test_split_keeps_groups_whole(tmp_path):
    cands = _candidates(tmp_path)
    splits = {c.id: split_of(c, "chemsys", 0.1, 0.3, seed=0) for c in cands}
    by_sys: dict[str, set[str]] = {}
    for c in cands:
        by_sys.setdefault(c.chemsys, set()).add(splits[c.id])
    assert all(len(v) == 1 for v in by_sys.values())
    assert {"train", "test"} <= set(splits.values())
    share = Counter(splits.values())["test"] / len(cands)
    assert 0.1 < share < 0.6


def test_label_chunk_samples_the_relaxation_path_and_perturbations(tmp_path):
    cands = _candidates(tmp_path)[:3]
    sampling = Sampling(trajectory_snapshots=3, rattled=2, strained=1, relax=RelaxSettings())
    model = LennardJonesModel()
    res = label_chunk(cands, ModelSpec(name="lennard-jones"), sampling, seed=0, model=model)
    assert [r.id for r in res.relaxed] == [c.id for c in cands]
    kinds = Counter((f.candidate, f.kind) for f in res.frames)
    for c in cands:
        assert kinds[(c.id, "path")] == 3
        assert kinds[(c.id, "rattle")] == 2
        assert kinds[(c.id, "strain")] == 1
    # labels are the model's own values for the stored geometry
    f = res.frames[4]
    from ase import Atoms

    p = model.predict([Atoms(numbers=f.numbers, positions=f.positions, cell=f.cell, pbc=True)])[0]
    assert p.energy == f.energy
    np.testing.assert_allclose(p.forces, f.forces)
    np.testing.assert_allclose(p.stress, f.stress)
    # the first path frame is the input structure, the last the relaxed one
    first = next(x for x in res.frames if x.candidate == cands[0].id and x.kind == "path")
    np.testing.assert_allclose(first.positions, cands[0].positions)
    relaxed_e = res.relaxed[0].energy_per_atom * len(cands[0].numbers)
    last = [x for x in res.frames if x.candidate == cands[0].id and x.kind == "path"][-1]
    assert last.energy == relaxed_e
