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
from typing import Any

import numpy as np

from hts.store.best import KEPT
from hts.store.counters import Counters, recount
from hts.store.layout import plain, root_attributes
from hts.store.schema import CANDIDATE_VARS, STATUS_FAILED, STATUS_OK, UPDATE_VARS

__all__ = [
    "RowReader",
    "StoreReader",
    "expand_ranges",
    "open_dataset",
    "read_ledger",
    "with_reader",
]


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


class RowReader:
    """Committed rows of a store's arrays: the reads the writer and every reader share.

    Subclasses set ``path``, ``n_rows``, ``n_atom_rows`` and ``_group``; arrays
    are opened on first use and kept.  Reads never go past ``n_rows``.
    """

    path: Path
    n_rows: int
    n_atom_rows: int
    n_updates: int = 0
    _group: Any
    _arrays: dict

    def variables(self):
        """Every array of the store as ``(name, array, dimension names)``.

        A folder whose ``zarr.json`` was deleted is skipped quietly (zarr warns of
        it): :func:`hts.store.verify.lost_arrays` reports that damage by name.
        """
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Object at .* is not recognized")
            arrays = list(self._group.arrays())
        for name, arr in arrays:
            yield name, arr, tuple(arr.metadata.dimension_names or ())

    def has(self, name: str) -> bool:
        return self._array(name) is not None

    def _array(self, name: str):
        if name not in self._arrays:
            try:
                self._arrays[name] = self._group[name]
            except KeyError:  # a variable added since this store was written
                self._arrays[name] = None
        return self._arrays[name]

    def read_range(
        self, names: Sequence[str], start: int = 0, stop: int | None = None
    ) -> dict[str, np.ndarray]:
        """Committed rows ``start:stop`` of candidate variables (absent variables are left out)."""
        stop = self.n_rows if stop is None else min(stop, self.n_rows)
        out = {}
        for name in names:
            if (arr := self._array(_candidate_var(name))) is not None:
                out[name] = _words(name, plain(arr[start:stop]))
        return out

    def read(self, names: Sequence[str], rows) -> dict[str, np.ndarray]:
        """Committed values of candidate variables at scattered rows (absent ones left out).

        The one way code outside this package reads rows back (identity columns
        to build a later stage's batch, a stage's energies for the hull), so
        nobody reaches into the zarr group.  Stage variables come back as
        ``[len(rows), n_stages]`` arrays, strings as numpy object arrays.
        """
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n_rows):
            raise IndexError(f"rows outside the {self.n_rows} committed rows")
        out = {}
        for name in names:
            if (arr := self._array(_candidate_var(name))) is None:
                continue
            values = arr.oindex[idx] if len(idx) else np.zeros((0, *arr.shape[1:]), arr.dtype)
            out[name] = _words(name, plain(values))
        return out

    def iter_blocks(self, names: Sequence[str], block: int = 16384):
        """Committed rows in blocks ``(start, columns)``, for passes over the whole store."""
        for start in range(0, self.n_rows, block):
            yield start, self.read_range(names, start, start + block)

    def structures(self, rows) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(numbers, positions, cell) of committed rows, read in as few slices as possible."""
        if not len(rows):
            return []
        c = self.read(["atom_start", "n_atoms", "cell"], rows)
        starts, counts = c["atom_start"], c["n_atoms"]
        lo, hi = int(starts.min()), int((starts + counts).max())
        species = self._array("species")[lo:hi]
        positions = self._array("positions")[lo:hi]
        out = []
        for a0, n, cell in zip(starts - lo, counts, c["cell"], strict=True):
            sl = slice(int(a0), int(a0 + n))
            out.append((species[sl].astype(np.int64), positions[sl], cell))
        return out

    def structure(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(numbers, positions, cell) of one committed row: one slice of the atom arrays."""
        if not 0 <= row < self.n_rows:
            raise IndexError(row)
        return self.structures([row])[0]

    def find_id(self, cid: str, block: int = 65536) -> int | None:
        """The row of a candidate id, by a scan in blocks (for ids not at hand)."""
        for start, cols in self.iter_blocks(["id"], block):
            hit = np.flatnonzero(cols["id"] == cid)
            if len(hit):
                return start + int(hit[0])
        return None

    # -- the later stages' update log ----------------------------------------------

    def updates(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Entries ``start:stop`` of the update log: (row, stage index) of each committed result.

        Every result a later stage commits for an existing row appends one
        entry, so a reader that remembers how far it read learns what changed
        since then in O(changes).
        """
        stop = self.n_updates if stop is None else min(stop, self.n_updates)
        if self._array("update_row") is None or stop <= start:
            return np.zeros(0, np.int64), np.zeros(0, np.int8)
        return (
            np.asarray(self._array("update_row")[start:stop], dtype=np.int64),
            np.asarray(self._array("update_stage")[start:stop], dtype=np.int8),
        )


def _candidate_var(name: str) -> str:
    if name not in CANDIDATE_VARS:
        raise KeyError(f"{name!r} is not a candidate variable")
    return name


class StoreReader(RowReader):
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
        self.n_updates = int(self.ledger.get("n_updates", 0))
        self.stages = [str(s) for s in plain(self._group["stage"][...])]
        self._arrays: dict = {}

    @property
    def generation(self) -> int:
        return int(self.ledger.get("generation", 0))

    @property
    def finalized(self) -> bool:
        return bool(self.ledger.get("finalized", False))

    def stage_rows(self, stage: str) -> np.ndarray | None:
        """Rows a later stage committed results for, sorted; None if the store does not say."""
        if "n_updates" in self.ledger:
            rows, stage_idx = self.updates()
            return np.unique(rows[stage_idx == self.stages.index(stage)])
        legacy = self.ledger.get("stage_rows")  # stores from before the update log
        return None if legacy is None else expand_ranges(legacy.get(stage, []))

    def best_rows(self, top: int) -> np.ndarray | None:
        """The ``top`` most stable rows as the writer ranked them; None if it kept fewer."""
        best = self.ledger.get("best")
        if best is None or (top > KEPT and len(best) == KEPT):
            return None
        return np.array([int(b[0]) for b in best[:top]], dtype=np.int64)

    def stage_models(self) -> list[str]:
        return [str(s) for s in plain(self._group["stage_model"][...])]

    def counters(self) -> Counters:
        """The writer's running counters; counted from the rows for stores that have none."""
        c = Counters.from_json(self.ledger.get("counters"), self.stages)
        return c if c is not None else recount(self.stages, self.n_rows, self.read_range)


def open_dataset(
    path: str | Path,
    variables: list[str] | None = None,
    retries: int = 20,
    bookkeeping: bool = False,
):
    """The committed part of a store as an ``xarray.Dataset``, safe while a run writes it.

    Reads the ledger first, then each array up to the committed row count, so
    rows past the ledger — a chunk being written right now, or the half chunk a
    killed driver left behind — are never seen.  (Plain ``xr.open_zarr`` works
    on a finished store, but refuses one whose writer was killed mid-append
    until the run is resumed, because its arrays' lengths then disagree.)
    ``variables`` limits what is loaded; values are read into memory.

    The store's own bookkeeping — its update log (``update_row``,
    ``update_stage``: which rows a later stage rewrote, for incremental
    readers) — says nothing about candidates and is left out unless
    ``bookkeeping``; the stages' models are coordinates of ``stage``.
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
                "update": int(ledger.get("n_updates", 0)),
            }
            data = {}
            for name, arr in group.arrays():
                if variables is not None and name not in variables and name not in _STAGE_COORDS:
                    continue
                if name in UPDATE_VARS and not bookkeeping:
                    continue
                dims = tuple(arr.metadata.dimension_names or ())
                n = limits.get(dims[0]) if dims else None
                values = _words(name, plain(arr[:n] if n is not None else arr[...]))
                data[name] = xr.Variable(dims, values, attrs=dict(arr.attrs))
            coords = {k: data.pop(k) for k in _STAGE_COORDS if k in data}
            return xr.Dataset(data, coords=coords, attrs=attrs)
        except (ValueError, KeyError, FileNotFoundError) as err:  # caught mid-write; try again
            last = err
            time.sleep(0.1)
    raise RuntimeError(f"{path}: could not read a consistent snapshot: {last}")


_STAGE_COORDS = ("stage", "stage_model", "stage_model_version")

_LEGACY_STATUS = {"o": STATUS_OK, "f": STATUS_FAILED}


def _words(name: str, values: np.ndarray) -> np.ndarray:
    """``stage_status`` of the first stage as written before 2026-12-03: ``o``/``f``, read as words."""
    if name != "stage_status" or not values.size:
        return values
    first = values[..., 0]
    short = (first == "o") | (first == "f")
    if short.any():
        values = values.copy()
        values[..., 0][short] = [_LEGACY_STATUS[v] for v in first[short]]
    return values


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
