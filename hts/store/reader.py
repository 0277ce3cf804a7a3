"""Reading a store, safe while its writer runs: the ledger, the counters, committed rows.

Readers (``hts status``, the dashboard, exports) never parse ``zarr.json`` or
reach into zarr groups themselves; they use :func:`read_ledger` (one small
file read, for polling), :class:`StoreReader` (one consistent snapshot: the
ledger first, then only rows it says are committed) or :func:`open_dataset`
(the same as an ``xarray.Dataset``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hts.store.counters import Counters, recount
from hts.store.layout import plain, root_attributes

__all__ = ["StoreReader", "expand_ranges", "open_dataset", "read_ledger", "with_reader"]


def expand_ranges(ranges) -> np.ndarray:
    """The ledger's inclusive ``[a, b]`` ranges as sorted row indices."""
    if not ranges:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(a, b + 1, dtype=np.int64) for a, b in ranges])


def read_ledger(path: str | Path) -> dict:
    """The committed ledger, cheaply: the root ``zarr.json`` only, no zarr import.

    Returns ``{}`` when it cannot be read right now (no store yet, or caught
    mid-replace); pollers simply try again.
    """
    try:
        return dict(root_attributes(Path(path)).get("ledger", {}))
    except (OSError, ValueError):
        return {}


class StoreReader:
    """A read-only snapshot of a store: its ledger, counters and committed rows.

    The ledger is read when the reader is made; arrays are opened after it,
    so every read is cut at the rows that ledger committed.  Make a new reader
    to see later commits.
    """

    def __init__(self, path: str | Path) -> None:
        import zarr

        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise FileNotFoundError(f"{self.path}: no hts store here")
        self._group = zarr.open_group(self.path, mode="r", use_consolidated=False)
        self.attrs = dict(self._group.attrs)
        self.ledger = dict(self.attrs.get("ledger", {}))
        self.n_rows = int(self.ledger.get("n_rows", 0))
        self.n_atom_rows = int(self.ledger.get("n_atom_rows", 0))
        self.stages = [str(s) for s in plain(self._group["stage"][...])]
        self._arrays: dict = {}

    # -- the ledger --------------------------------------------------------------

    @property
    def generation(self) -> int:
        return int(self.ledger.get("generation", 0))

    @property
    def finalized(self) -> bool:
        return bool(self.ledger.get("finalized", False))

    def stage_rows(self, stage: str) -> np.ndarray | None:
        """Rows a later stage committed results for, sorted; None if the ledger does not say."""
        rows = self.ledger.get("stage_rows")
        if rows is None:
            return None
        return expand_ranges(rows.get(stage, []))

    def stage_models(self) -> list[str]:
        return [str(s) for s in plain(self._group["stage_model"][...])]

    def counters(self) -> Counters:
        """The writer's running counters; counted from the rows for stores that have none."""
        c = Counters.from_json(self.ledger.get("counters"), self.stages)
        return c if c is not None else recount(self.stages, self.n_rows, self.read_range)

    # -- rows --------------------------------------------------------------------

    def has(self, name: str) -> bool:
        return name in self._group

    def _array(self, name: str):
        if name not in self._arrays:
            self._arrays[name] = self._group[name]
        return self._arrays[name]

    def read_range(
        self, names: Sequence[str], start: int = 0, stop: int | None = None
    ) -> dict[str, np.ndarray]:
        """Committed rows ``start:stop`` of candidate variables (absent variables are left out)."""
        stop = self.n_rows if stop is None else min(stop, self.n_rows)
        return {n: plain(self._array(n)[start:stop]) for n in names if self.has(n)}

    def read(self, names: Sequence[str], rows) -> dict[str, np.ndarray]:
        """Committed values at scattered rows, as :meth:`hts.store.Store.read`."""
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n_rows):
            raise IndexError(f"rows outside the {self.n_rows} committed rows")
        out = {}
        for n in names:
            if not self.has(n):
                continue
            arr = self._array(n)
            out[n] = plain(
                arr.oindex[idx] if len(idx) else np.zeros((0, *arr.shape[1:]), arr.dtype)
            )
        return out

    def structure(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(numbers, positions, cell) of one committed row: one slice of the atom arrays."""
        if not 0 <= row < self.n_rows:
            raise IndexError(row)
        s, n = int(self._array("atom_start")[row]), int(self._array("n_atoms")[row])
        return (
            self._array("species")[s : s + n].astype(int),
            self._array("positions")[s : s + n],
            self._array("cell")[row],
        )

    def find_id(self, cid: str, block: int = 65536) -> int | None:
        """The row of a candidate id, by a scan in blocks (for ids not at hand)."""
        for start in range(0, self.n_rows, block):
            ids = self.read_range(["id"], start, start + block)["id"]
            hit = np.flatnonzero(ids == cid)
            if len(hit):
                return start + int(hit[0])
        return None


def open_dataset(path: str | Path, variables: list[str] | None = None, retries: int = 20):
    """The committed part of a store as an ``xarray.Dataset``, safe while a run writes it.

    Reads the ledger first, then each array up to the committed row count, so
    rows past the ledger — a chunk being written right now, or the half chunk a
    killed driver left behind — are never seen.  (Plain ``xr.open_zarr`` works
    on a finished store, but refuses one whose writer was killed mid-append
    until the run is resumed, because its arrays' lengths then disagree.)
    ``variables`` limits what is loaded; values are read into memory.
    """
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
                values = plain(arr[:n] if n is not None else arr[...])
                data[name] = xr.Variable(dims, values, attrs=dict(arr.attrs))
            coords = {"stage": data.pop("stage")} if "stage" in data else {}
            return xr.Dataset(data, coords=coords, attrs=attrs)
        except (ValueError, KeyError, FileNotFoundError) as err:  # caught mid-write; try again
            last = err
            time.sleep(0.1)
    raise RuntimeError(f"{path}: could not read a consistent snapshot: {last}")


def with_reader(path: str | Path, fn, retries: int = 20):
    """``fn(StoreReader(path))``, tried again when caught in the middle of a commit."""
    last: Exception | None = None
    for _ in range(retries):
        try:
            return fn(StoreReader(path))
        except (ValueError, KeyError, IndexError) as err:
            last = err
            time.sleep(0.1)
    raise RuntimeError(f"{path}: could not read a consistent snapshot: {last}")
