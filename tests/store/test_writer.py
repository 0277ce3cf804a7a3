"""The store: xarray-readable schema, ledger-committed appends, truncation of half-written chunks."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from hts.store import (
    Row,
    StageUpdate,
    Store,
    StoreDamagedError,
    StoreMismatchError,
    StoreReader,
    open_dataset,
    structure_of,
)


def _open(path, h="h1"):
    return Store.open(
        path, campaign_name="t", campaign_hash=h, campaign_yaml="name: t\n", stages=["prefilter"]
    )


def _open_two(path):
    """A store with a later stage, for its update log."""
    return Store.open(
        path,
        campaign_name="t",
        campaign_hash="h",
        campaign_yaml="",
        stages=["prefilter", "rescore"],
    )


def _row(k: int, n_atoms: int, chunk: int) -> Row:
    rng = np.random.default_rng(k)
    return Row(
        id=f"{k:016x}",
        formula="NaCl",
        chemsys="Cl-Na",
        prototype="rocksalt",
        source="test",
        chunk=chunk,
        status="ok" if k % 3 else "failed",
        reason="" if k % 3 else "bad input",
        stage_reached="prefilter",
        numbers=np.full(n_atoms, 11),
        positions=rng.normal(size=(n_atoms, 3)),
        cell=np.eye(3) * (3 + k),
        stage={
            "prefilter": {
                "energy_per_atom": -1.0 * k,
                "e_above_hull": 0.01 * k,
                "kept": bool(k % 2),
                "n_steps": k,
            }
        },
    )


def test_append_and_read_with_xarray(tmp_path):
    path = tmp_path / "s.zarr"
    store = _open(path)
    rows = [_row(k, 1 + k % 4, 0) for k in range(5)]
    store.append(rows, chunk_index=0)
    store.append([_row(k, 2, 1) for k in range(5, 8)], chunk_index=1)
    ds = xr.open_zarr(path, consolidated=False)
    assert ds.sizes["candidate"] == 8
    assert ds.sizes["atom"] == sum(1 + k % 4 for k in range(5)) + 6
    assert list(ds.stage.values) == ["prefilter"]
    assert ds.energy_per_atom.dims == ("candidate", "stage")
    for k in (0, 3, 6):
        atoms = structure_of(ds, k)
        expected = rows[k] if k < 5 else _row(k, 2, 1)
        np.testing.assert_allclose(atoms.positions, expected.positions)
        np.testing.assert_allclose(atoms.cell[:], expected.cell)
    assert str(ds.reason.values[0]) == "bad input"
    assert ds.attrs["ledger"]["chunks_done"] == [[0, 1]]


def test_half_written_chunk_is_cut_on_reopen(tmp_path):
    path = tmp_path / "s.zarr"
    store = _open(path)
    store.append([_row(k, 2, 0) for k in range(4)], chunk_index=0)
    # a driver killed mid-append: some arrays grown, the others not, ledger not committed
    for k, arr in enumerate(store._arrays.values()):
        if k % 2:
            arr.resize((arr.shape[0] + 3, *arr.shape[1:]))
    assert open_dataset(path).sizes["candidate"] == 4  # readers see only committed rows
    again = _open(path)
    assert again.n_rows == 4 and again.done == {0}
    lengths = {"species": 8, "positions": 8, "update_row": 0, "update_stage": 0}
    assert all(a.shape[0] == lengths.get(name, 4) for name, a in again._arrays.items())
    again.append([_row(k, 2, 1) for k in range(4, 6)], chunk_index=1)
    ds = open_dataset(path)
    assert list(ds.id.values) == [f"{k:016x}" for k in range(6)]


def test_update_log_is_committed_with_the_ledger(tmp_path):
    """A later stage's results are logged (row, stage); a log entry past the ledger is cut."""
    path = tmp_path / "s.zarr"
    store = _open_two(path)
    store.append([_row(k, 2, 0) for k in range(6)], chunk_index=0)

    def result(row):
        values = {"energy_per_atom": -2.0, "e_above_hull": 0.0, "kept": True}
        return StageUpdate(row, values, "ok", "", "rescore")

    store.update("rescore", [result(4), result(1)])
    rows, stages = StoreReader(path).updates()
    assert sorted(rows) == [1, 4] and set(stages) == {1}
    assert list(StoreReader(path).stage_rows("rescore")) == [1, 4]
    # killed after the log grew, before the ledger: the entry is not committed
    for name in ("update_row", "update_stage"):
        arr = store._arrays[name]
        arr.resize((arr.shape[0] + 1,))
    again = _open_two(path)
    assert again.n_updates == 2 and again.stage_done == {"rescore": {1, 4}}
    assert open_dataset(path, bookkeeping=True).sizes["update"] == 2
    assert "update" not in open_dataset(path).sizes  # the log is the store's, not a candidate's
    generation = again.generation
    again.update("rescore", [result(1)])  # a result replaced: readers must read everything again
    assert again.generation == generation + 1 and again.n_updates == 3


def test_other_campaign_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    _open(path, "h1")
    with pytest.raises(StoreMismatchError, match="settings changed"):
        _open(path, "h2")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    with pytest.raises(StoreMismatchError, match="not an hts store"):
        _open(tmp_path / "other")


