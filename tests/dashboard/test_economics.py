"""The dashboard's and `hts report`'s funnel economics and audit panel: hts.audit's numbers, live."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from hts.audit import funnel_of
from hts.dashboard.html import write_html
from hts.dashboard.server import Dashboard
from hts.dashboard.views import StoreViews
from hts.spec import parse_campaign
from hts.store import Store, StoreReader
from tests.conftest import run_on_parsl
from tests.dashboard.test_cache import _rescore, _row
from tests.test_audit import _audited

NODE = shutil.which("node")
RENDER = Path(__file__).with_name("render_page.js")


def _funnel(path) -> dict:
    """What hts.audit says of the store, as the JSON the page receives."""
    return json.loads(json.dumps(funnel_of(StoreReader(path))))


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A real audited campaign (misses planted) whose distillation asks a recall it cannot show."""
    tmp = tmp_path_factory.mktemp("audited")
    data = _audited(tmp, chunk_size=3, limits={"max_candidates": 48})
    report = tmp / "report.json"
    report.write_text(json.dumps({"screening": {}}))
    data["stages"]["prefilter"]["distillation"] = {
        "report": str(report),
        "target_recall": 1.0,
        "references": "relaxed",
    }
    c = parse_campaign(data)
    run_on_parsl(c, tmp / "runinfo")
    return c.store


def test_snapshot_carries_the_audit_and_the_warning_of_hts_audit(audited):
    s = StoreViews(audited).snapshot()
    f = json.loads(json.dumps(s["funnel"]))
    assert f == _funnel(audited)
    a = f["audit"]
    assert a["audited"] > 0 and a["scored"] > 0 and a["missed"] > 0
    assert a["target_recall"] == 1.0 and a["below_target"]
    assert 0 <= a["recall_ci"][0] <= a["recall"] <= a["recall_ci"][1] < 1.0
    assert "target_recall 1.00" in f["warning"]
    e = f["economics"]
    assert [st["stage"] for st in e["stages"]] == ["prefilter", "rescore"]
    assert e["teacher_only_s"] > 0 and e["audit_teacher_s"] > 0
    # the server's snapshot is the same
    d = Dashboard(audited, port=0)
    d.start()
    try:
        with urllib.request.urlopen(d.url + "api/snapshot", timeout=10) as r:
            assert json.loads(r.read())["funnel"] == f
    finally:
        d.close()


def test_without_an_audit_the_economics_alone(store):
    """The shared finished store (tests/dashboard/conftest.py) has no audit."""
    f = StoreViews(store).snapshot()["funnel"]
    assert f == _funnel(store)
    assert f["audit"] is None and f["warning"] is None
    assert f["economics"]["screened"] > 0 and "teacher_saved_s" in f["economics"]


def test_the_refresh_path_follows_the_audit_commit_by_commit(tmp_path):
    """Each commit moves the counters; the open dashboard's snapshot follows, equal to hts.audit."""
    path = tmp_path / "s.zarr"
    yaml_text = (
        "name: t\nstages:\n  prefilter:\n    audit: 0.5\n"
        "    distillation: {report: r.json, target_recall: 0.99}\n"
    )
    store = Store.open(
        path,
        campaign_name="t",
        campaign_hash="h",
        campaign_yaml=yaml_text,
        stages=["prefilter", "rescore"],
    )
    rng = np.random.default_rng(3)
    views = StoreViews(path)
    seen, k = [], 0
    for chunk in range(6):
        rows = [_row(k + i, rng) for i in range(40)]
        for r in rows:  # half the rejects are in the audit sample
            st = r.stage["prefilter"]
            r.audit = r.status == "ok" and not st["kept"] and rng.random() < 0.5
        store.append(rows, chunk)
        k += 40
        assert views.snapshot()["funnel"] == _funnel(path)
        # the teacher: the new survivors and the audited rejects; a third of the audited are stable
        new = np.arange(k - 40, k)
        pick = [
            i for i, r in zip(new, rows, strict=True) if r.audit or r.stage["prefilter"]["kept"]
        ]
        ups = _rescore(pick, rng, fail_share=0.0)
        for u, r in zip(ups, [rows[i - (k - 40)] for i in pick], strict=True):
            if r.audit:
                u.values["kept"] = False
                u.audit_missed = bool(rng.random() < 0.3)
        store.update("rescore", ups)
        f = views.snapshot()["funnel"]
        assert f == _funnel(path)
        seen.append((f["audit"]["audited"], f["audit"]["scored"], f["audit"]["missed"]))
    assert views.cache.full_reads == 1  # incremental all along
    audited = [x[0] for x in seen]
    assert audited == sorted(audited) and audited[0] < audited[-1]
    assert seen[-1][2] > 0 and f["warning"]  # misses found: recall's bound under 0.99


