"""The campaign's Zarr store: schema, single writer with a resume ledger, and readers."""

from __future__ import annotations

import time
from pathlib import Path

from hts.store.writer import Row, Store, StoreMismatchError

__all__ = ["Row", "Store", "StoreMismatchError", "open_dataset", "structure_of"]


def open_dataset(path: str | Path, retries: int = 20):
    """The committed part of a store as an ``xarray.Dataset``, safe while a run writes it.

    Rows past the ledger (a chunk being written right now) are cut off.  A
    reader can catch arrays mid-resize, when their lengths briefly disagree;
    that is retried.
    """
    import warnings

    import xarray as xr
    import zarr

    path = Path(path)
    if not (path / "zarr.json").exists():
        raise FileNotFoundError(f"{path}: no hts store here")
    last: Exception | None = None
    for _ in range(retries):
        try:
            ledger = dict(
                zarr.open_group(path, mode="r", use_consolidated=False).attrs.get("ledger", {})
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = xr.open_zarr(path, consolidated=None, chunks=None)
            return ds.isel(
                candidate=slice(0, int(ledger.get("n_rows", 0))),
                atom=slice(0, int(ledger.get("n_atom_rows", 0))),
            )
        except ValueError as err:  # conflicting sizes while the writer resizes
            last = err
            time.sleep(0.1)
    raise RuntimeError(f"{path}: could not read a consistent snapshot: {last}")


def structure_of(ds, i: int):
    """The stored (relaxed) structure of row ``i`` as ASE Atoms."""
    from ase import Atoms

    s, n = int(ds.atom_start[i]), int(ds.n_atoms[i])
    return Atoms(
        numbers=ds.species[s : s + n].values.astype(int),
        positions=ds.positions[s : s + n].values,
        cell=ds.cell[i].values,
        pbc=True,
    )
