"""The campaign's Zarr store: schema, single writer with a resume ledger, and readers."""

from __future__ import annotations

import time
from pathlib import Path

from hts.store.writer import Row, StageUpdate, Store, StoreMismatchError

__all__ = ["Row", "StageUpdate", "Store", "StoreMismatchError", "open_dataset", "structure_of"]


def open_dataset(path: str | Path, variables: list[str] | None = None, retries: int = 20):
    """The committed part of a store as an ``xarray.Dataset``, safe while a run writes it.

    Reads the ledger first, then each array up to the committed row count, so
    rows past the ledger — a chunk being written right now, or the half chunk a
    killed driver left behind — are never seen.  (Plain ``xr.open_zarr`` works
    on a finished store, but refuses one whose writer was killed mid-append
    until the run is resumed, because its arrays' lengths then disagree.)
    ``variables`` limits what is loaded; values are read into memory.
    """
    import numpy as np
    import xarray as xr
    import zarr

    path = Path(path)
    if not (path / "zarr.json").exists():
        raise FileNotFoundError(f"{path}: no hts store here")
    last: Exception | None = None
    for _ in range(retries):
        try:
            group = zarr.open_group(path, mode="r", use_consolidated=False)
            attrs = dict(group.attrs)
            ledger = attrs.get("ledger", {})
            limits = {
                "candidate": int(ledger.get("n_rows", 0)),
                "atom": int(ledger.get("n_atom_rows", 0)),
            }
            data = {}
            for name, arr in group.arrays():
                if variables is not None and name not in variables and name != "stage":
                    continue
                dims = tuple(arr.metadata.dimension_names or ())
                n = limits.get(dims[0]) if dims else None
                values = arr[:n] if n is not None else arr[...]
                if values.dtype.kind == "T":  # numpy StringDType → plain object strings
                    values = values.astype(object)
                data[name] = xr.Variable(dims, np.asarray(values), attrs=dict(arr.attrs))
            coords = {"stage": data.pop("stage")} if "stage" in data else {}
            return xr.Dataset(data, coords=coords, attrs=attrs)
        except (ValueError, KeyError, FileNotFoundError) as err:  # caught mid-write; try again
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
