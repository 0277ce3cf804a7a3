"""End to end on a real Parsl thread pool and a real Zarr store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from ase.build import bulk
from ase.io import write
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition

from hts.campaign import run_campaign
from hts.execution import make_engine
from hts.spec import CampaignError, load_campaign, parse_campaign
from hts.store import open_dataset
from tests.conftest import kill_run_after, lj_campaign, write_campaign


def _run(campaign, tmp_path, engine="parsl", store=None):
    eng = make_engine(engine, campaign.site, tmp_path / "runinfo")
    try:
        return run_campaign(campaign, eng, store_path=store)
    finally:
        eng.close()


def _by_id(ds):
    ids = ds.id.values.astype(object)
    return {i: k for k, i in enumerate(ids)}


def test_campaign_on_thread_pool(tmp_path):
    c = parse_campaign(lj_campaign(tmp_path))
    stats = _run(c, tmp_path)
    ds = xr.open_zarr(c.store)  # consolidated at the end: plain open works
    n = ds.sizes["candidate"]
    assert n == stats.done == stats.ok > 30
    assert len(set(ds.id.values.tolist())) == n
    assert ds.attrs["ledger"]["finalized"] is True
    assert str(ds.stage_model.values[0]) == "lennard-jones"
    # final e_above_hull equals one phase diagram over every candidate and the references
    refs = ds.attrs["references"]["prefilter"]
    entries = [PDEntry(Composition(el), r["energy_per_atom"]) for el, r in refs.items()]
    f = ds.formula.values.astype(object)
    e = ds.energy_per_atom.values[:, 0]
    entries += [
        PDEntry(Composition(fi), ei * Composition(fi).num_atoms)
        for fi, ei in zip(f, e, strict=True)
    ]
    pd = PhaseDiagram(entries)
    for k in range(0, n, 5):
        expected = pd.get_e_above_hull(entries[len(refs) + k], allow_negative=True)
        assert abs(float(ds.e_above_hull.values[k, 0]) - expected) < 1e-8
    kept = ds.kept.values[:, 0]
    assert np.array_equal(kept, ds.e_above_hull.values[:, 0] <= 0.05)
    # the same campaign serially gives the same values
    serial = _run(c, tmp_path, engine="serial", store=tmp_path / "serial.zarr")
    assert serial.done == n
    ds2 = open_dataset(tmp_path / "serial.zarr")
    m1, m2 = _by_id(ds), _by_id(ds2)
    assert set(m1) == set(m2)
    for i in m1:
        assert ds.energy_per_atom.values[m1[i], 0] == pytest.approx(
            ds2.energy_per_atom.values[m2[i], 0], abs=1e-10
        )
        assert ds.e_above_hull.values[m1[i], 0] == pytest.approx(
            ds2.e_above_hull.values[m2[i], 0], abs=1e-8
        )


def test_rerun_of_finished_campaign_does_nothing(tmp_path):
    c = parse_campaign(lj_campaign(tmp_path, limits={"max_candidates": 12}))
    first = _run(c, tmp_path)
    again = _run(c, tmp_path)
    assert first.done == 12 and again.done == 0 and again.resumed == 12
    assert open_dataset(c.store).sizes["candidate"] == 12


def test_changed_campaign_refuses_the_store(tmp_path):
    c = parse_campaign(lj_campaign(tmp_path, limits={"max_candidates": 4}))
    _run(c, tmp_path)
    changed = parse_campaign(lj_campaign(tmp_path, limits={"max_candidates": 4}, seed=5))
    from hts.store import StoreMismatchError

    with pytest.raises(StoreMismatchError, match="settings changed"):
        _run(changed, tmp_path)


def test_resume_after_sigkill(tmp_path):
    """SIGKILL the driver mid-run; the rerun completes with every candidate once and the same values."""
    data = lj_campaign(tmp_path, chunk_size=2)
    data["candidates"]["prototypes"] = ["rocksalt", "zincblende", "cscl", "fluorite", "wurtzite"]
    path = write_campaign(tmp_path, data)
    store = Path(data["store"])
    kill_run_after(path, store, 10, cwd=tmp_path)
    ds = open_dataset(store)
    assert ds.attrs["ledger"]["finalized"] is False
    partial = ds.sizes["candidate"]
    assert partial >= 10

    # the same `hts run`, in-process this time (the kill needed a process of its own)
    from typer.testing import CliRunner

    from hts.cli import app

    res = CliRunner().invoke(app, ["run", str(path), "-q"])
    assert res.exit_code == 0, res.output
    resumed = open_dataset(store)
    ids = resumed.id.values.tolist()
    assert len(ids) == len(set(ids))

    clean = parse_campaign(data | {"store": str(tmp_path / "clean.zarr")}, base_dir=str(tmp_path))
    _run(clean, tmp_path)
    ref = open_dataset(tmp_path / "clean.zarr")
    assert sorted(ids) == sorted(ref.id.values.tolist())
    a, b = _by_id(resumed), _by_id(ref)
    for i in a:
        for var in ("energy_per_atom", "e_above_hull", "formation_energy"):
            assert resumed[var].values[a[i], 0] == pytest.approx(
                ref[var].values[b[i], 0], abs=1e-9
            ), (var, i)
        assert resumed.kept.values[a[i], 0] == ref.kept.values[b[i], 0]
        s1, n1 = int(resumed.atom_start[a[i]]), int(resumed.n_atoms[a[i]])
        s2, n2 = int(ref.atom_start[b[i]]), int(ref.n_atoms[b[i]])
        np.testing.assert_allclose(
            resumed.positions.values[s1 : s1 + n1], ref.positions.values[s2 : s2 + n2], atol=1e-10
        )


def test_bad_candidates_are_recorded_and_the_rest_completes(tmp_path):
    d = tmp_path / "structures"
    d.mkdir()
    write(d / "cu.cif", bulk("Cu", a=3.7))
    write(d / "au.cif", bulk("Au", a=4.1))
    write(d / "cuau.cif", bulk("CuAu", "rocksalt", a=5.2))
    write(d / "nacl.cif", bulk("NaCl", "rocksalt", a=5.6))  # EMT has no Na, Cl
    (d / "broken.cif").write_text("this is not a CIF file\n\x00\x01")
    bad = bulk("NiO", "rocksalt", a=4.2)
    bad.positions[1] = bad.positions[0] + [0.2, 0.0, 0.0]
    write(d / "overlap.vasp", bad, format="vasp")
    data = lj_campaign(tmp_path, candidates={"kind": "files", "path": "structures"})
    data["stages"]["prefilter"]["model"] = {"name": "emt"}
    c = load_campaign(write_campaign(tmp_path, data))
    stats = _run(c, tmp_path)
    ds = open_dataset(c.store)
    rows = {str(s).split(":", 1)[1]: k for k, s in enumerate(ds.source.values.astype(object))}
    status = ds.status.values.astype(object)
    reason = ds.reason.values.astype(object)
    assert stats.done == 6 and stats.ok == 3 and stats.failed == 3
    for name in ("structures/cu.cif", "structures/au.cif", "structures/cuau.cif"):
        assert status[rows[name]] == "ok"
        assert np.isfinite(ds.e_above_hull.values[rows[name], 0])
    assert "not covered by model emt" in reason[rows["structures/nacl.cif"]]
    assert "unreadable cif file" in reason[rows["structures/broken.cif"]]
    assert "overlapping atoms" in reason[rows["structures/overlap.vasp"]]
    # the failed input's structure is still stored, for inspection
    assert int(ds.n_atoms[rows["structures/overlap.vasp"]]) == 2


def test_missing_model_file_fails_before_work(tmp_path):
    data = lj_campaign(tmp_path)
    data["stages"]["prefilter"]["model"] = {"name": "mace", "path": "nowhere.model"}
    c = parse_campaign(data, base_dir=str(tmp_path))
    with pytest.raises(CampaignError, match="stages.prefilter.model.path: no such model file"):
        _run(c, tmp_path)
    assert not Path(c.store).exists()


def test_user_reference_entries(tmp_path):
    """A user's entry below every candidate of its system puts them all above the hull."""
    from monty.serialization import dumpfn
    from pymatgen.entries.computed_entries import ComputedEntry

    dumpfn([ComputedEntry("LiF", -100.0)], tmp_path / "refs.json")
    data = lj_campaign(
        tmp_path, limits={"max_candidates": 8}, hull={"reference_entries": "refs.json"}
    )
    c = parse_campaign(data, base_dir=str(tmp_path))
    _run(c, tmp_path)
    ds = open_dataset(c.store)
    f = ds.formula.values.astype(object)
    lif = np.flatnonzero(f == "FLi")
    assert len(lif) and all(ds.e_above_hull.values[k, 0] > 40 for k in lif)
    bad = parse_campaign(
        lj_campaign(tmp_path, hull={"reference_entries": "missing.json"}), base_dir=str(tmp_path)
    )
    with pytest.raises(CampaignError, match="hull.reference_entries"):
        _run(bad, tmp_path)


