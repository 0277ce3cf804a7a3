"""The validate stage with real DFT (GPAW through atomate2) on two-atom cells.

Marked ``dft`` (and ``slow``): not in the default run, but CI runs them
(``make test-dft``).  A cheap analytic prefilter feeds the DFT stage, so the
test's time is the DFT's: a few statics of a few seconds each.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from hts.report import summarize
from hts.spec import parse_campaign
from hts.store import open_dataset
from tests.conftest import lj_campaign, run_on_parsl

pytestmark = [pytest.mark.dft, pytest.mark.slow]


def _campaign(tmp_path, **gpaw):
    data = lj_campaign(tmp_path)
    data["candidates"] = {
        "kind": "substitution",
        "prototypes": ["rocksalt", "cscl"],
        "elements": {"A": ["Na"], "X": ["Cl"]},
    }
    data["stages"]["prefilter"]["keep"] = "e_above_hull <= 10"
    data["stages"]["validate"] = {
        "code": "gpaw",
        "workflow": "static",
        "top": 1,
        "gpaw": {"ecut": 300, "kpoint_density": 2.0, **gpaw},
        "walltime_s": 300,
        "retries": 1,
    }
    return parse_campaign(data)


def test_dft_static_through_the_stage(tmp_path):
    c = _campaign(tmp_path)
    stats = run_on_parsl(c, tmp_path / "runinfo")
    ds = open_dataset(c.store)
    names = list(ds.stage.values.astype(object))
    assert names == ["prefilter", "validate"]
    k = names.index("validate")
    done = np.flatnonzero(np.isfinite(ds.energy_per_atom.values[:, k]))
    assert len(done) == 1 and stats.validated == 1 and stats.validate_failed == 0
    i = int(done[0])
    # the best by the prefilter's hull (lowest e_above_hull, then formation energy)
    pre = ds.e_above_hull.values[:, 0]
    assert pre[i] == np.nanmin(pre)
    assert ds.status.values[i] == "ok" and ds.stage_reached.values[i] == "validate"
    assert str(ds.stage_model.values[k]).startswith("gpaw")
    # DFT references of both elements, computed once and cached in the store
    refs = ds.attrs["references"]["validate"]
    assert set(refs) == {"Na", "Cl"}
    assert all(np.isfinite(r["energy_per_atom"]) for r in refs.values())
    # formation energy against those references; NaCl is strongly bound in PBE (expt. -2.1 eV/atom)
    e = ds.energy_per_atom.values[i, k]
    eform = e - 0.5 * (refs["Na"]["energy_per_atom"] + refs["Cl"]["energy_per_atom"])
    assert ds.formation_energy.values[i, k] == pytest.approx(eform, abs=1e-9)
    assert -2.6 < eform < -1.4
    assert ds.e_above_hull.values[i, k] == pytest.approx(0.0, abs=1e-9)
    assert bool(ds.kept.values[i, k])
    # atomate2's task documents on disk next to the store (file-backed JobStore, no MongoDB)
    job_dir = tmp_path / "lj.zarr.dft" / "candidates" / str(ds.id.values[i]) / "attempt-1"
    assert str(ds.dft_dir.values[i]) == str(job_dir)
    docs = json.loads((job_dir / "docs.json").read_text())
    assert docs and docs[0]["output"]["output"]["energy"] == pytest.approx(e * 2, rel=1e-9)
    assert ds.time_s.values[i, k] > 0
    # parity in the summary `hts status` prints
    s = summarize(c.store)
    assert s["dft"]["mae"]["prefilter"]["n"] == 1
    assert [x["id"] for x in s["dft"]["candidates"]] == [str(ds.id.values[i])]
    # the same in `hts status`, with the parity plot
    from typer.testing import CliRunner

    from hts.cli import app

    png = tmp_path / "funnel.png"
    res = CliRunner().invoke(
        app, ["status", str(c.store), "--plot", str(png)], env={"COLUMNS": "250"}
    )
    assert res.exit_code == 0, res.output
    assert "DFT validation (gpaw" in res.output and "MLIP vs DFT, prefilter" in res.output
    assert png.stat().st_size > 10_000
    # a second run finds everything committed: no DFT job runs again
    mtime = (job_dir / "result.json").stat().st_mtime
    stats = run_on_parsl(c, tmp_path / "runinfo")
    assert stats.validated == 0
    assert (job_dir / "result.json").stat().st_mtime == mtime


def test_failed_dft_is_recorded_and_the_campaign_completes(tmp_path):
    c = _campaign(tmp_path, maxiter=1)  # no SCF converges in one iteration, nor in two
    stats = run_on_parsl(c, tmp_path / "runinfo")
    assert stats.phase == "done"
    ds = open_dataset(c.store)
    assert ds.attrs["ledger"]["finalized"]
    k = list(ds.stage.values.astype(object)).index("validate")
    # which stage failed is its stage_status column, not a prefix of the reason
    failed = np.flatnonzero(ds.stage_status.values[:, k].astype(str) == "failed")
    assert len(failed) == 1 and stats.validate_failed == 1
    i = int(failed[0])
    reason = str(ds.reason.values[i])
    assert "SCF did not converge within" in reason and "(2 attempt(s))" in reason
    assert ds.status.values[i] == "failed" and ds.stage_reached.values[i] == "prefilter"
    assert not np.isfinite(ds.energy_per_atom.values[i, k])
    # the prefilter's results are untouched
    assert np.isfinite(ds.energy_per_atom.values[i, 0])
    base = tmp_path / "lj.zarr.dft" / "candidates" / str(ds.id.values[i])
    assert sorted(p.name for p in base.iterdir()) == ["attempt-1", "attempt-2"]
    # the retry used the gentler mixer and twice the iterations
    second = json.loads((base / "attempt-2" / "request.json").read_text())
    assert second["settings"]["maxiter"] == 2 and second["settings"]["mixer"]["beta"] == 0.05
    refs = ds.attrs["references"]["validate"]
    assert all("SCF did not converge" in r["reason"] for r in refs.values())
    s = summarize(c.store)
    assert any(f["stage"] == "validate" for f in s["failures"])


def test_dft_runs_on_two_mpi_ranks_behind_the_sites_launcher(tmp_path):
    """mpiexec (the environment's MPICH) starts the job; GPAW splits the work over 2 ranks."""
    from hts.stages.validate import DftTask, validate_one

    site = tmp_path / "mpi-site.yaml"
    site.write_text(
        "name: mpi-site\n"
        "executors:\n"
        "  cpu: {kind: threads, workers: 1}\n"
        "  dft: {kind: threads, workers: 1, mpi_launcher: mpiexec, ranks_per_task: 2}\n"
    )
    c = _campaign(tmp_path).model_copy(update={"site": str(site)})
    stats = run_on_parsl(c, tmp_path / "runinfo")
    assert stats.validated == 1 and stats.validate_failed == 0
    ds = open_dataset(c.store)
    i = int(np.flatnonzero(ds.stage_reached.values.astype(object) == "validate")[0])
    job_dir = tmp_path / str(ds.dft_dir.values[i])
    result = json.loads((job_dir / "result.json").read_text())
    assert result["launcher_env"]["PMI_SIZE"] == "2"
    (txt,) = job_dir.glob("job_*/gpaw.txt")
    assert re.search(r"^cores: +2$", txt.read_text(), re.M)  # GPAW's header: the ranks it used
    # the same static on one rank, without a launcher: the same energy
    k = list(ds.stage.values.astype(object)).index("validate")
    s, n = int(ds.atom_start.values[i]), int(ds.n_atoms.values[i])
    task = DftTask(
        "serial",
        "NaCl",
        ds.species.values[s : s + n],
        ds.positions.values[s : s + n],
        ds.cell.values[i],
    )
    serial = validate_one(task, c.stages.validate_, str(tmp_path / "serial"), [])
    assert serial.energy_per_atom == pytest.approx(ds.energy_per_atom.values[i, k], abs=1e-5)


def test_ranks_the_site_cannot_launch_fail_before_any_work(tmp_path):
    from hts.execution.sites import SiteError

    c = _campaign(tmp_path)
    c = c.model_copy(
        update={
            "stages": c.stages.model_copy(
                update={"validate_": c.stages.validate_.model_copy(update={"ranks": 4})}
            )
        }
    )
    with pytest.raises(SiteError, match="mpi_launcher is 'none'"):
        run_on_parsl(c, tmp_path / "runinfo")
    assert not (tmp_path / "lj.zarr").exists()  # nothing screened, no store
