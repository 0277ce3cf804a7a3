"""The command line: run, status, export, as a user types them."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
from ase.io import read

from tests.conftest import lj_campaign, write_campaign


def _hts(*args, cwd):
    import os

    return subprocess.run(
        [sys.executable, "-m", "hts.cli", *args],
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},  # rich wraps tables to the terminal width
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """``hts run`` of 20 candidates, once for the tests that only read its store."""
    tmp = tmp_path_factory.mktemp("cli")
    path = write_campaign(tmp, lj_campaign(tmp, limits={"max_candidates": 20}))
    return tmp, _hts("run", str(path), cwd=tmp)


def test_run_status_export(finished, tmp_path):
    run_dir, res = finished
    assert res.returncode == 0, res.stderr
    assert "funnel" in res.stdout and "most stable candidates" in res.stdout
    store = run_dir / "lj.zarr"
    res = _hts("status", str(store), cwd=tmp_path)
    assert res.returncode == 0 and "prefilter" in res.stdout and "20" in res.stdout
    res = _hts("export", str(store), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    assert len(rows) == 20
    kept = [r for r in rows if r["prefilter_kept"] == "True"]
    cifs = sorted((tmp_path / "out" / "structures").glob("*.cif"))
    assert len(cifs) == len(kept) > 0
    frames = read(tmp_path / "out" / "structures.extxyz", index=":")
    assert len(frames) == len(kept)
    assert {f.info["hts_id"] for f in frames} == {r["id"] for r in kept}
    assert (tmp_path / "out" / "funnel.png").stat().st_size > 10_000
    # formulas as chemists write them wherever a person reads them; the store keeps its key
    from hts.store import open_dataset

    stored = set(open_dataset(store).formula.values.astype(object))
    assert "ClNa" in stored or "FLi" in stored
    shown = {r["formula"] for r in rows}
    assert shown & {"NaCl", "LiF", "KCl", "MgO"} and not shown & {"ClNa", "FLi", "ClK"}


def test_status_in_a_log_file_is_never_cut(finished):
    """Not a terminal (a batch job's log, a pipe): tables widen to fit, no 'fo…' columns."""
    import os

    run_dir, run = finished
    assert run.returncode == 0, run.stderr
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    res = subprocess.run(
        [sys.executable, "-m", "hts.cli", "status", str(run_dir / "lj.zarr")],
        cwd=run_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "…" not in res.stdout
    assert "E_hull prefilter" in res.stdout and "prototype" in res.stdout


def test_run_reports_campaign_errors(tmp_path):
    path = write_campaign(tmp_path, lj_campaign(tmp_path, chunk_size=0))
    res = _hts("run", str(path), cwd=tmp_path)
    assert res.returncode == 2
    assert "chunk_size" in res.stderr
    res = _hts("status", str(tmp_path / "nothing.zarr"), cwd=tmp_path)
    assert res.returncode == 2 and "no hts store" in res.stderr


def test_two_stage_funnel_in_status_and_export(tmp_path):
    data = lj_campaign(tmp_path, limits={"max_candidates": 24})
    data["stages"]["rescore"] = {
        "model": {"name": "lennard-jones"},
        "relax": {"fmax": 0.01},
        "keep": "e_above_hull <= 0.01",
    }
    path = write_campaign(tmp_path, data)
    res = _hts("run", str(path), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "rescore" in res.stdout and "E_hull rescore" in res.stdout
    res = _hts("export", str(tmp_path / "lj.zarr"), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    teacher_kept = [r for r in rows if r["rescore_kept"] == "True"]
    assert len(list((tmp_path / "out" / "structures").glob("*.cif"))) == len(teacher_kept) > 0
    assert all(r["prefilter_kept"] == "True" for r in teacher_kept)


def test_distill_reports_bad_fields(tmp_path):
    bad = tmp_path / "distill.yaml"
    bad.write_text("name: x\ncampaign: nowhere.yaml\noutput: out\ntraining: {epochs: -1}\n")
    res = _hts("distill", str(bad), cwd=tmp_path)
    assert res.returncode == 2
    assert "training.epochs" in res.stderr and str(bad) in res.stderr
    bad.write_text("name: x\ncampaign: nowhere.yaml\noutput: out\n")
    res = _hts("distill", str(bad), cwd=tmp_path)
    assert res.returncode == 2 and "nowhere.yaml" in res.stderr


def test_console_logging_is_set_up_once():
    """Each command sets up console logging; a second call (a test, a nested command) adds nothing."""
    import logging

    from hts.cli import _quiet_logging

    root = logging.getLogger()
    before = list(root.handlers)
    try:
        _quiet_logging()
        _quiet_logging()
        added = [h for h in root.handlers if h not in before]
        assert (
            len(added) <= 1 and sum(getattr(h, "_hts_console", False) for h in root.handlers) == 1
        )
    finally:
        for h in root.handlers[:]:
            if h not in before:
                root.removeHandler(h)
