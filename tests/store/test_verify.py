"""A damaged store is found (hts verify, and before any resume); creation and finalisation are atomic."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from hts.spec import parse_campaign
from hts.store import StoreDamagedError, open_dataset, verify
from tests.conftest import lj_campaign, run_on_parsl, write_campaign
from tests.test_cli import _hts


@pytest.fixture
def finished(tmp_path):
    data = lj_campaign(tmp_path, chunk_size=8, limits={"max_candidates": 24})
    c = parse_campaign(data)
    run_on_parsl(c, tmp_path / "runinfo")
    return c, write_campaign(tmp_path, data)


def test_a_whole_store_verifies(finished):
    c, _ = finished
    assert verify(c.store) == []


def test_a_deleted_chunk_is_found_and_the_store_is_not_resumed(finished, tmp_path):
    c, path = finished
    (tmp_path / "lj.zarr" / "energy" / "c" / "0" / "0").unlink()  # rows 0-23 of every stage
    damage = verify(c.store)
    assert [str(d) for d in damage] == ["energy rows 0–23: chunk file missing"]
    res = _hts("verify", str(c.store), cwd=tmp_path)
    assert res.returncode == 2 and "energy rows 0–23: chunk file missing" in res.stdout
    res = _hts("status", str(c.store), cwd=tmp_path)
    assert "damaged: energy rows 0–23: chunk file missing" in " ".join(res.stderr.split())
    res = _hts("run", str(path), "-q", cwd=tmp_path)
    assert res.returncode == 2 and "damaged, so it is not resumed" in res.stderr
    with pytest.raises(StoreDamagedError):
        run_on_parsl(c, tmp_path / "runinfo")


def test_an_array_whose_metadata_is_deleted_is_found(finished, tmp_path):
    c, path = finished
    (tmp_path / "lj.zarr" / "energy" / "zarr.json").unlink()
    damage = [str(d) for d in verify(c.store)]
    assert any(d.startswith("energy rows 0–23: array metadata missing") for d in damage), damage
    res = _hts("run", str(path), "-q", cwd=tmp_path)
    assert res.returncode == 2 and "damaged, so it is not resumed" in res.stderr
    res = _hts("export", str(c.store), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert res.returncode == 2 and "energy rows 0–23: array metadata missing" in res.stderr
    assert "nothing exported" in res.stderr and not (tmp_path / "out").exists()


def test_a_whole_deleted_array_is_named_and_not_re_added(finished, tmp_path):
    c, path = finished
    shutil.rmtree(tmp_path / "lj.zarr" / "energy")
    damage = [str(d) for d in verify(c.store)]
    assert damage == [
        "energy rows 0–23: array missing (neither its metadata nor its chunks are there)"
    ]
    res = _hts("verify", str(c.store), cwd=tmp_path)
    assert res.returncode == 2 and "energy rows 0–23: array missing" in res.stdout
    res = _hts("run", str(path), "-q", cwd=tmp_path)
    assert res.returncode == 2 and "damaged, so it is not resumed" in res.stderr
    assert not (tmp_path / "lj.zarr" / "energy").exists()  # never re-added empty


def test_a_variable_the_store_predates_is_not_damage(finished, tmp_path):
    """A store written before a variable existed lacks it honestly; reopening adds it."""
    import zarr

    c, path = finished
    store = tmp_path / "lj.zarr"
    shutil.rmtree(store / "pressure")
    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    group.attrs["variables"] = [v for v in group.attrs["variables"] if v != "pressure"]
    (store / "zarr.json").write_text(
        json.dumps(
            {
                k: v
                for k, v in json.loads((store / "zarr.json").read_text()).items()
                if k != "consolidated_metadata"
            }
        )
    )
    assert verify(c.store) == []
    run_on_parsl(c, tmp_path / "runinfo")  # resumes: nothing to do but add the variable
    assert verify(c.store) == [] and "pressure" in open_dataset(c.store)


def test_a_garbage_chunk_is_found(finished, tmp_path):
    c, _ = finished
    (tmp_path / "lj.zarr" / "formula" / "c" / "0").write_bytes(b"\x00garbage" * 50)
    (damage,) = verify(c.store)
    assert damage.variable == "formula" and "unreadable" in damage.what


def test_a_creation_killed_before_its_rename_leaves_nothing_half_made(tmp_path):
    """The store appears whole or not at all; a leftover from a killed creation is cleared."""
    c = parse_campaign(lj_campaign(tmp_path, limits={"max_candidates": 8}))
    half = tmp_path / ".lj.zarr.creating"
    half.mkdir()
    (half / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')  # no ledger
    run_on_parsl(c, tmp_path / "runinfo")
    assert not half.exists() and open_dataset(c.store).sizes["candidate"] == 8


def test_a_kill_between_finalising_and_consolidating_is_consolidated_on_resume(finished):
    c, _ = finished
    meta_path = Path(c.store) / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta.pop("consolidated_metadata")  # finalized in the ledger, never consolidated
    meta_path.write_text(json.dumps(meta))
    run_on_parsl(c, Path(c.store).parent / "runinfo")
    assert "consolidated_metadata" in json.loads(meta_path.read_text())


def test_a_store_path_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "lj.zarr").write_text("not a store")
    path = write_campaign(tmp_path, lj_campaign(tmp_path))
    res = _hts("run", str(path), "-q", cwd=tmp_path)
    assert res.returncode == 2 and "lj.zarr: is a file; refusing to overwrite it" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 320 kB file system of its own (tmpfs; needs root, as CI has)."""
    import subprocess

    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320k", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_a_full_disk_and_a_read_only_store_are_clear_errors_and_lose_nothing(tmp_path, small_disk):
    """ENOSPC mid-run: exit 1, what is committed is whole; read-only: a clear refusal; moved to a
    disk with room, the run completes with every candidate once."""
    import subprocess

    data = lj_campaign(tmp_path, chunk_size=4, store=str(small_disk / "lj.zarr"))
    path = write_campaign(tmp_path, data)
    res = _hts("run", str(path), "-q", cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "No space left on device" in res.stderr and "run the same command again" in res.stderr
    assert verify(small_disk / "lj.zarr") == []
    kept = open_dataset(small_disk / "lj.zarr").sizes["candidate"]
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    res = _hts("run", str(path), "-q", cwd=tmp_path)
    assert (
        res.returncode == 2 and "cannot write here" in res.stderr and "Traceback" not in res.stderr
    )
    shutil.copytree(small_disk / "lj.zarr", tmp_path / "lj.zarr")
    res = _hts("run", str(path), "-q", "--store", str(tmp_path / "lj.zarr"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    ids = open_dataset(tmp_path / "lj.zarr").id.values.astype(object)
    res = _hts("run", str(path), "-q", "--store", str(tmp_path / "whole.zarr"), cwd=tmp_path)
    whole = open_dataset(tmp_path / "whole.zarr").id.values.astype(object)
    assert len(ids) == len(set(ids)) >= kept and set(ids) == set(whole)