def _render(html: Path) -> dict:
    res = subprocess.run([NODE, str(RENDER), str(html)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _embedded(html: Path) -> dict:
    return json.loads(re.search(r"window.HTS_STATIC = (.*?);</script>", html.read_text(), re.S)[1])


@pytest.mark.skipif(NODE is None, reason="needs node to run the page's script")
def test_report_shows_the_audit_the_economics_and_the_warning(audited, tmp_path):
    html = write_html(audited, tmp_path / "report.html")
    page = html.read_text()
    assert 'id="economics-section"' in page and 'id="audit-warning"' in page
    f = _funnel(audited)
    assert _embedded(html)["snapshot"]["funnel"] == f
    shown = _render(html)
    a, e = f["audit"], f["economics"]
    banner = shown["ids"]["audit-warning"]
    assert not banner["hidden"] and f["warning"] in banner["text"]
    st = shown["stats"]
    assert st["audited"]["value"] == str(a["audited"])
    assert st["scored"]["value"] == str(a["scored"])
    assert st["missed"]["value"] == str(a["missed"])
    assert st["miss_rate"]["value"] == f"{a['miss_rate']:.3f}"
    lo, hi = a["miss_rate_ci"]
    assert f"[{lo:.3f}, {hi:.3f}]" in st["miss_rate"]["label"]
    lo, hi = a["recall_ci"]
    assert st["recall"]["value"] == f"{a['recall']:.3f}" and st["recall"]["bad"]
    assert f"[{lo:.3f}, {hi:.3f}]" in st["recall"]["label"]
    if a["enrichment"] is not None:
        assert st["enrichment"]["value"] == f"{a['enrichment']:.1f}×"
    rows = shown["rows"]["economics"]
    assert [r[0] for r in rows[1:]] == [s["stage"] for s in e["stages"]]
    for r, s in zip(rows[1:], e["stages"], strict=True):
        assert r[1:4] == [str(s["in"]), str(s["kept"]), f"{100 * s['discovery_rate']:.2f} %"]
        assert r[5] == f"{s['s_per_candidate']:.3f}"
    for key in ("s_per_stable_hit", "teacher_saved_s", "audit_teacher_s"):
        assert key in st
    assert f"{100 * e['teacher_saved_share']:.1f} %" in st["teacher_saved_s"]["label"]


@pytest.mark.skipif(NODE is None, reason="needs node to run the page's script")
def test_report_without_an_audit_shows_the_economics_and_no_banner(store, tmp_path):
    html = write_html(store, tmp_path / "report.html")
    shown = _render(html)
    assert shown["ids"]["audit-warning"]["hidden"]
    assert shown["ids"]["audit"]["hidden"] and "No audit" in shown["ids"]["audit-hint"]["text"]
    assert "recall" not in shown["stats"] and "audit_teacher_s" not in shown["stats"]
    e = _funnel(store)["economics"]
    assert [r[0] for r in shown["rows"]["economics"][1:]] == [s["stage"] for s in e["stages"]]
    assert "teacher_saved_s" in shown["stats"]
