"""Trunk students (:mod:`hts.models.student`): the teacher's layers, a readout, one file."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from hts.models import load_model
from hts.models.batched import ModelFileError
from hts.models.student import (
    StudentModel,
    is_trunk_student,
    load_student,
    make_student,
    save_student,
    trunk_of,
)
from hts.spec import ModelSpec
from tests.models.test_models import tiny_mace

SEVENNET = {"kind": "sevennet", "checkpoint": "7net-0"}
ELEMENTS = ["Au", "Cl", "Cu", "F", "Li", "Mg", "Na", "Ni", "O"]


def tiny_student(path, blocks: int = 2, seed: int = 0):
    """SevenNet-0's first ``blocks`` blocks and a random (non-zero) readout, saved as a student."""
    import torch

    torch.manual_seed(seed)
    s = make_student(SEVENNET, blocks, hidden=8)
    with torch.no_grad():
        s.readout.linear.weight.normal_(0, 0.1)
        s.readout.w3.normal_(0, 0.1)
    save_student(path, s, SEVENNET, ELEMENTS, {"test": True})
    return path


def _cells():
    out = [bulk("NaCl", "rocksalt", a=5.6), bulk("MgO", "rocksalt", a=4.3) * (2, 1, 1)]
    out.append(bulk("LiF", "rocksalt", a=4.0))
    out[1].rattle(0.05, seed=2)
    return out


def test_the_whole_trunk_with_the_teachers_readout_is_the_teacher(tmp_path, sevennet0):
    teacher = sevennet0
    save_student(tmp_path / "s.model", make_student(SEVENNET, None), SEVENNET, ELEMENTS, {})
    student = load_model(ModelSpec(name="student", path=str(tmp_path / "s.model"), device="cpu"))
    assert isinstance(student, StudentModel) and "5 of 5 blocks" in student.version
    cells = _cells()
    t, s = teacher.predict(cells), student.predict(cells)
    for a, b in zip(t, s, strict=True):
        assert abs(a.energy - b.energy) < 1e-4
        np.testing.assert_allclose(a.forces, b.forces, atol=1e-4)
        np.testing.assert_allclose(a.stress, b.stress, atol=1e-5)
    # the forward pass alone gives the same energies
    np.testing.assert_allclose(student.energies(cells), [p.energy for p in t], atol=1e-4)


def test_a_truncated_trunk_keeps_its_first_blocks_and_round_trips(tmp_path):
    path = tiny_student(tmp_path / "s.model", blocks=1)
    module, blob = load_student(path)
    names = list(module.trunk.layers._modules)
    assert "0_convolution" in names and "1_convolution" not in names
    assert blob["trunk"] == {"kind": "sevennet", "checkpoint": "7net-0", "blocks": 1, "n_blocks": 5}
    assert blob["license"].startswith("GPL-3.0")  # weights derived from SevenNet
    # the copied block carries the teacher's weights
    teacher, _ = make_student(SEVENNET, None).trunk.layers, None
    w0 = dict(teacher.named_parameters())["0_convolution.weight_nn.layer0.weight"]
    w1 = dict(module.trunk.layers.named_parameters())["0_convolution.weight_nn.layer0.weight"]
    assert np.allclose(w0.detach().numpy(), w1.detach().numpy())
    a = StudentModel(str(path), "cpu", 4)
    b = StudentModel(str(path), "cpu", 2)
    cells = _cells()
    np.testing.assert_allclose(a.energies(cells), b.energies(cells), atol=1e-4)  # batch-independent
    # elements outside training are refused by name, not predicted
    assert a.unsupported([11, 17]) is None
    assert "Zr" in a.unsupported([40, 8])


def test_files_that_are_not_students_are_named(tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_text("not a model")
    assert not is_trunk_student(bad)
    with pytest.raises(ModelFileError, match="bad.model"):
        load_student(bad)
    with pytest.raises(ModelFileError, match="not found"):
        load_student(tmp_path / "missing.model")
    # a MACE file behind name: student loads as the MACE model it is
    mace = tiny_mace(tmp_path / "tiny.model")
    assert not is_trunk_student(mace)
    m = load_model(ModelSpec(name="student", path=str(mace), device="cpu", dtype="float64"))
    assert m.name == "mace"


def test_a_mace_teacher_gives_its_first_layers(tmp_path):
    import torch

    recipe = trunk_of(ModelSpec(name="mace", path=str(tiny_mace(tmp_path / "t.model"))))
    assert recipe["kind"] == "mace"
    s = make_student(recipe, 1)
    assert len(s.trunk.module.interactions) == 1 and s.trunk.n_blocks == 2
    with torch.no_grad():
        s.readout.linear.weight.normal_(0, 0.1)
    save_student(tmp_path / "s.model", s, recipe, ["Li", "F", "Na", "Cl"], {})
    m = StudentModel(str(tmp_path / "s.model"), "cpu", 4)
    e = m.energies([bulk("NaCl", "rocksalt", a=5.6), bulk("LiF", "rocksalt", a=4.0)])
    assert np.isfinite(e).all() and e[0] != e[1]
    assert "mace file" in m.version


def test_black_box_teachers_have_no_trunk():
    assert trunk_of(ModelSpec(name="chgnet")) is None
    assert trunk_of(ModelSpec(name="emt")) is None
    assert trunk_of(ModelSpec(name="sevennet-0")) == SEVENNET
