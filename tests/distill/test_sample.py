from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from hts.candidates import open_source
from hts.distill.config import Sampling
from hts.distill.sample import held_out_system, label_chunk, on_policy_chunk, point_chunk
from hts.models.analytic import LennardJonesModel
from hts.spec import ModelSpec, RelaxSettings, parse_campaign
from tests.conftest import lj_campaign


def _candidates(tmp_path):
    return list(open_source(parse_campaign(lj_campaign(tmp_path))))


def test_held_out_systems_are_whole_and_about_their_share(tmp_path):
    cands = _candidates(tmp_path)
    held = {c.id: held_out_system(c.chemsys, 0.3, seed=0) for c in cands}
    by_sys: dict[str, set[bool]] = {}
    for c in cands:
        by_sys.setdefault(c.chemsys, set()).add(held[c.id])
    assert all(len(v) == 1 for v in by_sys.values())
    share = sum(next(iter(v)) for v in by_sys.values()) / len(by_sys)
    assert 0.1 < share < 0.6
    assert held_out_system("Na-Cl", 0.0, 0) is False


def test_point_and_on_policy_labels_are_the_teachers_values(tmp_path):
    cands = _candidates(tmp_path)[:3]
    lj = ModelSpec(name="lennard-jones")
    model = LennardJonesModel()
    points = point_chunk(cands, lj, model=model)
    assert [f.candidate for f in points.frames] == [c.id for c in cands]
    assert {f.kind for f in points.frames} == {"point"}
    np.testing.assert_allclose(points.frames[0].positions, cands[0].positions)  # unrelaxed
    assert points.frames[0].energy == model.predict([cands[0].to_atoms()])[0].energy
    # on-policy: the student relaxes, the teacher labels where it went (end point included)
    relax = RelaxSettings(fmax=0.05, max_steps=30)
    res = on_policy_chunk(
        cands, lj, relax, lj, snapshots=2, student_model=model, teacher_model=model
    )
    assert {f.kind for f in res.frames} == {"student"} and len(res.frames) >= len(cands)
    from hts.stages.relax import relax_with

    end = relax_with(model, [cands[0].to_atoms()], relax, lj)[0]
    last = [f for f in res.frames if f.candidate == cands[0].id][-1]
    np.testing.assert_allclose(last.positions, end.atoms.positions, atol=1e-9)
    assert last.energy == pytest.approx(end.energy)


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