def test_a_campaign_without_any_elemental_reference_is_refused_before_it_runs(tmp_path):
    """model_references: false and no elemental entries would fail every compound: say so first."""
    from monty.serialization import dumpfn
    from pymatgen.entries.computed_entries import ComputedEntry

    from hts.campaign import preflight

    data = lj_campaign(tmp_path, hull={"model_references": False})
    with pytest.raises(CampaignError, match="no elemental reference for Ca, Cl, F, K"):
        preflight(parse_campaign(data, base_dir=str(tmp_path)))
    els = ["Li", "Na", "K", "Mg", "Ca", "Sr", "O", "S", "F"]  # Cl missing
    dumpfn([ComputedEntry(el, -1.0) for el in els], tmp_path / "refs.json")
    data["hull"]["reference_entries"] = "refs.json"
    with pytest.raises(CampaignError, match="no elemental reference for Cl"):
        preflight(parse_campaign(data, base_dir=str(tmp_path)))
    dumpfn([ComputedEntry(el, -1.0) for el in [*els, "Cl"]], tmp_path / "refs.json")
    preflight(parse_campaign(data, base_dir=str(tmp_path)))


def test_a_file_added_between_runs_is_screened_and_nothing_twice(tmp_path):
    """Resume is keyed by candidate id: a new file that sorts first shifts every chunk, yet the
    rerun screens exactly it, and every candidate is in the store once."""
    from ase.build import bulk
    from ase.io import write

    d = tmp_path / "in"
    d.mkdir()
    for k, f in enumerate(["NaCl", "KCl", "LiF", "NaF", "KF", "LiCl"]):
        write(d / f"{k}_{f}.cif", bulk(f, "rocksalt", a=5.0 + 0.1 * k))
    data = lj_campaign(tmp_path, candidates={"kind": "files", "path": "in"}, chunk_size=2)
    c = parse_campaign(data, base_dir=str(tmp_path))
    _run(c, tmp_path)
    assert open_dataset(c.store).sizes["candidate"] == 6
    write(d / "0_a_MgO.cif", bulk("MgO", "rocksalt", a=4.2))  # sorts before every other file
    stats = _run(c, tmp_path)
    ds = open_dataset(c.store)
    ids = list(ds.id.values.astype(object))
    assert stats.done == 1 and len(ids) == 7 == len(set(ids))
    assert "MgO" in set(ds.formula.values.astype(object))


