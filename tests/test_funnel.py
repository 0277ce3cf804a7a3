"""Prefilter → rescore on a real Parsl thread pool and a real Zarr store (analytic potential)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition

from hts.spec import CampaignError, parse_campaign
from hts.store import StoreReader, open_dataset
from tests.conftest import lj_campaign, run_on_parsl


def _funnel(tmp_path, **kw):
    data = lj_campaign(tmp_path, **kw)
    data["stages"] = {
        # a loose, cheap prefilter and a tight teacher: same potential, different settings
        "prefilter": {
            "model": {"name": "lennard-jones"},
            "relax": {"fmax": 0.3, "max_steps": 30, "cell_filter": "unit"},
            "keep": "e_above_hull <= 0.15",
        },
        "rescore": {
            "model": {"name": "lennard-jones"},
            "relax": {"fmax": 0.01, "max_steps": 400},
            "keep": "e_above_hull <= 0.02 and converged",
            "chunk_size": 3,
        },
    }
    return parse_campaign(data)


def test_survivors_are_rescored_on_the_teachers_hull(tmp_path):
    c = _funnel(tmp_path)
    stats = run_on_parsl(c, tmp_path / "runinfo")
    ds = open_dataset(c.store)
    assert list(ds.stage.values.astype(object)) == ["prefilter", "rescore"]
    pre_kept = ds.kept.values[:, 0]
    e_re = ds.energy_per_atom.values[:, 1]
    rescored = np.isfinite(e_re)
    assert 0 < pre_kept.sum() < ds.sizes["candidate"]
    # every final survivor was rescored (streaming may rescore a few more, never fewer)
    assert rescored[pre_kept].all()
    assert stats.rescored == rescored.sum()
    assert set(np.flatnonzero(rescored)) == set(StoreReader(c.store).stage_rows("rescore"))
    assert (ds.stage_reached.values.astype(object)[rescored] == "rescore").all()
    # the teacher relaxes further: never higher than where the prefilter stopped
    assert (e_re[rescored] <= ds.energy_per_atom.values[rescored, 0] + 1e-6).all()
    # rescore e_above_hull is the teacher's own hull: its references and rescored candidates only
    refs = ds.attrs["references"]["rescore"]
    entries = [PDEntry(Composition(el), r["energy_per_atom"]) for el, r in refs.items()]
    f = ds.formula.values.astype(object)
    idx = np.flatnonzero(rescored)
    cand = [PDEntry(Composition(f[i]), e_re[i] * Composition(f[i]).num_atoms) for i in idx]
    pd = PhaseDiagram(entries + cand)
    for i, entry in zip(idx, cand, strict=True):
        expected = pd.get_e_above_hull(entry, allow_negative=True)
        assert ds.e_above_hull.values[i, 1] == pytest.approx(expected, abs=1e-8)
    kept_re = ds.kept.values[:, 1]
    expect = rescored & (ds.e_above_hull.values[:, 1] <= 0.02) & ds.converged.values[:, 1]
    assert np.array_equal(kept_re, expect)
    assert stats.rescore_kept == kept_re.sum() > 0
    assert str(ds.stage_model.values[1]) == "lennard-jones"


def test_interrupted_rescore_resumes(tmp_path):
    """Survivors whose teacher result never reached the ledger are rescored on the next run."""
    c = _funnel(tmp_path, limits={"max_candidates": 40})
    run_on_parsl(c, tmp_path / "runinfo")
    before = open_dataset(c.store)
    group = zarr.open_group(c.store, mode="r+")
    ledger = dict(group.attrs["ledger"])
    ledger["n_updates"] = 0  # no teacher result reached the ledger
    ledger["finalized"] = False
    group.attrs["ledger"] = ledger
    for name in ("energy_per_atom", "e_above_hull", "kept"):
        a = group[name]
        a[:, 1] = np.full(a.shape[0], a.fill_value)
    stats = run_on_parsl(c, tmp_path / "runinfo")
    assert stats.done == 0 and stats.resumed == before.sizes["candidate"]
    after = open_dataset(c.store)
    assert stats.rescored == int(before.kept.values[:, 0].sum()) > 0
    for name in ("energy_per_atom", "e_above_hull", "kept"):
        a, b = before[name].values[:, 1], after[name].values[:, 1]
        m = before.kept.values[:, 0]
        np.testing.assert_allclose(a[m].astype(float), b[m].astype(float), atol=1e-6)


def test_auto_keep_needs_a_report_and_a_teacher(tmp_path):
    data = lj_campaign(tmp_path)
    data["stages"]["prefilter"]["keep"] = "auto"
    with pytest.raises(CampaignError, match="distillation.report"):
        parse_campaign(data)
    data["stages"]["prefilter"]["distillation"] = {"report": "nope.json"}
    with pytest.raises(CampaignError, match="rescore stage"):
        parse_campaign(data)


def test_a_direct_prefilter_scores_each_candidate_in_one_pass(tmp_path):
    """direct: true: one prediction per candidate as given, no relaxation; the teacher starts
    from the candidate's own structure."""
    from hts.candidates import chunks, open_source

    data = _funnel(tmp_path).model_dump(mode="json")
    data["stages"]["prefilter"] = {
        "model": {"name": "lennard-jones"},
        "direct": True,
        "keep": "e_above_hull <= 0.15",
    }
    c = parse_campaign(data)
    run_on_parsl(c, tmp_path / "runinfo")
    ds = open_dataset(c.store)
    ok = ds.status.values.astype(object) == "ok"
    assert ok.any()
    assert (ds.n_steps.values[ok, 0] == 0).all() and ds.converged.values[ok, 0].all()
    given = {x.id: x for ch in chunks(open_source(c), 64) for x in ch.candidates if not x.error}
    pre_only = ok & ~np.isfinite(ds.energy_per_atom.values[:, 1])
    for i in np.flatnonzero(pre_only)[:10]:  # unchanged structure where the teacher did not go
        cand = given[str(ds.id.values[i])]
        a0, n = int(ds.atom_start.values[i]), int(ds.n_atoms.values[i])
        np.testing.assert_allclose(ds.positions.values[a0 : a0 + n], cand.positions)
    # a single point of the same potential: the energy of the unrelaxed structure
    from hts.models import load_model
    from hts.spec import ModelSpec

    lj = load_model(ModelSpec(name="lennard-jones"))
    i = int(np.flatnonzero(ok)[0])
    cand = given[str(ds.id.values[i])]
    e = lj.predict([cand.to_atoms()])[0].energy / len(cand.numbers)
    assert ds.energy_per_atom.values[i, 0] == pytest.approx(e)
    # survivors were rescored (relaxed) by the teacher from there
    kept = ds.kept.values[:, 0]
    assert kept.any() and np.isfinite(ds.energy_per_atom.values[kept, 1]).all()
    # relax settings with direct: true are refused, naming the field
    data["stages"]["prefilter"]["relax"] = {"fmax": 0.1}
    with pytest.raises(CampaignError, match="stages.prefilter: relax: a direct prefilter"):
        parse_campaign(data)


