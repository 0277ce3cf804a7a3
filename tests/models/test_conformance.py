"""The one conformance test every model passes on the tensor protocol (:mod:`hts.models.tensor`).

Shapes, dtype and device of energy ``[B]``, forces ``[N,3]`` and stress
``[B,3,3]``; forces and stress against finite differences of the model's own
energy (so units and signs are ASE's: eV, eV/Å, eV/Å³, negative under
compression); and a structure's result independent of its batch mates.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from hts.models import load_model
from hts.models.tensor import TensorBatch, evaluate
from hts.spec import ModelSpec
from tests.models.test_models import tiny_mace
from tests.models.test_student import tiny_student


def _pool():
    s = [
        bulk("NaCl", "rocksalt", a=5.5),
        bulk("Cu", "fcc", a=3.7),
        bulk("MgO", "rocksalt", a=4.3) * (2, 1, 1),
        bulk("LiF", "rocksalt", a=4.1),
        bulk("CuAu", "rocksalt", a=5.2),
        bulk("Ni", "bcc", a=2.85) * (1, 2, 1),
    ]
    rng = np.random.default_rng(3)
    for a in s:  # off equilibrium, sheared: every force and stress component non-zero
        a.set_cell(a.cell[:] @ (np.eye(3) + rng.normal(0, 0.02, (3, 3))), scale_atoms=True)
        a.positions += rng.normal(0, 0.05, a.positions.shape)
    return s


# (spec, finite-difference step, tolerance on stress (eV/Å³; ×10 on forces, eV/Å; relative
# above 1), tolerance between a structure alone and in a batch)
CASES = {
    "lennard-jones": (dict(name="lennard-jones"), 1e-4, 1e-6, 1e-12),
    "emt": (dict(name="emt"), 1e-4, 1e-6, 1e-12),
    "ase": (
        dict(name="ase", calculator="ase.calculators.lj:LennardJones", kwargs={"sigma": 2.3}),
        1e-4,
        1e-6,
        1e-12,
    ),
    "mace": (dict(name="mace", dtype="float64"), 1e-4, 1e-6, 1e-9),
    "sevennet-0": (dict(name="sevennet-0"), 1e-2, 2e-3, 1e-4),
    "chgnet": (dict(name="chgnet"), 1e-2, 5e-3, 1e-4),
    "student": (dict(name="student"), 1e-2, 2e-3, 1e-4),
}


def _energy(model, atoms) -> float:
    return float(evaluate(model, TensorBatch.from_atoms([atoms])).energy[0])


@pytest.mark.parametrize("name", list(CASES))
def test_model_conforms(name, tmp_path, request):
    import torch

    spec, h, tol, batch_tol = CASES[name]
    if name == "mace":
        spec = {**spec, "path": str(tiny_mace(tmp_path / "tiny.model"))}
    if name == "student":  # SevenNet-0's first two blocks and a readout that is not zero
        spec = {**spec, "path": str(tiny_student(tmp_path / "student.model"))}
    if name == "sevennet-0":  # the session's copy: the same load_model(name=sevennet-0, cpu)
        model = request.getfixturevalue("sevennet0")
    else:
        model = load_model(ModelSpec(device="cpu", **spec) if name != "ase" else ModelSpec(**spec))
    structures = [a for a in _pool() if not model.unsupported(a.numbers)][:4]
    assert len(structures) >= 3, f"{name}: too few structures it covers"
    b = TensorBatch.from_atoms(structures)
    ev = evaluate(model, b)
    n, n_atoms = len(structures), sum(len(a) for a in structures)
    # shapes, dtype, device
    assert ev.energy.shape == (n,) and ev.forces.shape == (n_atoms, 3)
    assert ev.stress.shape == (n, 3, 3)
    for t in (ev.energy, ev.forces, ev.stress):
        assert t.dtype == torch.float64 and t.device == b.positions.device
        assert torch.isfinite(t).all()
    torch.testing.assert_close(ev.stress, ev.stress.transpose(1, 2), atol=1e-6, rtol=0)
    # a structure's result does not depend on its batch mates
    offsets = np.cumsum([0] + [len(a) for a in structures])
    for k, a in enumerate(structures):
        alone = evaluate(model, TensorBatch.from_atoms([a]))
        scale = max(1.0, abs(float(alone.energy[0])))
        assert abs(float(alone.energy[0] - ev.energy[k])) <= batch_tol * scale
        torch.testing.assert_close(
            alone.forces, ev.forces[offsets[k] : offsets[k + 1]], atol=batch_tol * 10, rtol=0
        )
        torch.testing.assert_close(alone.stress[0], ev.stress[k], atol=batch_tol, rtol=0)
    # forces and stress are gradients of the energy (central differences)
    a = structures[-1]
    f = ev.forces[offsets[-2] : offsets[-1]].numpy()
    for i, c in [(0, 0), (len(a) - 1, 2), (0, 1)]:
        plus, minus = a.copy(), a.copy()
        plus.positions[i, c] += h
        minus.positions[i, c] -= h
        fd = -(_energy(model, plus) - _energy(model, minus)) / (2 * h)
        assert abs(fd - f[i, c]) < tol * 10 * max(1.0, abs(fd)), (name, i, c, fd, f[i, c])
    s = ev.stress[-1].numpy()
    volume = a.get_volume()
    for p, q in [(0, 0), (1, 2), (2, 2)]:
        e = np.zeros((3, 3))
        e[p, q] = e[q, p] = h / (2 if p != q else 1)
        es = []
        for sign in (1, -1):
            d = a.copy()
            d.set_cell(a.cell[:] @ (np.eye(3) + sign * e), scale_atoms=True)
            es.append(_energy(model, d))
        fd = (es[0] - es[1]) / (2 * h * volume)
        assert abs(fd - s[p, q]) < tol * max(1.0, abs(fd)), (name, p, q, fd, s[p, q])