def test_a_failed_task_is_not_a_verdict_and_is_retried(tmp_path):
    """A corrupt model file: every prefilter task dies; nothing is recorded, `hts run` says the run
    is incomplete (exit 1), and once the file is fixed the same command screens every candidate."""
    import shutil

    from typer.testing import CliRunner

    from hts.cli import app
    from tests.conftest import REPO, write_campaign

    def _hts(*args, cwd):  # `hts run` in-process (test_cli.py runs it as a user types it)
        return CliRunner().invoke(app, list(args))

    student = REPO / "workflows" / "models" / "demo-student"
    shutil.copy(student / "report.json", tmp_path / "report.json")
    (tmp_path / "student.model").write_bytes(b"PK\x03\x04 not a model" * 20)
    data = lj_campaign(tmp_path, chunk_size=4, limits={"max_candidates": 12, "task_retries": 0})
    data["stages"]["prefilter"] = {
        "model": {"name": "student", "path": "student.model"},
        "direct": True,
        "keep": "e_above_hull <= 10",
        "distillation": {"report": "report.json", "references": "fitted"},
    }
    path = write_campaign(tmp_path, data)
    res = _hts("run", str(path), "-q", cwd=tmp_path)
    assert res.exit_code == 1, res.output
    assert (
        "12 candidates not screened" in " ".join(res.stderr.split())
        and "run the same command again" in res.stderr
    )
    assert open_dataset(tmp_path / "lj.zarr").sizes["candidate"] == 0  # no verdict recorded
    shutil.copy(student / "student.model", tmp_path / "student.model")
    res = _hts("run", str(path), "-q", cwd=tmp_path)
    assert res.exit_code == 0, res.output
    ds = open_dataset(tmp_path / "lj.zarr")
    assert ds.sizes["candidate"] == 12 and (ds.status.values.astype(object) == "ok").all()