def test_auto_keep_reads_the_threshold_from_the_report(tmp_path):
    from hts.campaign import preflight, resolve

    c = _funnel(tmp_path)
    data = c.model_dump(mode="json")
    data["stages"]["prefilter"]["keep"] = "auto"
    data["stages"]["prefilter"]["distillation"] = {
        "report": "report.json",
        "target_recall": 0.9,
        "references": "relaxed",
    }
    c = parse_campaign(data, base_dir=str(tmp_path))
    with pytest.raises(CampaignError, match=r"report.json: no such distillation report"):
        preflight(c)
    curve = {
        "threshold": [0.0, 0.05, 0.1, 0.15],
        "recall": [0.5, 0.92, 0.97, 1.0],
        "recall_lower_bound": [0.4, 0.85, 0.92, 0.95],
        "discarded": [0.9, 0.7, 0.6, 0.5],
    }
    report = {"screening": {"calibration": {"curve": curve, "n_teacher_stable": 60}}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    # the bound, not the point estimate, has to reach the target
    rule = resolve(c).stages["prefilter"].keep
    assert rule.text == "e_above_hull <= 0.1"
    # a direct student's report needs a direct prefilter, and the other way round
    report["student"] = {"kind": "direct"}
    (tmp_path / "report.json").write_text(json.dumps(report))
    with pytest.raises(CampaignError, match=r"stages.prefilter.direct: .* set direct: true"):
        preflight(c)
    d2 = c.model_dump(mode="json")
    d2["stages"]["prefilter"]["direct"] = True
    d2["stages"]["prefilter"].pop("relax")
    assert resolve(parse_campaign(d2, base_dir=str(tmp_path))).stages["prefilter"].keep.text == (
        "e_above_hull <= 0.1"
    )
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(CampaignError, match="not a readable hts distillation report"):
        preflight(c)


def test_prefilter_takes_fitted_references_from_the_report(tmp_path):
    c = _funnel(tmp_path, limits={"max_candidates": 16})
    data = c.model_dump(mode="json")
    fitted = {
        "Li": -1.5,
        "Na": -1.2,
        "K": -1.0,
        "Mg": -1.4,
        "Ca": -1.9,
        "Sr": -1.7,
        "O": -4.0,
        "S": -3.0,
        "F": -2.0,
    }  # no Cl: its candidates fail with a reason
    curve = {
        "threshold": [0.0, 0.5],
        "recall": [0.2, 1.0],
        "recall_lower_bound": [0.1, 0.96],
        "discarded": [0.9, 0.1],
    }
    (tmp_path / "report.json").write_text(
        json.dumps(
            {
                "screening": {"calibration": {"curve": curve, "n_teacher_stable": 80}},
                "references": {"student_fitted": {**fitted, "Cl": None}},
            }
        )
    )
    data["stages"]["prefilter"]["keep"] = "auto"
    data["stages"]["prefilter"]["distillation"] = {"report": "report.json"}
    c = parse_campaign(data, base_dir=str(tmp_path))
    run_on_parsl(c, tmp_path / "runinfo")
    ds = open_dataset(c.store)
    refs = ds.attrs["references"]["prefilter"]
    assert {el: refs[el]["energy_per_atom"] for el in fitted} == fitted
    assert refs["F"]["structure"] == "fitted (distillation report)"
    # the teacher still relaxes its own
    assert ds.attrs["references"]["rescore"]["F"]["structure"] != refs["F"]["structure"]
    reasons = ds.reason.values.astype(object)
    has_cl = np.array(["Cl" in f for f in ds.formula.values.astype(object)])
    assert has_cl.any()
    assert all("Cl is not in the distillation report" in r for r in reasons[has_cl])
    assert np.isfinite(ds.e_above_hull.values[~has_cl, 0]).all()
    assert ds.kept.values[~has_cl, 0].all() == bool(
        (ds.e_above_hull.values[~has_cl, 0] <= 0.5).all()
    )
    # a retrained student's report changes results: the store refuses to mix them
    from hts.campaign import open_store
    from hts.store import StoreMismatchError

    open_store(c)  # the same report reopens
    report = json.loads((tmp_path / "report.json").read_text())
    report["references"]["student_fitted"]["F"] = -2.5
    (tmp_path / "report.json").write_text(json.dumps(report))
    with pytest.raises(StoreMismatchError, match="settings"):
        open_store(c)
