"""hts from Python: hts.run / hts.open_dataset on a real thread pool and a real Zarr store,
with structures handed over in memory (pymatgen and ASE)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from ase.build import bulk
from pymatgen.core import Lattice, Structure

import hts
from hts.api import IncompleteRunError
from hts.campaign import RunError
from hts.candidates import EmptySourceError
from hts.spec import CampaignError, parse_campaign
from hts.store import StoreError
from tests.conftest import REPO, lj_campaign, write_campaign

LJ = {"prefilter": {"model": {"name": "lennard-jones"}, "keep": "e_above_hull <= 0.05"}}


def _structures():
    """Six objects: pymatgen and ASE, a labelled one, a duplicate, a disordered one."""
    nacl = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    kcl = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(6.3), ["K", "Cl"], [[0, 0, 0], [0.5] * 3]
    )
    kcl.properties["label"] = "mp-23193"
    mgo = bulk("MgO", "rocksalt", a=4.2)
    mgo.info["label"] = "MgO rocksalt"
    lif = bulk("LiF", "zincblende", a=4.4)
    disordered = Structure(
        Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5] * 3]
    )
    twin = nacl.copy()
    twin.translate_sites([0, 1], [0.1, 0.1, 0.1])  # the same crystal, shifted: one candidate
    return [nacl, kcl, mgo, lif, disordered, twin]


def _campaign(tmp_path, structures, **extra):
    return {
        "name": "in-memory",
        "candidates": {"kind": "structures", "structures": structures},
        "stages": LJ,
        "chunk_size": 2,
        **extra,
    }


def test_run_structures_in_memory(tmp_path):
    store = tmp_path / "mem.zarr"
    ds = hts.run(_campaign(tmp_path, _structures()), store=store, progress=False)
    sources = sorted(ds.source.values.astype(object))
    # the shifted twin is the same candidate (one row); every other object is one row
    assert sources == sorted(
        ["structures[0]", "mp-23193", "MgO rocksalt", "structures[3]", "structures[4]"]
    )
    by_source = {s: k for k, s in enumerate(ds.source.values.astype(object))}
    bad = by_source["structures[4]"]
    assert ds.status.values[bad] == "failed" and "partial occupancy" in ds.reason.values[bad]
    ok = ds.status.values.astype(object) == "ok"
    assert ok.sum() == 4 and np.isfinite(ds.energy_per_atom.values[ok, 0]).all()
    assert sorted(ds.formula.values[ok].astype(object)) == ["ClK", "ClNa", "FLi", "MgO"]
    # candidate variables only: the store's update log stays out; models are stage coordinates
    assert not any(str(v).startswith("update_") for v in ds.variables)
    assert str(ds.stage_model.sel(stage="prefilter").values) == "lennard-jones"
    # the same structures again: resumed from the store, nothing screened twice
    again = hts.run(_campaign(tmp_path, _structures()), store=store, progress=False)
    assert (
        again.sizes["candidate"] == 5 and again.attrs["campaign_hash"] == ds.attrs["campaign_hash"]
    )
    assert hts.open_dataset(store).sizes["candidate"] == 5


def test_a_mapping_of_labels_and_an_iterable(tmp_path):
    objs = _structures()[:4]
    ds = hts.run(
        _campaign(tmp_path, {f"cand-{k}": s for k, s in enumerate(objs)}),
        store=tmp_path / "a.zarr",
        progress=False,
        engine="serial",
    )
    assert sorted(ds.source.values.astype(object)) == [f"cand-{k}" for k in range(4)]
    gen = (s.as_dict() for s in objs if isinstance(s, Structure))  # what jobflow hands a job
    ds = hts.run(_campaign(tmp_path, gen), store=tmp_path / "b.zarr", progress=False)
    assert sorted(ds.formula.values.astype(object)) == ["ClK", "ClNa"]


def test_changed_structures_are_another_campaign(tmp_path):
    """The campaign hash covers the structures: a store refuses a different list."""
    objs = _structures()
    a = parse_campaign(_campaign(tmp_path, objs, store="x.zarr"))
    assert (
        a.content_hash()
        == parse_campaign(_campaign(tmp_path, _structures(), store="x.zarr")).content_hash()
    )
    moved = [s.copy() for s in objs[:2]]
    moved[0].perturb(0.05, min_distance=0.05)
    assert (
        parse_campaign(_campaign(tmp_path, moved, store="x.zarr")).content_hash()
        != a.content_hash()
    )
    hts.run(_campaign(tmp_path, objs[:2]), store=tmp_path / "s.zarr", progress=False)
    with pytest.raises(StoreError, match="its settings changed"):
        hts.run(_campaign(tmp_path, moved), store=tmp_path / "s.zarr", progress=False)


def test_bad_input_raises_naming_the_field(tmp_path):
    with pytest.raises(CampaignError, match=r"candidates\.structures: item 1: expected a pymatgen"):
        hts.run(_campaign(tmp_path, [bulk("Cu"), "Cu.cif"]), store=tmp_path / "x.zarr")
    with pytest.raises(EmptySourceError, match="list of structures is empty"):
        hts.run(_campaign(tmp_path, []), store=tmp_path / "x.zarr", progress=False)
    with pytest.raises(CampaignError, match="stages.prefilter.keep"):
        data = _campaign(tmp_path, [bulk("Cu")])
        data["stages"] = {"prefilter": {"model": {"name": "lennard-jones"}, "keep": "nonsense"}}
        hts.run(data, store=tmp_path / "x.zarr")
    with pytest.raises(CampaignError, match="store: required field is missing"):
        hts.run(_campaign(tmp_path, [bulk("Cu")]))
    with pytest.raises(TypeError, match="campaign: expected a file path, a mapping"):
        hts.run(42)
    with pytest.raises(FileNotFoundError, match="no hts store here"):
        hts.open_dataset(tmp_path / "nothing.zarr")


def test_run_a_campaign_file_like_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_campaign(tmp_path, lj_campaign(tmp_path, limits={"max_candidates": 8}))
    ds = hts.run(path, progress=False)
    assert ds.sizes["candidate"] == 8 and ds.attrs["campaign_name"] == "lj-test"
    assert (tmp_path / "lj.zarr").is_dir()


def test_failed_tasks_raise_and_a_rerun_completes(tmp_path):
    """Like `hts run` exiting 1: every task died on a corrupt model file; nothing is recorded."""
    student = REPO / "workflows" / "models" / "demo-student"
    shutil.copy(student / "report.json", tmp_path / "report.json")
    (tmp_path / "student.model").write_bytes(b"PK\x03\x04 not a model" * 20)
    data = lj_campaign(tmp_path, chunk_size=4, limits={"max_candidates": 8, "task_retries": 0})
    data["stages"]["prefilter"] = {
        "model": {"name": "student", "path": str(tmp_path / "student.model")},
        "direct": True,
        "keep": "e_above_hull <= 10",
        "distillation": {"report": str(tmp_path / "report.json"), "references": "fitted"},
    }
    with pytest.raises(IncompleteRunError, match="8 candidates not screened") as err:
        hts.run(data, progress=False)
    assert isinstance(err.value, RunError) and err.value.stats.unscreened == 8
    assert "call hts.run again" in str(err.value)
    assert hts.open_dataset(tmp_path / "lj.zarr").sizes["candidate"] == 0
    shutil.copy(student / "student.model", tmp_path / "student.model")
    assert hts.run(data, progress=False).sizes["candidate"] == 8
