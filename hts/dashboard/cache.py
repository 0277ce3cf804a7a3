"""The dashboard's columns in memory, brought up to date by reading only what changed.

A dashboard follows a store that grows by one chunk per commit.  Summarising
the whole store again on every commit costs O(store) per refresh: at 10⁶ rows
that is seconds of decompressing strings.  :class:`RowCache` instead keeps the
few numeric columns the views need (``e_above_hull``, ``formation_energy``,
``kept``, ``time_s``, ``committed_at``: ~60 bytes a row per stage) and, on each
refresh, reads

* the rows appended since the last refresh (``n_rows`` grew), and
* the rows a later stage committed results for since then (the store's update
  log, read from where the last refresh stopped),

so a refresh costs O(new rows).  Funnel counts and failures come from the
writer's running counters in the ledger, the best candidates from the writer's
ranking there (:mod:`hts.store.best`); only rows new to that list are read.
When the writer rewrote committed values in place (the final hull pass, the
DFT phase, a stage's result replaced: the ledger's ``generation`` changes),
everything is read again once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hts.report import BEST_VARS, best_entries
from hts.store.best import rank, rank_keys
from hts.store.reader import StoreReader, read_ledger

__all__ = ["COLUMNS", "RowCache"]

COLUMNS = ("e_above_hull", "formation_energy", "kept", "time_s", "committed_at")
# best-list columns read from the store (the rest of BEST_VARS is in COLUMNS)
_READ_FOR_BEST = [name for name in BEST_VARS if name not in COLUMNS]


@dataclass
class _Seen:
    """What the cache knew at its last refresh."""

    n_rows: int = -1
    n_updates: int = 0
    generation: int = -1
    updated_at: float = -1.0


class RowCache:
    """In-memory columns of one store for the dashboard, refreshed incrementally.

    ``cols`` holds :data:`COLUMNS` for every committed row (views into buffers
    that grow by doubling, so appending a chunk copies nothing already held);
    ``time_totals`` the per-stage count and sum of ``time_s``, kept up to date
    with the rows; ``reader`` is the snapshot of the last refresh.  Not
    thread-safe by itself: the views call it under their lock.
    """

    def __init__(self, path: str | Path, top: int = 50) -> None:
        self.path = Path(path)
        self.top = top
        self.reader: StoreReader | None = None
        self.cols: dict[str, np.ndarray] = {}
        self.best_rows = np.zeros(0, dtype=np.int64)
        self.full_reads = 0  # times everything was read from disk (tests, the benchmark)
        self.logged = np.zeros(0, dtype=np.int64)  # update-log entries per stage index
        self.time_totals = np.zeros((0, 2))  # per stage: [rows with a time, their sum]
        self._buffers: dict[str, np.ndarray] = {}
        self._seen = _Seen()
        self._entries: dict[int, dict] = {}  # identity columns of a best row, until it changes

    # -- refreshing ----------------------------------------------------------------

    def refresh(self) -> bool:
        """Catch up with the store's last commit; False when nothing was committed since.

        An unchanged ledger costs one small file read.
        """
        ledger = read_ledger(self.path)
        seen = self._seen
        if (
            self.reader is not None
            and int(ledger.get("n_rows", -1)) == seen.n_rows
            and int(ledger.get("generation", 0)) == seen.generation
            and float(ledger.get("updated_at", 0.0)) == seen.updated_at
        ):
            return False
        r = StoreReader(self.path)
        if self.reader is None or r.generation != seen.generation or r.n_rows < seen.n_rows:
            self._read_all(r)
        else:
            self._read_changes(r)
        self.reader = r
        seen.n_rows, seen.n_updates, seen.generation = r.n_rows, r.n_updates, r.generation
        seen.updated_at = float(r.ledger.get("updated_at", 0.0))
        best = r.best_rows(self.top)
        if best is None:  # a store from before the writer ranked: rank the columns held
            best, _ = rank(self.cols["e_above_hull"], self.cols["formation_energy"], self.top)
        self.best_rows = best
        return True

    def _read_all(self, r: StoreReader) -> None:
        self.full_reads += 1
        cols = _complete(r.read_range(COLUMNS), r)
        self._buffers = {name: v[:0] for name, v in cols.items()}
        self.cols = dict(self._buffers)
        self._grow(cols, headroom=max(4096, r.n_rows // 4))  # room for the commits to come
        _, stage_idx = r.updates()
        self.logged = np.bincount(stage_idx, minlength=len(r.stages)).astype(np.int64)
        self.time_totals = _time_totals(self.cols["time_s"], len(r.stages))
        self._entries.clear()

    def _read_changes(self, r: StoreReader) -> None:
        n0 = self._seen.n_rows
        new = _complete(r.read_range(COLUMNS, n0, r.n_rows), r)
        self._grow(new)
        self.time_totals += _time_totals(new["time_s"], len(r.stages))
        logged, stage_idx = r.updates(self._seen.n_updates)
        self.logged += np.bincount(stage_idx, minlength=len(r.stages))
        updated_rows = np.unique(logged[logged < n0])
        if len(updated_rows):
            self.time_totals -= _time_totals(self.cols["time_s"][updated_rows], len(r.stages))
            for name, values in _complete(r.read(COLUMNS, updated_rows), r).items():
                self.cols[name][updated_rows] = values
            self.time_totals += _time_totals(self.cols["time_s"][updated_rows], len(r.stages))
            for row in updated_rows.tolist():
                self._entries.pop(row, None)

    def _grow(self, new: dict[str, np.ndarray], headroom: int = 0) -> None:
        """Append rows to the columns, doubling a buffer when it is full."""
        for name, values in new.items():
            n, m = len(self.cols[name]), len(values)
            buf = self._buffers[name]
            if n + m > len(buf):
                size = max(2 * len(buf), n + m + headroom, 1024)
                bigger = np.empty((size, *buf.shape[1:]), buf.dtype)
                bigger[:n] = buf[:n]
                self._buffers[name] = buf = bigger
            buf[n : n + m] = values
            self.cols[name] = buf[: n + m]

    def committed_since(self, t: float) -> int:
        """Rows committed after time ``t`` (rows are appended in commit order)."""
        times = self.cols["committed_at"]
        return int(len(times) - np.searchsorted(times, t, side="right"))

    # -- the best candidates -------------------------------------------------------

    def best(self) -> list[dict]:
        """The best-candidates table (as :func:`hts.report.best_entries`).

        Stage values come from memory; identity columns and energies are read
        for rows new to the list only.
        """
        assert self.reader is not None
        rows = self.best_rows
        missing = [int(r) for r in rows if int(r) not in self._entries]
        if missing:
            cols = self.reader.read(_READ_FOR_BEST, missing)
            for j, row in enumerate(missing):
                self._entries[row] = {name: v[j] for name, v in cols.items()}
        keep = set(rows.tolist())
        for row in [r for r in self._entries if r not in keep]:
            del self._entries[row]
        cols = {
            name: np.array([self._entries[int(r)][name] for r in rows], dtype=_dtype(name))
            for name in _READ_FOR_BEST
        }
        for name in BEST_VARS:
            if name not in cols:
                cols[name] = self.cols[name][rows]
        _, depth = rank_keys(cols["e_above_hull"], cols["formation_energy"])
        return best_entries(self.reader.stages, depth, cols)


def _time_totals(t: np.ndarray, n_stages: int) -> np.ndarray:
    """Per stage: how many rows have a time, and their sum."""
    t = np.asarray(t, dtype=np.float64).reshape(-1, n_stages)
    finite = np.isfinite(t)
    return np.stack([finite.sum(axis=0), np.where(finite, t, 0.0).sum(axis=0)], axis=1)


def _complete(cols: dict[str, np.ndarray], r: StoreReader) -> dict[str, np.ndarray]:
    """Columns a store written before them lacks (``committed_at``) as NaN."""
    m = len(next(iter(cols.values()))) if cols else 0
    if "committed_at" not in cols:
        cols["committed_at"] = np.full(m, np.nan)
    return cols


def _dtype(name: str):
    return object if name in ("id", "formula", "prototype", "source") else None
