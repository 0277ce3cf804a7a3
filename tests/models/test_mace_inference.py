"""Folded symmetric contractions give mace's energies, forces and stress."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from hts.models.batched import MaceModel
from hts.models.mace_inference import (
    FoldedContraction,
    FusedEdgeConvolution,
    _check,
    fold_contractions,
)
from tests.models.test_models import tiny_mace


def swaps(model: MaceModel) -> dict[str, int]:
    """The inference swaps in a loaded model, counted from its modules."""
    modules = list(model.model.modules())
    return {
        "contractions": sum(isinstance(m, FoldedContraction) for m in modules),
        "convolutions": sum(isinstance(m, FusedEdgeConvolution) for m in modules),
    }


def _mixed_batch():
    """Structures with different elements and sizes, so every element group is exercised."""
    out = [
        bulk("NaCl", "rocksalt", a=5.6) * (2, 1, 1),
        bulk("LiF", "rocksalt", a=4.0),
        bulk("MgO", "rocksalt", a=4.2) * (1, 2, 1),
        bulk("Cu", a=3.6) * (2, 2, 1),
    ]
    for k, a in enumerate(out):
        a.rattle(0.05, seed=k)
    return out


@pytest.mark.parametrize("correlation", [1, 2, 3])
def test_folded_model_equals_mace(tmp_path, correlation):
    # L = 1 hidden features: the contractions carry an m index besides the l's
    path = tiny_mace(tmp_path / "tiny.model", correlation=correlation, max_ell=3)
    from mace.modules.symmetric_contraction import Contraction

    folded = MaceModel(str(path), "cpu", 8, "float64")
    # the reference: the same file with mace's own contractions
    ref = MaceModel(str(path), "cpu", 8, "float64")
    ref.model = torch.load(path, weights_only=False).double().eval()
    n = sum(isinstance(m, Contraction) for m in ref.model.modules())
    assert n == 3  # 0e and 1o in the first product, 0e in the last
    assert swaps(folded) == {"contractions": n, "convolutions": 2}
    assert not any(isinstance(m, Contraction) for m in folded.model.modules())
    for a, b in zip(ref.predict(_mixed_batch()), folded.predict(_mixed_batch()), strict=True):
        assert abs(a.energy - b.energy) < 1e-10
        np.testing.assert_allclose(b.forces, a.forces, atol=1e-10)
        np.testing.assert_allclose(b.stress, a.stress, atol=1e-12)


def _scripted(tmp_path) -> tuple:
    """A MACE file and its TorchScript copy, as ``hts distill`` writes a MACE student's."""
    from copy import deepcopy

    from e3nn.util import jit

    path = tiny_mace(tmp_path / "student.model", correlation=3)
    script = tmp_path / "student_compiled.model"
    torch.jit.save(jit.compile(deepcopy(torch.load(path, weights_only=False))), str(script))
    return path, script


def test_a_mace_student_folded_in_float32_equals_its_torchscript_copy(tmp_path):
    path, script_path = _scripted(tmp_path)
    eager = MaceModel(str(path), "cpu", 8, "float32")
    script = MaceModel(str(script_path), "cpu", 8, "float32")
    assert swaps(eager) == {"contractions": 3, "convolutions": 2}
    assert swaps(script) == {"contractions": 0, "convolutions": 0}  # TorchScript runs as it is
    batch = _mixed_batch()[:3]  # elements the student knows
    for a, b in zip(script.predict(batch), eager.predict(batch), strict=True):
        assert abs(a.energy - b.energy) < 1e-4 * max(1.0, abs(a.energy))
        np.testing.assert_allclose(b.forces, a.forces, atol=1e-4)
        np.testing.assert_allclose(b.stress, a.stress, atol=1e-6)


def test_a_contraction_that_does_not_match_is_refused(tmp_path):
    from mace.modules.symmetric_contraction import Contraction

    model = torch.load(tiny_mace(tmp_path / "tiny.model", correlation=3), weights_only=False)
    old = next(m for m in model.modules() if isinstance(m, Contraction))
    new = FoldedContraction(old)
    new._u[0] = new._u[0].flip(-2)  # as if mace had changed the index order
    with pytest.raises(RuntimeError, match="differs from mace's"):
        _check(new, old, "products.0")
    assert fold_contractions(torch.jit.load(str(_scripted(tmp_path)[1]))) == 0
