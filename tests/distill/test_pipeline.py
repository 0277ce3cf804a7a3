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


def _files(tmp_path, kind: str = "direct"):
    prefilter = {
        "model": {"name": "mace", "path": "out/student.model", "dtype": "float32"},
    }
    if kind in ("direct", "trunk"):
        prefilter["direct"] = True
    else:
        prefilter["relax"] = {"fmax": 0.1, "max_steps": 20}
    campaign = {
        "name": "tiny",
        "candidates": {
            "kind": "substitution",
            "prototypes": ["rocksalt", "cscl", "zincblende"],
            "elements": {"A": ["Li", "Na", "K", "Mg"], "X": ["F", "Cl", "O"]},
        },
        "stages": {
            "prefilter": prefilter,
            "rescore": {
                "model": {"name": "sevennet-0"},
                "relax": {"fmax": 0.1, "max_steps": 10},
                "keep": "e_above_hull <= 0.05",
            },
        },
        "store": str(tmp_path / "tiny.zarr"),
        "chunk_size": 4,
    }
    distill = {
        "name": "tiny-student",
        "campaign": "campaign.yaml",
        "student": {
            "kind": kind,
            "channels": 8,
            "correlation": 2,
            "interactions": 1,
            "radial_mlp": [8],
        },
        "sampling": {
            "train": 10,
            "calibration": 5,
            "points": 6,
            "holdout_systems": 0.2,
            "trajectory_snapshots": 2,
            "rattled": 1,
            "strained": 1,
        },
        "rounds": {"max": 1, "labels": 3, "pool": 8, "snapshots": 2},
        "training": {"epochs": 2, "batch_size": 4, "threads": 1, "stage_two": False},
        "evaluation": {"speed_cells": 2, "speed_repeats": 1, "target_recall": 0.5},
        "output": "out",
        "chunk_size": 4,
    }
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(campaign))
    (tmp_path / "distill.yaml").write_text(yaml.safe_dump(distill))
    return tmp_path / "distill.yaml"


def _check_report(out, report, rounds: int):
    files = ("student.model", "report.json", "report.md", "parity.png")
    # mace's TorchScript copy for a MACE student; a trunk student has none
    assert (out / "student_compiled.model").exists() == (report["student"]["kind"] != "trunk")
    for name in (*files, "screening.png", "rounds.png"):
        assert (out / name).stat().st_size > 0, name
    on_disk = json.loads((out / "report.json").read_text())
    assert json.dumps(on_disk, sort_keys=True) == json.dumps(report, sort_keys=True)
    ds = on_disk["dataset"]
    # of 10 drawn, those that fall in calibration systems are not trained on
    assert ds["training_candidates"] >= 6 and ds["calibration_candidates"] >= 5
    cal = on_disk["screening"]["calibration"]
    # a two-epoch student may fail to relax some candidates: the report says so, with reasons
    fails = on_disk["student_failures"]
    assert cal["n_candidates"] > 0 or (fails["n"] > 0 and fails["reasons"])
    assert fails["n"] == sum(fails["reasons"].values()) or len(fails["reasons"]) == 5
    assert len(cal["curve"]["recall_lower_bound"]) == len(cal["curve"]["threshold"])
    # never trained on: the calibration candidates and the held-out systems
    rows = on_disk["candidates"]
    assert not any(r["trained"] for r in rows)
    assert {r["system"] for r in rows} <= {"primary", "closure"}
    errs = on_disk["errors"]["calibration"]
    assert np.isfinite(errs["energy_mae_at_teacher_minimum_mev"])
    assert np.isfinite(errs["own_energy_mae_mev"]) or fails["n"] > 0
    assert len(on_disk["rounds"]) == rounds
    assert (
        on_disk["rounds"][-1]["teacher_relaxations"] >= on_disk["rounds"][0]["teacher_relaxations"]
    )
    assert on_disk["speed"]["teacher_s_per_structure"] > 0
    assert on_disk["student"]["n_parameters"] > 1000
    fitted = on_disk["references"]["student_fitted"]
    assert {"Cl", "F", "Li", "O"} <= set(fitted)
    assert "## Where the error is" in (out / "report.md").read_text()


