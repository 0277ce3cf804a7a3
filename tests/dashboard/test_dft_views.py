"""The dashboard and the static report on a store with DFT results: errors per MLIP stage with
their counts, the teacher-vs-DFT disagreements first, and the lab table (XRD, space group, cell)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import pytest

from hts.dashboard.html import write_html
from hts.dashboard.server import Dashboard
from hts.dashboard.views import StoreViews
from hts.report import DFT_ONLY, TEACHER_ONLY
from hts.spec import parse_campaign
from hts.store import open_dataset
from tests.conftest import lj_campaign, run_on_parsl
from tests.planted import MAE, planted_dft_store


@pytest.fixture(scope="module")
def dft_store(tmp_path_factory):
    return planted_dft_store(tmp_path_factory.mktemp("planted"))


def test_snapshot_has_the_errors_per_stage_and_the_disagreements(dft_store):
    d = StoreViews(dft_store).snapshot()["dft"]
    assert {st: (m["n"], round(m["formation_energy"], 6)) for st, m in d["mae"].items()} == {
        st: (3, round(v, 6)) for st, v in MAE.items()
    }
    assert [(x["id"], x["kind"]) for x in d["disagreements"]] == [
        ("00000000000000a1", TEACHER_ONLY),
        ("00000000000000a2", DFT_ONLY),
    ]
    assert [c["disagreement"] for c in d["candidates"][:3]] == [TEACHER_ONLY, DFT_ONLY, None]


def test_lab_table_of_the_validated_candidates(dft_store):
    v = StoreViews(dft_store)
    lab = v.snapshot()["lab"]
    assert lab["stage"] == "validate" and lab["total"] == 3
    got = [(c["id"], c["space_group"], c["space_group_number"]) for c in lab["candidates"]]
    assert got == [
        ("00000000000000a0", "Fm-3m", 225),
        ("00000000000000a2", "Fm-3m", 225),
        ("00000000000000a1", "Pm-3m", 221),
    ]
    nacl = lab["candidates"][0]
    assert nacl["formula"] == "NaCl" and nacl["n_atoms_conventional"] == 8
    assert nacl["strongest_peaks"].startswith("31.73 (2 0 0) 100")
    assert v.lab_file("00000000000000a0", "png")[:4] == b"\x89PNG"
    peaks = v.lab_file("00000000000000a0", "csv").decode().splitlines()
    assert peaks[0] == "two_theta,intensity,hkl,d_spacing,multiplicity"
    assert any(line.startswith("31.7305,100.000,(2 0 0)") for line in peaks)
    assert "Fm-3m" in v.lab_file("00000000000000a0", "cif").decode()
    with pytest.raises(KeyError):  # not validated: not in the lab table
        v.lab_file("00000000000000a3", "png")


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def test_server_serves_patterns_cells_and_peaks(dft_store):
    d = Dashboard(dft_store, port=0)
    d.start()
    try:
        base = f"http://127.0.0.1:{d.port}"
        code, body, _ = _get(f"{base}/api/snapshot")
        snap = json.loads(body)
        assert code == 200 and snap["dft"]["disagreements"] and snap["lab"]["candidates"]
        code, body, headers = _get(f"{base}/xrd/00000000000000a0.png")
        assert code == 200 and body[:4] == b"\x89PNG" and headers["Content-Type"] == "image/png"
        code, body, headers = _get(f"{base}/xrd/00000000000000a0.cif")
        assert code == 200 and b"Fm-3m" in body and "attachment" in headers["Content-Disposition"]
        code, body, _ = _get(f"{base}/xrd/00000000000000a0.csv")
        assert code == 200 and body.startswith(b"two_theta,")
        assert _get(f"{base}/xrd/00000000000000a3.png")[0] == 404
        assert _get(f"{base}/xrd/00000000000000a0.exe")[0] == 404
        page = _get(f"{base}/static/app.js")[1].decode()
        assert "dft-disagreements" in page and "renderLab" in page
    finally:
        d.close()


def test_static_report_embeds_the_flags_and_the_lab_files(dft_store, tmp_path):
    html = write_html(dft_store, tmp_path / "report.html").read_text()
    data = json.loads(re.search(r"window.HTS_STATIC = (.*?);</script>", html, re.S)[1])
    snap = data["snapshot"]
    assert [x["kind"] for x in snap["dft"]["disagreements"]] == [TEACHER_ONLY, DFT_ONLY]
    assert snap["dft"]["mae"]["rescore"]["n"] == 3
    assert set(data["lab"]) == {"00000000000000a0", "00000000000000a1", "00000000000000a2"}
    files = data["lab"]["00000000000000a0"]
    assert files["png"].startswith("data:image/png;base64,")
    assert files["cif"].startswith("data:chemical/x-cif;base64,")
    assert files["csv"].startswith("data:text/csv;base64,")
    assert 'id="lab-section"' in html
    # every DFT-table row (the failed job's too) can be clicked to view its cell in 3-D
    assert {c["id"] for c in snap["dft"]["candidates"]} <= set(data["structures"])


def test_lab_table_without_a_validate_stage_lists_the_final_survivors(tmp_path):
    data = lj_campaign(tmp_path, limits={"max_candidates": 12, "max_atoms": 2})
    data["stages"]["prefilter"]["keep"] = "e_above_hull <= 0.3"
    c = parse_campaign(data)
    run_on_parsl(c, tmp_path / "runinfo")
    ds = open_dataset(c.store)
    final = (ds.status.values.astype(str) == "ok") & ds.kept.values[:, -1]
    snap = StoreViews(c.store).snapshot()
    assert snap["dft"] is None
    lab = snap["lab"]
    assert lab["stage"] == "prefilter" and lab["total"] == int(final.sum()) >= 2
    assert {e["id"] for e in lab["candidates"]} == set(ds.id.values[final].astype(str))
    assert all(e["space_group_number"] >= 1 for e in lab["candidates"])
