"""Training a trunk student: the frozen (cached) and the fine-tuned regimes, on real teacher labels."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from hts.distill.config import Student, Training
from hts.distill.direct import train_direct
from hts.distill.examples import frame_id, tagged, write_examples
from hts.distill.trunk import atom_targets
from hts.models.student import StudentModel, trunk_of
from hts.spec import ModelSpec


@pytest.fixture(scope="module")
def examples(tmp_path_factory, sevennet0):
    """Six rocksalts as 'unrelaxed' (strained) and 'relaxed' frames with SevenNet-0's labels."""
    from hts.models.tensor import TensorBatch

    teacher = sevennet0
    pairs = [("NaCl", 5.6), ("LiF", 4.0), ("KCl", 6.3), ("MgO", 4.2), ("NaF", 4.6), ("LiCl", 5.1)]
    relaxed = [bulk(f, "rocksalt", a=a) for f, a in pairs]
    start = [r.copy() for r in relaxed]
    for k, s in enumerate(start):
        s.set_cell(s.cell[:] * (1.08 + 0.02 * k), scale_atoms=True)
    e, _ = teacher.atomic(TensorBatch.from_atoms(relaxed))
    e = e.numpy()
    frames, targets, groups, minima = [], {}, {}, {}
    for k, (s, r) in enumerate(zip(start, relaxed, strict=True)):
        cid = f"{k:016d}"  # all digits: the id must survive extxyz as a string
        for a in (s, r):
            a.info["hts_id"] = cid
            frames.append(a)
        targets[cid] = float(e[2 * k : 2 * k + 2].sum() / 2)
        groups[cid] = pairs[k][0]
        minima[cid] = e[2 * k : 2 * k + 2]
    atom_targets(frames, minima)
    path = tmp_path_factory.mktemp("trunk") / "train.extxyz"
    assert write_examples(path, frames, targets, groups) == 12
    return path, targets, start


def _train(tmp_path, path, **training):
    student = Student(kind="trunk", blocks=1, heads=2, readout_hidden=16)
    tr = Training(batch_size=4, frozen_batch_size=12, threads=1, lr=0.01, **training)
    sevennet = trunk_of(ModelSpec(name="sevennet-0"))
    res = train_direct(
        str(tmp_path / "run"),
        student,
        tr,
        {"train": str(path), "valid": ""},
        [3, 8, 9, 11, 12, 17, 19],
        "cpu",
        trunk=sevennet,
    )
    return res, StudentModel(res.model, "cpu", 8)


def _mae(model, start, targets) -> float:
    e = model.energies(start) / np.array([len(a) for a in start])
    return float(np.mean(np.abs(e - np.array(list(targets.values())))))


def test_a_frozen_trunk_trains_its_heads_on_cached_features(examples, tmp_path):
    path, targets, start = examples
    res, model = _train(tmp_path, path, freeze_blocks=5, epochs=150)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "trunk frozen" in log and "cached" in log
    # the heads learn the relaxed energies of the (strained) starts; the trunk did not move
    assert _mae(model, start, targets) < 0.02
    from hts.models.student import make_student

    fresh = make_student({"kind": "sevennet", "checkpoint": "7net-0"}, 1)
    for (n, a), b in zip(
        fresh.trunk.named_parameters(), model.module.trunk.parameters(), strict=True
    ):
        assert np.allclose(a.detach().numpy(), b.detach().numpy()), n
    assert res.epochs == 150  # a cosine schedule runs its course


def test_a_fine_tuned_trunk_moves_its_layers(examples, tmp_path):
    path, targets, start = examples
    _, model = _train(tmp_path, path, freeze_blocks=0, epochs=3, trunk_lr=1.0)
    from hts.models.student import make_student

    fresh = make_student({"kind": "sevennet", "checkpoint": "7net-0"}, 1)
    moved = [
        not np.allclose(a.detach().numpy(), b.detach().numpy())
        for a, b in zip(fresh.trunk.parameters(), model.module.trunk.parameters(), strict=True)
    ]
    assert any(moved)
    assert np.isfinite(model.energies(start)).all()


def test_ids_survive_extxyz_whatever_they_look_like(tmp_path):
    from ase.io import read, write

    ids = ["0000123456789012", "12e4567890123456", "abcdef0123456789"]
    frames = []
    for cid in ids:
        a = bulk("Cu", "fcc", a=3.6)
        a.info["hts_id"] = tagged(cid)
        frames.append(a)
    write(tmp_path / "f.extxyz", frames, format="extxyz")
    assert [frame_id(a) for a in read(tmp_path / "f.extxyz", ":")] == ids
    # files written before ids were tagged: an all-digit id read back as an int is recovered
    a = bulk("Cu", "fcc", a=3.6)
    a.info["hts_id"] = 123456789012
    assert frame_id(a) == "0000123456789012"