def _emt_teacher_campaign(tmp_path: Path, teacher: dict, store: str) -> Path:
    """An analytic prefilter keeping everything, then an EMT teacher, on EMT's own metals."""
    data = lj_campaign(
        tmp_path,
        candidates={
            "kind": "substitution",
            "prototypes": ["rocksalt", "cscl"],
            "elements": {"A": ["Cu", "Ag", "Au"], "X": ["Al", "Ni", "Pd"]},
            "charge_balance": False,
        },
        store=str(tmp_path / store),
    )
    data["stages"]["prefilter"]["keep"] = "e_above_hull <= 10"
    data["stages"]["rescore"] = {"model": teacher, "keep": "e_above_hull <= 0.1"}
    return write_campaign(tmp_path, data, f"{store}.yaml")


def test_an_ase_calculator_teacher_equals_the_shipped_model(tmp_path):
    """`hts run` with `{name: ase, calculator: "ase.calculators.emt:EMT"}` as the teacher stores
    what `name: emt` stores, names the calculator in the store, and records each relaxing stage's
    final pressure (-trace(stress)/3 of the stored structure, GPa)."""
    from ase.calculators.emt import EMT
    from ase.units import GPa
    from typer.testing import CliRunner

    from hts.cli import app
    from hts.store import structure_of

    ase_teacher = {"name": "ase", "calculator": "ase.calculators.emt:EMT"}
    runs = {}
    for label, teacher, engine in (
        ("ase", ase_teacher, "parsl"),
        ("emt", {"name": "emt"}, "serial"),
    ):
        path = _emt_teacher_campaign(tmp_path, teacher, f"{label}.zarr")
        res = CliRunner().invoke(app, ["run", str(path), "-q", "--engine", engine])
        assert res.exit_code == 0, res.output
        runs[label] = open_dataset(tmp_path / f"{label}.zarr")
    a, e = runs["ase"], runs["emt"]
    assert str(a.stage_model.values[1]) == "ase"
    assert str(a.stage_model_version.values[1]).startswith("ase.calculators.emt:EMT (ase ")
    ma, me = _by_id(a), _by_id(e)
    assert set(ma) == set(me) and len(ma) == 18
    rows_a, rows_e = [ma[i] for i in sorted(ma)], [me[i] for i in sorted(me)]
    for name in ("energy_per_atom", "e_above_hull", "pressure", "n_steps", "kept"):
        np.testing.assert_array_equal(a[name].values[rows_a], e[name].values[rows_e], err_msg=name)
    rescored = [k for k in rows_a if a.stage_status.values[k, 1] == "ok"]
    assert len(rescored) == 18
    for k in rescored:
        atoms = structure_of(a, k)
        atoms.calc = EMT()
        p = -atoms.get_stress(voigt=False).trace() / 3 / GPa
        assert a.pressure.values[k, 1] == pytest.approx(p, abs=1e-6)
    assert np.isfinite(a.pressure.values[:, 0]).all()  # the prefilter's, too


