"""The audit: a seeded sample of the prefilter's rejects rescored by the teacher, and what it shows."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from hts.audit import audit_pick, clopper_pearson, economics, estimate, warning, wilson
from hts.spec import CampaignError, parse_campaign
from hts.store import Counters, StoreReader, open_dataset
from tests.conftest import kill_run_after, lj_campaign, run_on_parsl, write_campaign

# -- the interval arithmetic, on cases known in closed form ------------------------------------


def test_clopper_pearson_on_known_cases():
    # k = 0 and k = n have closed forms: (0, 1 - (a/2)^(1/n)) and ((a/2)^(1/n), 1)
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 1 - 0.025 ** (1 / 10)), abs=1e-12)
    assert clopper_pearson(10, 10) == pytest.approx((0.025 ** (1 / 10), 1.0), abs=1e-12)
    # 5 of 10: the tabulated exact interval (0.1871, 0.8129)
    lo, hi = clopper_pearson(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.1871, 0.8129)
    # 1 of 50 at 95 %: (0.000506, 0.1065)
    lo, hi = clopper_pearson(1, 50)
    assert lo == pytest.approx(0.000506, rel=1e-2) and hi == pytest.approx(0.1065, rel=1e-3)
    assert clopper_pearson(0, 0) == (0.0, 1.0)


def test_wilson_on_a_known_case_and_inside_the_exact_interval():
    # 5 of 10, z = 1.95996: centre 0.5, half-width z*sqrt(.25/10 + z^2/400)/(1 + z^2/10)
    z = 1.959963984540054
    h = z * math.sqrt(0.25 / 10 + z * z / 400) / (1 + z * z / 10)
    assert wilson(5, 10) == pytest.approx((0.5 - h, 0.5 + h), abs=1e-12)
    for k, n in [(0, 20), (3, 40), (20, 20)]:
        w, e = wilson(k, n), clopper_pearson(k, n)
        assert e[0] <= w[0] + 1e-12 and w[1] <= e[1] + 1e-12  # the exact one is the wider


def test_the_pick_is_a_uniform_draw_fixed_by_seed_and_id():
    ids = [f"{i:016x}" for i in range(20000)]
    picked = [audit_pick(0, i, 0.1) for i in ids]
    n = sum(picked)
    assert abs(n - 2000) < 4 * math.sqrt(20000 * 0.1 * 0.9)
    assert picked == [audit_pick(0, i, 0.1) for i in reversed(ids)][::-1]  # order does not matter
    other = [audit_pick(1, i, 0.1) for i in ids]
    assert (
        sum(a and b for a, b in zip(picked, other, strict=True)) < 300
    )  # a new seed: a new sample
    # nested: a larger share keeps every candidate of the smaller one
    assert all(audit_pick(0, i, 0.2) for i, p in zip(ids, picked, strict=True) if p)
    assert not any(audit_pick(0, i, 0.0) for i in ids[:100])


def _counters(
    kept_pre, scored_pre, rescored, kept_teacher, audit, time_ms=(1000, 50000)
) -> Counters:
    c = Counters.empty(["prefilter", "rescore"])
    c.tried = [scored_pre, rescored]
    c.scored = [scored_pre, rescored]
    c.kept = [kept_pre, kept_teacher]
    c.audit = list(audit)
    c.time_ms = list(time_ms)
    return c


def test_recall_and_its_interval_from_the_counters():
    # 1000 screened, 100 survivors (all rescored, 40 teacher-stable), 900 rejects,
    # an audit of 90 rejects scored with 3 teacher-stable among them
    c = _counters(100, 1000, 100 + 90, 40, (92, 90, 3))
    a = estimate(c, share=0.1, target_recall=0.95)
    assert a.miss_rate == pytest.approx(3 / 90)
    missed = 3 / 90 * 900  # 30 teacher-stable rejects expected
    assert a.recall == pytest.approx(40 / (40 + missed))
    lo_p, hi_p = clopper_pearson(3, 90)
    assert a.recall_ci == pytest.approx((40 / (40 + hi_p * 900), 40 / (40 + lo_p * 900)))
    assert a.recall_ci[0] < a.recall < a.recall_ci[1]
    assert a.enrichment == pytest.approx((40 / 100) / (3 / 90))
    assert a.below_target  # upper bound ~0.81 < 0.95
    assert "below the distillation's target_recall 0.95" in warning(a)
    # no miss in a large audit: recall 1, upper bound 1, lower bound from the exact interval
    b = estimate(_counters(100, 1000, 400, 40, (300, 300, 0)), 0.1, 0.95)
    assert b.recall == 1.0 and b.recall_ci[1] == 1.0 and b.recall_ci[0] < 1.0
    assert not b.below_target and warning(b) is None
    assert b.enrichment is None  # nothing to divide by
    # nothing audited yet: nothing claimed
    n = estimate(_counters(100, 1000, 100, 40, (0, 0, 0)), 0.1, 0.95)
    assert n.recall is None and n.recall_ci is None and not n.below_target


def test_economics_from_the_measured_times():
    c = _counters(100, 1000, 190, 40, (92, 90, 3), time_ms=(2_000, 95_000))
    e = economics(c, estimate(c, 0.1, None))
    teacher_per = 95.0 / 190
    assert e["teacher_only_s"] == pytest.approx(teacher_per * 1000)
    assert e["teacher_saved_s"] == pytest.approx(teacher_per * 1000 - 97.0)
    assert e["s_per_stable_hit"] == pytest.approx(97.0 / 40)
    assert e["audit_teacher_s"] == pytest.approx(teacher_per * 92)
    assert [s["discovery_rate"] for s in e["stages"]] == pytest.approx([0.1, 0.04])


# -- on real campaigns ---------------------------------------------------------------------


def _audited(tmp_path: Path, store: str = "lj.zarr", **kw) -> dict:
    data = lj_campaign(tmp_path, **kw)
    data["store"] = str(tmp_path / store)
    data["stages"] = {
        # a strict prefilter and a lenient teacher: the teacher keeps many of the student's rejects,
        # so misses are planted and the audit must find them
        "prefilter": {
            "model": {"name": "lennard-jones"},
            "relax": {"fmax": 0.3, "max_steps": 20, "cell_filter": "unit"},
            "keep": "e_above_hull <= 0.0",
            "audit": 0.5,
        },
        "rescore": {
            "model": {"name": "lennard-jones"},
            "relax": {"fmax": 0.1, "max_steps": 60, "cell_filter": "unit"},
            "keep": "e_above_hull <= 0.5",
            "chunk_size": 4,
        },
    }
    return data


def _audit_ids(store) -> set[str]:
    ds = open_dataset(store)
    return set(ds.id.values.astype(object)[ds.audit.values])


def test_the_audit_finds_planted_misses_and_is_the_same_for_any_chunking(tmp_path):
    data = _audited(tmp_path, chunk_size=3, limits={"max_candidates": 48})
    c = parse_campaign(data)
    stats = run_on_parsl(c, tmp_path / "runinfo")
    ds = open_dataset(c.store)
    audit, kept = ds.audit.values, ds.kept.values
    scored_pre = np.isfinite(ds.e_above_hull.values[:, 0])
    rejects = scored_pre & ~kept[:, 0]
    ids = ds.id.values.astype(object)
    # exactly the drawn rejects, each rescored, none a survivor
    expect = np.array(
        [r and audit_pick(c.seed, str(i), 0.5) for r, i in zip(rejects, ids, strict=True)]
    )
    assert np.array_equal(audit, expect) and 0 < audit.sum() < rejects.sum()
    assert (ds.stage_status.values[audit, 1].astype(object) != "").all()
    assert not kept[audit, 1].any()
    # the teacher's verdict is in audit_missed: planted misses found
    teacher_stable = np.isfinite(ds.e_above_hull.values[:, 1]) & (
        ds.e_above_hull.values[:, 1] <= 0.5
    )
    assert np.array_equal(ds.audit_missed.values, audit & teacher_stable)
    assert ds.audit_missed.values.sum() > 0
    # teacher survivors are prefilter survivors
    assert not (kept[:, 1] & ~kept[:, 0]).any()
    assert stats.audited == audit.sum()
    # the counters agree with the arrays
    r = StoreReader(c.store)
    assert r.counters().audit == [
        int(audit.sum()),
        int((audit & np.isfinite(ds.e_above_hull.values[:, 1])).sum()),
        int(ds.audit_missed.values.sum()),
    ]

    # another chunking: the same sample of the same candidates
    other = parse_campaign(
        _audited(tmp_path, store="other.zarr", chunk_size=7, limits={"max_candidates": 48})
    )
    run_on_parsl(other, tmp_path / "runinfo2")
    assert _audit_ids(other.store) == set(ids[audit])


def test_the_audit_survives_a_sigkill_and_status_json_reports_it(tmp_path):
    data = _audited(tmp_path, chunk_size=2)
    data["candidates"]["prototypes"] = ["rocksalt", "zincblende", "cscl", "fluorite", "wurtzite"]
    path = write_campaign(tmp_path, data)
    store = Path(data["store"])
    kill_run_after(path, store, 16, cwd=tmp_path)
    # the same `hts run` and then the reads, in-process (the kill needed a process of its own;
    # tests/test_cli.py runs the commands as a user types them)
    from typer.testing import CliRunner

    from hts.cli import app

    res = CliRunner().invoke(app, ["run", str(path), "-q"])
    assert res.exit_code == 0, res.output
    clean = parse_campaign(data | {"store": str(tmp_path / "clean.zarr")}, base_dir=str(tmp_path))
    run_on_parsl(clean, tmp_path / "runinfo")
    assert _audit_ids(store) == _audit_ids(clean.store)
    ds = open_dataset(store)
    assert (ds.stage_status.values[ds.audit.values, 1].astype(object) != "").all()

    res = CliRunner().invoke(app, ["status", str(store), "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    a = s["audit"]
    assert a["audited"] == int(ds.audit.values.sum()) > 0
    assert a["missed"] == int(ds.audit_missed.values.sum())
    assert 0 <= a["recall_ci"][0] <= a["recall"] <= a["recall_ci"][1] <= 1
    assert [st["stage"] for st in s["stages"]] == ["prefilter", "rescore"]
    assert s["economics"]["screened"] == ds.sizes["candidate"]
    assert s["economics"]["teacher_only_s"] > 0
    text = " ".join(CliRunner().invoke(app, ["status", str(store)]).stdout.split())
    # the export's summary names the audited rows and the misses
    out = tmp_path / "export"
    res = CliRunner().invoke(app, ["export", str(store), "--out", str(out), "--xrd", "0"])
    assert res.exit_code == 0, res.output
    with (out / "summary.csv").open() as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    audited = set(ds.id.values.astype(object)[ds.audit.values])
    assert {i for i, r in rows.items() if r["audit"] == "True"} == audited
    assert sum(r["audit_missed"] == "True" for r in rows.values()) == int(
        ds.audit_missed.values.sum()
    )
    assert "audit (50.0% of rejects to the teacher)" in text and "recall of teacher-stable" in text


def test_an_audit_needs_a_teacher(tmp_path):
    data = lj_campaign(tmp_path)
    data["stages"]["prefilter"]["audit"] = 0.02
    with pytest.raises(CampaignError, match="prefilter.audit"):
        parse_campaign(data)
    data["stages"]["prefilter"]["audit"] = 0.9
    with pytest.raises(CampaignError, match="audit"):
        parse_campaign(data)