def test_tiny_direct_distillation_with_a_round_near_the_threshold(tmp_path):
    cfg = load_distill(_files(tmp_path, "direct"))
    out = tmp_path / "out"
    eng = make_engine("parsl", "local", out / "parsl")
    try:
        report = run_distill(cfg, eng)
    finally:
        eng.close()
    _check_report(out, report, rounds=2)
    assert report["student"]["kind"] == "direct"
    assert report["screening"]["calibration"]["n_candidates"] > 0  # one pass never fails here
    # single points of unrelaxed candidates feed the student's second readout
    assert report["dataset"]["single_points"] >= 4
    index = json.loads((next((out / "dataset").iterdir()) / "index.json").read_text())
    assert len(index["points"]) >= 4 and not set(index["points"]) & set(index["candidates"])
    # round 1 labelled candidates from the pool: more teacher relaxations, more training
    r0, r1 = report["rounds"]
    assert r1["teacher_relaxations"] == r0["teacher_relaxations"] + 3
    assert r1["training_candidates"] == r0["training_candidates"] + 3
    # the direct student loads like any model and predicts an energy per structure
    student = load_model(ModelSpec(name="mace", path=str(out / "student.model"), dtype="float32"))
    from ase.build import bulk

    pair = [bulk("NaCl", "rocksalt", a=5.6), bulk("LiF", "rocksalt", a=4.0)]
    p = student.predict(pair)
    assert len(p) == 2 and np.isfinite(p[0].energy)
    compiled = ModelSpec(name="mace", path=str(out / "student_compiled.model"), dtype="float32")
    for a, b in zip(p, load_model(compiled).predict(pair), strict=True):  # the same weights
        assert abs(a.energy - b.energy) < 1e-3
    # the campaign naming it (direct: true) validates, and runs: one pass per candidate
    from hts.campaign import preflight

    campaign = cfg.load_campaign()
    preflight(campaign)
    # a rerun reuses every label (round 1's included): no new labelling files appear
    dataset = next((out / "dataset").iterdir())
    files_before = sorted(p.name for p in dataset.glob("labels-*.extxyz"))
    eng = make_engine("serial", "local", out / "parsl")
    again = run_distill(
        cfg.model_copy(update={"rounds": cfg.rounds.model_copy(update={"max": 0})}), eng
    )
    assert sorted(p.name for p in dataset.glob("labels-*.extxyz")) == files_before
    assert again["rounds"][0]["training_candidates"] == r1["training_candidates"]


# heavy (make test-heavy, in CI): the same pipeline as the direct distillation above, with a trunk
# student; trunk training on SevenNet-0 labels is tests/distill/test_trunk.py's, a trunk student
# fine-tuned through run_distill tests/distill/test_stores.py's
@pytest.mark.heavy
def test_tiny_trunk_distillation_fine_tunes_the_teachers_first_block(tmp_path):
    """The default kind for a SevenNet teacher: its first block, fine-tuned (one epoch)."""
    path = _files(tmp_path, "trunk")
    data = yaml.safe_load(path.read_text())
    data["student"] = {"kind": "auto", "blocks": 1, "readout_hidden": 8}
    data["sampling"]["points"] = 0
    data["rounds"] = {"max": 1, "labels": 3, "pool": 8}
    data["training"] = {"epochs": 1, "batch_size": 4, "threads": 1, "atom_weight": 1.0}
    path.write_text(yaml.safe_dump(data))
    campaign = yaml.safe_load((tmp_path / "campaign.yaml").read_text())
    campaign["stages"]["prefilter"]["model"] = {"name": "student", "path": "out/student.model"}
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(campaign))
    cfg = load_distill(path)
    out = tmp_path / "out"
    eng = make_engine("parsl", "local", out / "parsl")
    try:
        report = run_distill(cfg, eng)
    finally:
        eng.close()
    assert report["student"]["kind"] == "trunk"
    assert report["student"]["architecture"]["blocks"] == 1
    # the teacher gave per-atom energies at its minima; the trunk trained on them
    from ase.io import read

    dataset = next((out / "dataset").iterdir())
    frames = [a for f in sorted(dataset.glob("labels-*.extxyz")) for a in read(f, ":")]
    minima = [a for a in frames if "REF_energies" in a.arrays]
    assert minima and all(
        abs(a.arrays["REF_energies"].sum() - a.info["REF_energy"]) < 1e-3 for a in minima
    )
    # the student: SevenNet-0's first block, its licence beside it, one forward pass per candidate
    student = load_model(ModelSpec(name="student", path=str(out / "student.model")))
    assert "1 of 5 blocks" in student.version
    assert "GNU GENERAL PUBLIC LICENSE" in (out / "LICENSE").read_text()
    assert "GPL" in (out / "NOTICE.md").read_text()
    sp = report["speed"]
    assert sp["ratio_per_candidate"] > 1  # one forward pass against a teacher relaxation
    assert report["screening"]["calibration"]["n_candidates"] > 0
    # the campaign naming it (direct: true, name: student) validates
    from hts.campaign import preflight

    preflight(cfg.load_campaign())