def _forget_later_variables(path):
    """Stores written before 2026-12-04 do not list their variables (``hts verify`` then expects
    only the first schema's): drop the list, as such a store has none."""
    import zarr

    group = zarr.open_group(path, mode="r+", use_consolidated=False)
    attrs = dict(group.attrs)
    attrs.pop("variables", None)
    group.attrs.clear()
    group.attrs.update(attrs)


def test_a_store_that_lost_a_variable_it_lists_is_damaged(tmp_path):
    """Whereas a store that lists a later variable and lacks it is damaged: not re-added empty."""
    import shutil

    path = tmp_path / "s.zarr"
    store = _open_two(path)
    store.append([_row(k, 2, 0) for k in range(6)], chunk_index=0)
    store.close()
    shutil.rmtree(path / "pressure")
    with pytest.raises(StoreDamagedError, match="pressure"):
        _open_two(path)
    assert not (path / "pressure").exists()


def test_store_from_before_the_update_log_is_migrated(tmp_path):
    """Older stores kept each stage's rows as ranges in the ledger: reopening logs them."""
    import shutil

    import zarr

    path = tmp_path / "s.zarr"
    store = _open_two(path)
    store.append([_row(k, 2, 0) for k in range(6)], chunk_index=0)
    group = zarr.open_group(path, mode="r+")
    ledger = dict(group.attrs["ledger"])
    del ledger["n_updates"]
    ledger["stage_rows"] = {"rescore": [[1, 2], [5, 5]]}
    group.attrs["ledger"] = ledger
    for name in ("update_row", "update_stage"):
        shutil.rmtree(path / name)
    _forget_later_variables(path)
    assert list(StoreReader(path).stage_rows("rescore")) == [1, 2, 5]
    again = _open_two(path)
    assert again.stage_done == {"rescore": {1, 2, 5}} and again.n_updates == 3
    assert list(StoreReader(path).stage_rows("rescore")) == [1, 2, 5]
    assert "stage_rows" not in StoreReader(path).ledger


def test_pressure_round_trips_per_stage(tmp_path):
    """Each relaxing stage's final pressure (GPa) is stored in its own column; NaN where unknown."""
    path = tmp_path / "s.zarr"
    store = _open_two(path)
    rows = [_row(k, 2, 0) for k in range(4)]
    for k, r in enumerate(rows):
        r.stage["prefilter"]["pressure"] = 0.25 * k - 0.3
    store.append(rows, chunk_index=0)
    later = {"energy_per_atom": -2.0, "pressure": -0.7}
    store.update("rescore", [StageUpdate(1, later, "ok", "", "rescore")])
    store.close()
    expected = np.full((4, 2), np.nan)
    expected[:, 0] = [0.25 * k - 0.3 for k in range(4)]
    expected[1, 1] = -0.7
    got = StoreReader(path).read(["pressure"], [0, 1, 2, 3])["pressure"]
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(open_dataset(path).pressure.values, expected)
    assert "GPa" in open_dataset(path).pressure.attrs["description"]


def test_a_store_from_before_pressure_opens_resumes_and_exports(tmp_path):
    """A store written before ``pressure`` existed: readers read it without the variable, export
    gives an empty column, and the writer adds it (NaN for the old rows, every chunk written, so
    verify finds no damage) and goes on appending."""
    import csv
    import shutil

    from hts.report import export_store
    from hts.store.verify import verify

    path = tmp_path / "s.zarr"
    store = _open_two(path)
    store.append([_row(k, 2, 0) for k in range(6)], chunk_index=0)
    store.close()
    shutil.rmtree(path / "pressure")  # as hts wrote stores before the variable was added
    _forget_later_variables(path)

    reader = StoreReader(path)
    assert not reader.has("pressure")
    assert set(reader.read(["pressure", "energy_per_atom"], [0, 1])) == {"energy_per_atom"}
    assert "pressure" not in open_dataset(path)
    _, csv_path = export_store(path, tmp_path / "out", survivors_only=False)
    with csv_path.open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 6 and all(r["prefilter_pressure"] == "nan" for r in table)

    again = _open_two(path)  # verified on opening: a missing chunk would refuse the store
    rows = [_row(k, 2, 1) for k in range(6, 9)]
    for r in rows:
        r.stage["prefilter"]["pressure"] = 1.5
    again.append(rows, chunk_index=1)
    again.close()
    assert verify(path) == []
    p = StoreReader(path).read_range(["pressure"])["pressure"]
    assert p.shape == (9, 2) and np.isnan(p[:6]).all() and np.isnan(p[6:, 1]).all()
    assert (p[6:, 0] == 1.5).all()


def test_the_first_stage_status_is_stored_whole(tmp_path):
    """'ok'/'failed' of the first stage, not their first letters (stores before 2026-12-03: read as words)."""
    path = tmp_path / "s.zarr"
    store = _open(path)
    store.append([_row(k, 2, 0) for k in range(4)], chunk_index=0)
    expect = ["failed", "ok", "ok", "failed"]
    assert [
        str(v) for v in xr.open_zarr(path, consolidated=False).stage_status.values[:, 0]
    ] == expect
    store.close()
    # a store written with the one-letter column reads as words
    import zarr

    zarr.open_group(path, mode="r+")["stage_status"][:, 0] = np.array(["f", "o", "o", "f"])
    assert list(open_dataset(path).stage_status.values[:, 0]) == expect
    r = StoreReader(path)
    assert list(r.read(["stage_status"], [0, 1])["stage_status"][:, 0]) == expect[:2]
    assert list(r.read_range(["stage_status"])["stage_status"][:, 0]) == expect
