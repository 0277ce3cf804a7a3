"""A tiny real distillation: SevenNet-0 labels, mace-torch trains, the student loads like any model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from hts.distill.config import load_distill
from hts.distill.pipeline import run_distill
from hts.execution import make_engine
from hts.models import load_model
from hts.spec import CampaignError, ModelSpec


def _files(tmp_path):
    campaign = {
        "name": "tiny",
        "candidates": {
            "kind": "substitution",
            "prototypes": ["rocksalt", "cscl", "zincblende"],
            "elements": {"A": ["Li", "Na", "K", "Mg"], "X": ["F", "Cl", "O"]},
        },
        "stages": {
            "prefilter": {
                "model": {"name": "mace", "path": "out/student.model", "dtype": "float32"},
                "relax": {"fmax": 0.1, "max_steps": 20},
            },
            "rescore": {"model": {"name": "sevennet-0"}, "keep": "e_above_hull <= 0.05"},
        },
        "store": str(tmp_path / "tiny.zarr"),
        "chunk_size": 4,
    }
    distill = {
        "name": "tiny-student",
        "campaign": "campaign.yaml",
        "sampling": {
            "candidates": 12,
            "trajectory_snapshots": 2,
            "rattled": 1,
            "strained": 1,
            "relax": {"fmax": 0.1, "max_steps": 10},
        },
        "split": {"by": "chemsys", "valid": 0.1, "test": 0.3},
        "student": {"channels": 8, "correlation": 2, "interactions": 1, "radial_mlp": [8]},
        "training": {"epochs": 2, "batch_size": 4, "threads": 1, "stage_two": False},
        "evaluation": {"speed_cells": 2, "speed_repeats": 1},
        "output": "out",
        "chunk_size": 4,
    }
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(campaign))
    (tmp_path / "distill.yaml").write_text(yaml.safe_dump(distill))
    return tmp_path / "distill.yaml"


def test_tiny_distillation_gives_a_loadable_student_and_a_report(tmp_path):
    cfg = load_distill(_files(tmp_path))
    out = tmp_path / "out"
    eng = make_engine("parsl", "local", out / "parsl")
    try:
        report = run_distill(cfg, eng)
    finally:
        eng.close()
    files = ("student.model", "student_compiled.model", "report.json", "report.md", "parity.png")
    for name in (*files, "screening.png"):
        assert (out / name).stat().st_size > 0, name
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["force_field"]["test"]["n_frames"] > 0
    assert np.isfinite(on_disk["force_field"]["test"]["energy_mae_mev_per_atom"])
    assert on_disk["speed"]["teacher_s_per_structure"] > 0
    held = on_disk["screening"]["held_out"]
    assert held["n_candidates"] > 0 and len(held["curve"]["recall"]) == len(
        held["curve"]["threshold"]
    )
    assert report["training"]["n_parameters"] > 1000
    fitted = on_disk["references"]["student_fitted"]
    assert set(fitted) == {"Cl", "F", "K", "Li", "Mg", "Na", "O"} & set(
        on_disk["dataset"]["elements"]
    )
    assert "## Screening against the teacher" in (out / "report.md").read_text()
    # the student goes through the same interface as every other model
    student = load_model(ModelSpec(name="mace", path=str(out / "student.model"), dtype="float32"))
    assert student.optimized == {"contractions": 1, "convolutions": 1}  # eager, so swapped
    from ase.build import bulk

    pair = [bulk("NaCl", "rocksalt", a=5.6), bulk("LiF", "rocksalt", a=4.0)]
    p = student.predict(pair)
    assert len(p) == 2 and np.isfinite(p[0].energy) and p[0].forces.shape == (2, 3)
    compiled = ModelSpec(name="mace", path=str(out / "student_compiled.model"), dtype="float32")
    for a, b in zip(p, load_model(compiled).predict(pair), strict=True):  # the same weights
        assert abs(a.energy - b.energy) < 1e-3 and np.abs(a.forces - b.forces).max() < 1e-3
    assert student.unsupported([11, 17]) is None and "Cu" in student.unsupported([29])
    # the campaign naming the student validates (auto keep is not used here)
    from hts.campaign import preflight

    campaign = cfg.load_campaign()
    preflight(campaign)
    # a rerun reuses every label: no new labelling files appear
    dataset = next((out / "dataset").iterdir())
    files_before = sorted(p.name for p in dataset.glob("labels-*.extxyz"))
    eng = make_engine("serial", "local", out / "parsl")
    run_distill(
        cfg.model_copy(update={"training": cfg.training.model_copy(update={"epochs": 3})}), eng
    )
    assert sorted(p.name for p in dataset.glob("labels-*.extxyz")) == files_before


def test_campaign_with_missing_student_names_the_file(tmp_path):
    from hts.campaign import preflight

    cfg = load_distill(_files(tmp_path))
    with pytest.raises(
        CampaignError, match=r"stages.prefilter.model.path: no such model file .*out/student.model"
    ):
        preflight(cfg.load_campaign())


def test_bad_distillation_file_names_the_fields(tmp_path):
    path = _files(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["training"]["epochs"] = 0
    data["sampling"]["rattles"] = 2
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CampaignError) as err:
        load_distill(path)
    msg = str(err.value)
    assert "training.epochs" in msg and "sampling.rattles: unknown field" in msg
    assert str(path) in msg