# heavy (make test-heavy, in CI): mace-torch training and the round loop are the direct
# distillation's above; the on-policy labelling of a student's relaxations is
# tests/distill/test_sample.py's (on_policy_chunk)
@pytest.mark.heavy
def test_tiny_relaxing_distillation_with_an_on_policy_round(tmp_path):
    cfg = load_distill(_files(tmp_path, "relax"))
    out = tmp_path / "out"
    eng = make_engine("parsl", "local", out / "parsl")
    try:
        report = run_distill(cfg, eng)
    finally:
        eng.close()
    _check_report(out, report, rounds=2)
    # round 1: the teacher labelled structures the student visited (DAgger), not new candidates
    r0, r1 = report["rounds"]
    assert r1["teacher_relaxations"] == r0["teacher_relaxations"]
    assert r1["training_frames"] > r0["training_frames"]
    dataset = next((out / "dataset").iterdir())
    index = json.loads((dataset / "index.json").read_text())
    assert len(index["extra_files"]) >= 1
    from ase.io import read

    kinds = {a.info["config_type"] for f in index["extra_files"] for a in read(dataset / f, ":")}
    assert kinds == {"student"}
    student = load_model(ModelSpec(name="mace", path=str(out / "student.model"), dtype="float32"))
    from hts.models.mace_inference import optimize_for_inference

    # eager, so swapped at load: nothing is left to swap
    assert optimize_for_inference(student.model) == {"contractions": 0, "convolutions": 0}
    assert student.unsupported([11, 17]) is None and "Cu" in student.unsupported([29])


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
    data["student"]["kind"] = "both"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CampaignError) as err:
        load_distill(path)
    msg = str(err.value)
    assert "training.epochs" in msg and "sampling.rattles: unknown field" in msg
    assert "student.kind" in msg
    assert str(path) in msg


