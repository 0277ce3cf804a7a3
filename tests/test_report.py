"""hts.report on stores with DFT results: the per-stage errors, the disagreements, and the
experimentalist's export (powder XRD, space group, conventional cell)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from typer.testing import CliRunner

from hts.cli import app
from hts.report import (
    DFT_ONLY,
    TEACHER_ONLY,
    export_xrd,
    keep_threshold,
    stability_disagreements,
    summarize,
)
from hts.spec import parse_campaign
from hts.store import open_dataset
from tests.conftest import lj_campaign, run_on_parsl
from tests.planted import MAE, THRESHOLD, planted_dft_store


@pytest.fixture(scope="module")
def dft_store(tmp_path_factory):
    return planted_dft_store(tmp_path_factory.mktemp("planted"))


def test_mae_per_mlip_stage_with_its_count(dft_store):
    d = summarize(dft_store)["dft"]
    assert set(d["mae"]) == {"prefilter", "rescore"}
    for st, mae in MAE.items():
        assert d["mae"][st]["n"] == 3  # the three validated candidates, not the failed one
        assert d["mae"][st]["formation_energy"] == pytest.approx(mae, abs=1e-9)
    assert d["mae"]["rescore"]["e_above_hull"] == pytest.approx((0 + 0.09 + 0.07) / 3)


def test_teacher_and_dft_disagreements_come_first(dft_store):
    d = summarize(dft_store)["dft"]
    assert d["teacher"] == "rescore" and d["threshold"] == THRESHOLD
    kinds = {x["id"]: x["kind"] for x in d["disagreements"]}
    assert kinds == {"00000000000000a1": TEACHER_ONLY, "00000000000000a2": DFT_ONLY}
    first = d["disagreements"][0]  # the largest teacher-vs-DFT gap first
    assert first["id"] == "00000000000000a1" and first["formula"] == "NaCl"
    assert (first["teacher_e_above_hull"], first["dft_e_above_hull"]) == (0.03, 0.12)
    ids = [c["id"] for c in d["candidates"]]
    # flagged first, then the agreeing one, then the failed DFT job
    assert ids == ["00000000000000a1", "00000000000000a2", "00000000000000a0", "00000000000000a4"]
    assert [c["disagreement"] for c in d["candidates"]] == [TEACHER_ONLY, DFT_ONLY, None, None]


def test_stability_verdicts():
    kept = np.array([True, True, False, False, True])
    e_dft = np.array([0.0, 0.2, 0.0, 0.2, np.nan])
    dft_kept = np.array([True, False, True, False, False])
    assert stability_disagreements(kept, e_dft, dft_kept, 0.05) == [
        None,
        TEACHER_ONLY,
        DFT_ONLY,
        None,
        None,  # no DFT hull: no verdict
    ]
    # a rule without an e_above_hull bound: DFT's own keep verdict
    assert stability_disagreements(kept, e_dft, ~dft_kept, None)[:2] == [TEACHER_ONLY, None]


def test_keep_threshold_from_the_campaign_text():
    text = "stages:\n  validate:\n    keep: {text: e_above_hull <= 0.03 and converged}\n"
    assert keep_threshold(text, "validate") == 0.03
    assert keep_threshold("stages:\n  validate:\n    keep: e_above_hull < 0.2\n", "validate") == 0.2
    assert keep_threshold("stages:\n  validate:\n    keep: converged\n", "validate") is None
    assert keep_threshold("stages: {}\n", "validate") is None
    assert keep_threshold("", "validate") is None


def _index(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_export_characterises_the_validated_candidates(dft_store, tmp_path):
    from pymatgen.core import Structure

    res = CliRunner().invoke(app, ["export", str(dft_store), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "XRD patterns, space groups and conventional cells of 3 candidates" in res.output
    folder = tmp_path / "out" / "xrd"
    rows = _index(folder / "index.csv")
    # the DFT-validated ones (not the failed job, not the never-validated LiF), most stable first
    assert [(r["id"], r["formula"], r["stage"]) for r in rows] == [
        ("00000000000000a0", "NaCl", "validate"),
        ("00000000000000a2", "KCl", "validate"),
        ("00000000000000a1", "NaCl", "validate"),
    ]
    nacl = rows[0]
    assert (nacl["space_group"], nacl["space_group_number"]) == ("Fm-3m", "225")
    assert nacl["n_atoms_conventional"] == "8" and nacl["symprec"] == "0.1"
    assert float(nacl["a"]) == pytest.approx(5.64, abs=0.01)
    assert nacl["strongest_peaks"].startswith("31.73 (2 0 0) 100; 45.49 (2 2 0)")
    assert (rows[2]["space_group"], rows[2]["n_atoms_conventional"]) == ("Pm-3m", "2")
    for r in rows:
        for key in ("peaks_csv", "pattern_png", "conventional_cif"):
            assert (folder / r[key]).stat().st_size > 0, r[key]
        assert r["peaks_csv"] == f"{r['formula']}_{r['id']}.csv" and not r["error"]
    peaks = _index(folder / "NaCl_00000000000000a0.csv")
    top = max(peaks, key=lambda p: float(p["intensity"]))
    assert top["hkl"] == "(2 0 0)" and float(top["two_theta"]) == pytest.approx(31.73, abs=0.02)
    assert float(top["d_spacing"]) == pytest.approx(2.82, abs=2e-3)
    cif = Structure.from_file(folder / "NaCl_00000000000000a0_conventional.cif")
    assert len(cif) == 8
    assert (folder / "NaCl_00000000000000a0.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".png") == [
        "KCl_00000000000000a2.png",
        "NaCl_00000000000000a0.png",
        "NaCl_00000000000000a1.png",
    ]


def test_export_limit(dft_store, tmp_path):
    assert export_xrd(dft_store, tmp_path / "none", limit=0) == (0, 0, None)
    assert not (tmp_path / "none").exists()
    n, total, index = export_xrd(dft_store, tmp_path / "one", limit=1)
    assert (n, total) == (1, 3) and [r["id"] for r in _index(index)] == ["00000000000000a0"]
    res = CliRunner().invoke(
        app, ["export", str(dft_store), "--out", str(tmp_path / "two"), "--xrd", "2"]
    )
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())  # the console wraps long paths
    assert "of 2 candidates (the 2 most stable of 3; --xrd N for more)" in said


def test_without_a_validate_stage_the_final_survivors_are_characterised(tmp_path):
    data = lj_campaign(tmp_path, limits={"max_candidates": 12, "max_atoms": 2})
    data["stages"]["prefilter"]["keep"] = "e_above_hull <= 0.3"
    c = parse_campaign(data)
    run_on_parsl(c, tmp_path / "runinfo")
    ds = open_dataset(c.store)
    final = (ds.status.values.astype(str) == "ok") & ds.kept.values[:, -1]
    assert final.sum() >= 2
    n, total, index = export_xrd(c.store, tmp_path / "out")
    rows = _index(index)
    assert n == total == len(rows) == int(final.sum())
    assert {r["id"] for r in rows} == set(ds.id.values[final].astype(str))
    assert {r["stage"] for r in rows} == {"prefilter"}
    eh = [float(r["e_above_hull"]) for r in rows]
    assert eh == sorted(eh)  # most stable first
    assert all(r["space_group"] and int(r["space_group_number"]) >= 1 for r in rows)


def test_status_prints_the_disagreements(dft_store):
    res = CliRunner().invoke(app, ["status", str(dft_store)], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "MLIP vs DFT, rescore: formation energy MAE 87 meV/atom" in res.output
    assert "over 3 candidates" in res.output
    assert "teacher vs DFT: NaCl (00000000000000a1): teacher stable, DFT not" in res.output
    assert "teacher vs DFT: KCl (00000000000000a2): DFT stable, teacher not" in res.output