def test_a_store_from_before_pressure_is_resumed(tmp_path):
    """A finished store written before ``pressure`` existed: a new file is screened into it, the
    old rows' pressure unknown (NaN), the new row's recorded."""
    import json
    import shutil

    from ase.build import bulk
    from ase.io import write

    d = tmp_path / "in"
    d.mkdir()
    for k, f in enumerate(["NaCl", "KCl", "LiF", "NaF"]):
        write(d / f"{k}_{f}.cif", bulk(f, "rocksalt", a=5.0 + 0.1 * k))
    c = parse_campaign(
        lj_campaign(tmp_path, candidates={"kind": "files", "path": "in"}), base_dir=str(tmp_path)
    )
    _run(c, tmp_path, engine="serial")
    store = Path(c.store)
    shutil.rmtree(store / "pressure")  # as an older hts left it, consolidated metadata included
    meta = json.loads((store / "zarr.json").read_text())
    del meta["consolidated_metadata"]["metadata"]["pressure"]
    del meta["attributes"]["variables"]  # nor the list of later variables a store holds
    (store / "zarr.json").write_text(json.dumps(meta))
    assert "pressure" not in open_dataset(store)
    write(d / "4_KF.cif", bulk("KF", "rocksalt", a=5.3))
    stats = _run(c, tmp_path, engine="serial")
    ds = open_dataset(store)
    assert stats.done == 1 and stats.resumed == 4 and ds.sizes["candidate"] == 5
    p = ds.pressure.values[:, 0]
    assert np.isnan(p[:4]).all() and np.isfinite(p[4])


def test_eta_counts_the_teachers_queue():
    import time

    from hts.campaign.driver import RunStats

    s = RunStats(total_estimate=1000, done=500, kept=150, rescored=100, rescore_waiting=50)
    s.started = time.time() - 125.0
    s.stage_s = {"prefilter": 50.0, "rescore": 200.0}  # 0.1 s and 2 s per candidate, 2 busy
    # 500 left to screen (50 worker-s), 50 queued + 30 % of 500 for the teacher (400 worker-s)
    assert abs(s.eta_s - 225.0) < 1.0
    s.rescore_waiting, s.kept, s.rescored = 0, 0, 0  # a student that keeps nothing
    assert abs(s.eta_s - 25.0) < 1.0  # 50 worker-s of screening, 2 workers busy
    s.kept, s.rescore_waiting = 10, 10  # the teacher has work but no timing yet: unknown
    assert s.eta_s is None


def test_the_last_teacher_batch_runs_beside_the_full_ones(tmp_path, monkeypatch):
    """Once the stream is screened, the last partial teacher batch is submitted at once, not after
    the full batches still running (with large batches that was an hour of one idle core).  The
    first full batch here waits until a second teacher batch has been submitted: the run ends
    promptly only if the flush does not wait for it."""
    import threading

    import hts.campaign.rescore as rescore_mod
    from hts.campaign.pool import TaskPool

    submitted = threading.Event()
    waited: list[bool] = []
    real_stage = rescore_mod.run_stage
    real_submit = TaskPool.submit
    batches = []

    def submit(self, resource, tag, fn, *args):
        if fn is stage:  # a teacher batch (not the rescore stage's reference phases)
            batches.append(len(tag[1][0]))
            if len(batches) == 2:
                submitted.set()
        return real_submit(self, resource, tag, fn, *args)

    def stage(index, cands, *rest):
        if index == 1:  # the first (full) batch holds its worker until the second is out
            waited.append(submitted.wait(30))
        return real_stage(index, cands, *rest)

    monkeypatch.setattr(TaskPool, "submit", submit)
    monkeypatch.setattr(rescore_mod, "run_stage", stage)
    data = lj_campaign(tmp_path, limits={"max_candidates": 24})
    data["stages"]["prefilter"]["keep"] = "e_above_hull <= 100"  # every candidate survives
    data["stages"]["rescore"] = {
        "model": {"name": "lennard-jones"},
        "keep": "e_above_hull <= 0.05",
        "chunk_size": 16,
    }
    stats = _run(parse_campaign(data), tmp_path)
    assert batches == [16, 8]
    assert waited == [True]  # the flush went out while the full batch was still running
    assert stats.rescored == 24