def test_an_ase_teacher_is_checked_and_keys_its_own_labels(tmp_path):
    """Labels are reused only for the same calculator built the same way; a teacher without
    stress (whose stress the student learns) is refused before any labelling."""
    path = _files(tmp_path)
    data = yaml.safe_load(path.read_text())
    keys = set()
    for teacher in (
        {"name": "ase", "calculator": "ase.calculators.emt:EMT"},
        {"name": "ase", "calculator": "ase.calculators.lj:LennardJones"},
        {"name": "ase", "calculator": "ase.calculators.lj:LennardJones", "kwargs": {"sigma": 2.0}},
    ):
        cfg = load_distill(path).model_copy(update={"teacher": ModelSpec(**teacher)})
        keys.add(cfg.dataset_key(cfg.teacher))
    assert len(keys) == 3 and all(k.startswith("ase-") for k in keys)
    data["teacher"] = {"name": "ase", "calculator": "ase.calculators.test:TestPotential"}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CampaignError, match=r"teacher.calculator: .*TestPotential gives no stress"):
        run_distill(load_distill(path), engine=None)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_space_of_one_chemistry_is_calibrated_and_held_out_by_composition(tmp_path):
    """fcc Cu-Au-Pd orderings (1,081, three chemical systems hold 97 % of them): calibration
    draws compositions, holdout keeps compositions out, and the hull is the one over every
    teacher label.  EMT (ASE's effective-medium potential for these metals) is the teacher."""
    from hts.distill.evaluate import hull_energies
    from hts.distill.sample import held_out_system

    emt = {"name": "ase", "calculator": "ase.calculators.emt:EMT"}
    campaign = {
        "name": "alloys",
        "candidates": {
            "kind": "enumeration",
            "lattice": "fcc",
            "species": ["Cu", "Au", "Pd"],
            "max_atoms": 6,
        },
        "stages": {
            "prefilter": {
                "model": {"name": "mace", "path": "out/student.model", "dtype": "float32"},
                "direct": True,
            },
            "rescore": {
                "model": emt,
                "relax": {"fmax": 0.1, "max_steps": 20},
                "keep": "e_above_hull <= 0.02",
            },
        },
        "store": str(tmp_path / "alloys.zarr"),
    }
    distill = {
        "name": "alloys-student",
        "campaign": "campaign.yaml",
        "student": {
            "kind": "direct",
            "channels": 8,
            "correlation": 2,
            "interactions": 1,
            "radial_mlp": [8],
        },
        "sampling": {
            "train": 40,
            "calibration": 40,  # no composition gives more than 4 orderings per draw
            "holdout_systems": 0.3,
            "trajectory_snapshots": 2,
            "rattled": 0,
            "strained": 0,
        },
        "rounds": {"max": 0},
        "training": {"epochs": 2, "batch_size": 8, "threads": 1, "stage_two": False},
        "evaluation": {"speed_cells": 2, "speed_repeats": 1, "target_recall": 0.5},
        "output": "out",
        "chunk_size": 8,
    }
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(campaign))
    (tmp_path / "distill.yaml").write_text(yaml.safe_dump(distill))
    out = tmp_path / "out"
    report = run_distill(
        load_distill(tmp_path / "distill.yaml"), make_engine("serial", "local", out / "run")
    )
    ds, rows = report["dataset"], report["candidates"]
    assert ds["calibration_by"] == "composition" and ds["subsystem_candidates"] == 0
    assert ds["calibration_candidates"] >= 40 and ds["training_candidates"] >= 20
    assert {r["system"] for r in rows} == {"primary"}
    assert ds["calibration_systems"] == len({r["formula"] for r in rows}) > 1
    assert all(r["weight"] > 0 for r in rows) and report["screening"]["calibration"]["weighted"]
    assert "calibration compositions" in (out / "report.md").read_text()
    # held out by composition: whole compositions, never labelled for training
    held = {r["formula"] for r in rows if r["held_out_system"]}
    assert held and held != {r["formula"] for r in rows}
    assert all(r["held_out_system"] == held_out_system(r["formula"], 0.3, 0) for r in rows)
    index = json.loads((next((out / "dataset").iterdir()) / "index.json").read_text())
    calibration = {r["id"] for r in rows}
    labelled = {c: v for c, v in index["candidates"].items() if v["file"] and not v["error"]}
    assert all(c in calibration for c, v in labelled.items() if v["formula"] in held)
    assert len(labelled) > len(calibration)  # training candidates, and they shape the hull:
    # the teacher's e_above_hull is over every teacher relaxation, not over calibration alone
    items = {c: (v["formula"], v["energy_per_atom"]) for c, v in labelled.items()}
    refs = report["references"]["teacher"]
    every = dict(zip(items, hull_energies(list(items.values()), refs), strict=True))
    assert all(
        abs(r["teacher_e_above_hull"] - every[r["id"]]) < 1e-9 for r in rows if r["id"] in every
    )
