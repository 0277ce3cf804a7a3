"""The store: xarray-readable schema, ledger-committed appends, truncation of half-written chunks."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from hts.store import Row, Store, StoreMismatchError, open_dataset, structure_of


def _open(path, h="h1"):
    return Store.open(
        path, campaign_name="t", campaign_hash=h, campaign_yaml="name: t\n", stages=["prefilter"]
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
    assert all(
        a.shape[0] == (8 if name in ("species", "positions") else 4)
        for name, a in again._arrays.items()
    )
    again.append([_row(k, 2, 1) for k in range(4, 6)], chunk_index=1)
    ds = open_dataset(path)
    assert list(ds.id.values) == [f"{k:016x}" for k in range(6)]


def test_other_campaign_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    _open(path, "h1")
    with pytest.raises(StoreMismatchError, match="settings changed"):
        _open(path, "h2")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    with pytest.raises(StoreMismatchError, match="not an hts store"):
        _open(tmp_path / "other")
