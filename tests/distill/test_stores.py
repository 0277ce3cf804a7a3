"""The flywheel: a real campaign's teacher rows (survivors and audited rejects) fine-tune its student.

The shipped demo student (direct) prefilters a small substitution space, the
Lennard-Jones potential stands in for the teacher (cost only), and ``hts
distill`` with ``data.stores`` reads the store's teacher rows, fine-tunes the
student from ``student.init`` and reports both students on the held-out rows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from tests.conftest import REPO, lj_campaign

DEMO = REPO / "workflows" / "models" / "demo-student"


def _campaign(tmp_path, audit: float = 0.5) -> dict:
    prefilter = {
        "model": {"name": "student", "path": str(DEMO / "student.model")},
        "direct": True,
        "keep": "e_above_hull <= 0.05",
        "distillation": {"report": str(DEMO / "report.json")},
    }
    if audit:
        prefilter["audit"] = audit
    return lj_campaign(
        tmp_path,
        name="flywheel",
        candidates={
            "kind": "substitution",
            "prototypes": ["rocksalt", "cscl", "zincblende", "fluorite"],
            "elements": {"A": ["Li", "Na", "K", "Mg", "Ca"], "X": ["F", "Cl", "O", "S"]},
        },
        stages={
            "prefilter": prefilter,
            "rescore": {
                "model": {"name": "lennard-jones"},
                "relax": {"fmax": 0.1, "max_steps": 30},
                "keep": "e_above_hull <= 0.05",
            },
        },
        store=str(tmp_path / "round1.zarr"),
    )


def _distill(tmp_path, stores: list[str]) -> dict:
    return {
        "name": "v2",
        "campaign": "campaign.yaml",
        "student": {"kind": "auto", "init": str(DEMO / "student.model")},  # the file's kind
        "sampling": {"train": 0, "calibration": 0, "holdout_systems": 0},
        "data": {"stores": stores, "holdout": 0.4},
        "rounds": {"max": 0, "epochs": 3},
        "training": {"epochs": 6, "batch_size": 8, "threads": 1},
        "evaluation": {"speed_cells": 2, "speed_repeats": 1, "target_recall": 0.5},
        "output": "v2",
    }


def _write(tmp_path, name: str, data: dict):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def round1(tmp_path_factory):
    """A real campaign with an audit: student prefilter, LJ teacher, one store."""
    from hts.campaign import run_campaign
    from hts.execution import make_engine
    from hts.spec import load_campaign

    tmp = tmp_path_factory.mktemp("flywheel")
    path = _write(tmp, "campaign.yaml", _campaign(tmp))
    run_campaign(load_campaign(path), make_engine("serial", "local", tmp / "run"))
    return tmp


def test_a_store_fine_tunes_the_student_and_the_report_compares_before_and_after(round1):
    from hts.distill.config import load_distill
    from hts.distill.pipeline import run_distill
    from hts.execution import make_engine
    from hts.store import open_dataset

    ds = open_dataset(round1 / "round1.zarr")
    pre, res = list(ds.stage.values).index("prefilter"), list(ds.stage.values).index("rescore")
    teacher = ds.stage_status.values[:, res] == "ok"
    survivors = teacher & ds.kept.values[:, pre]
    audited = teacher & ds.audit.values & ~ds.kept.values[:, pre]
    assert survivors.sum() >= 4 and audited.sum() >= 2, "the campaign gave the flywheel too little"

    cfg = load_distill(_write(round1, "distill.yaml", _distill(round1, ["round1.zarr"])))
    report = run_distill(cfg, make_engine("serial", "local", round1 / "run-distill"))
    out = round1 / "v2"

    fw = report["flywheel"]
    (st,) = fw["stores"]
    assert st["teacher_rows"] == int(teacher.sum())  # every teacher row read, no more
    assert st["survivors"] == int(survivors.sum()) and st["audited"] == int(audited.sum())
    assert st["audit_missed"] == int((audited & ds.audit_missed.values).sum())
    assert st["survivors"] + st["audited"] + st["rescored_other"] == st["teacher_rows"]
    assert st["from_store_structure"] == 0  # every candidate regenerated from its source
    # held out by id, never trained on: the rest is
    assert fw["trained_on"] + st["held_out"] == st["teacher_rows"]
    assert 0 < st["held_out"] < st["teacher_rows"]
    assert "audited rejects" in fw["population"]
    for name in ("before", "after"):
        e = fw[name]
        assert e["n_candidates"] > 0 and e["n_effective"] > 0
        assert e["calibrated"] is None or 0 <= e["calibrated"]["recall"] <= 1
    assert fw["before"]["student"].endswith("demo-student/student.model")
    from hts.distill.evaluate import auto_keep_rule

    # v1's own keep: auto threshold (its report, at the distillation's target recall)
    v1_rule = auto_keep_rule(DEMO / "report.json", 0.5).text
    assert v1_rule == f"e_above_hull <= {fw['before']['own_report']['threshold']:g}"
    # both students also at that one threshold
    assert fw["after"]["init_threshold"]["threshold"] == fw["before"]["own_report"]["threshold"]
    # the held-out rows are the calibration (sampling.calibration: 0): weighted, so audited
    # rejects count for the rejects they stand for
    cal = report["screening"]["calibration"]
    assert cal["weighted"] and cal["n_candidates"] == fw["after"]["n_candidates"]
    rows = report["candidates"]
    weights = {r["system"]: r["weight"] for r in rows}
    assert weights["audit"] > weights["survivor"] > 0
    assert {r["system"] for r in rows} <= {"survivor", "audit"}
    # fine-tuned from v1: a new file of the same kind, covering the same elements
    from hts.models import load_model
    from hts.spec import ModelSpec

    v1 = load_model(ModelSpec(name="student", path=str(DEMO / "student.model")))
    v2 = load_model(ModelSpec(name="student", path=str(out / "student.model")))
    assert type(v2) is type(v1) and report["student"]["kind"] in ("direct", "trunk")
    for z in range(1, 95):
        assert (v1.unsupported([z]) is None) == (v2.unsupported([z]) is None), z
    from ase.build import bulk

    pair = [bulk("NaCl", "rocksalt", a=5.6), bulk("LiF", "rocksalt", a=4.0)]
    e1 = [p.energy for p in v1.predict(pair)]
    e2 = [p.energy for p in v2.predict(pair)]
    assert np.all(np.isfinite(e2)) and not np.allclose(e1, e2)
    log = next((out / "train").glob("round-0-*/run/train.log")).read_text()
    assert "fine-tuning" in log and log.count("Epoch ") == 3  # rounds.epochs: the short schedule
    md = (out / "report.md").read_text()
    assert "## Flywheel" in md and "before (its report's)" in md
    assert json.loads((out / "report.json").read_text())["flywheel"] == json.loads(json.dumps(fw))


def test_a_bad_store_is_an_error_naming_the_field(round1, tmp_path):
    from hts.campaign import run_campaign
    from hts.distill.config import load_distill
    from hts.distill.pipeline import run_distill
    from hts.execution import make_engine
    from hts.spec import CampaignError, load_campaign

    (tmp_path / "campaign.yaml").write_text((round1 / "campaign.yaml").read_text())
    cfg = load_distill(_write(tmp_path, "distill.yaml", _distill(tmp_path, ["nowhere.zarr"])))
    with pytest.raises(CampaignError, match=r"data.stores\[0\]: .*nowhere.zarr: no hts store here"):
        run_distill(cfg, make_engine("serial", "local", tmp_path / "run"))
    # a campaign without a rescore stage has no teacher results
    lj = lj_campaign(tmp_path, store=str(tmp_path / "lj.zarr"), limits={"max_candidates": 8})
    run_campaign(
        load_campaign(_write(tmp_path, "lj.yaml", lj)),
        make_engine("serial", "local", tmp_path / "lj"),
    )
    cfg = load_distill(_write(tmp_path, "distill.yaml", _distill(tmp_path, ["lj.zarr"])))
    with pytest.raises(
        CampaignError, match=r"data.stores\[0\]: .*lj.zarr: its campaign has no rescore"
    ):
        run_distill(cfg, make_engine("serial", "local", tmp_path / "run"))
    assert not (tmp_path / "v2" / "report.json").exists()


def test_zero_budgets_need_stores_and_stores_need_a_direct_student(tmp_path):
    from hts.distill.config import load_distill
    from hts.spec import CampaignError

    data = _distill(tmp_path, [])
    with pytest.raises(CampaignError, match=r"sampling.train: 0 needs data.stores"):
        load_distill(_write(tmp_path, "a.yaml", data))
    data = _distill(tmp_path, ["x.zarr"])
    data["student"] = {"kind": "relax"}
    with pytest.raises(CampaignError, match=r"data.stores: .* use student.kind: trunk or direct"):
        load_distill(_write(tmp_path, "b.yaml", data))
