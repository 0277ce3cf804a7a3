"""The single writer of a campaign's Zarr store, and its resume ledger.

One process (the driver) owns the store and appends one chunk of results at a
time: first the data (every array grown and written), then the ledger in the
root attributes (one atomic file replace in zarr's LocalStore).  The ledger's
row counts are the truth: on open, anything past them — a chunk half-written
when the driver was killed — is cut off, and that chunk, absent from the
ledger, is computed again.  So no candidate is lost or written twice.

A later stage's results for existing rows are written in place and logged:
each appends (row, stage) entries to the update log, whose committed length
is in the ledger like the row counts.  The ledger also carries the running
counters (:mod:`hts.store.counters`), adjusted by each commit, so readers
never count the whole store again, and a ``generation`` bumped whenever
committed values are rewritten (the final hull pass, a stage's result
replaced), which tells incremental readers to read everything again.  So a
commit, and a reader catching up with it, cost O(what changed), not O(store).
Callers go through :class:`Store`'s methods; the zarr group stays private.
What a write carries (:class:`Row`, :class:`StageUpdate`) and how it becomes
columns live in :mod:`hts.store.rows`; both are re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hts.store.best import BestRows
from hts.store.counters import STATE_VARS, Counters, RowState, recount
from hts.store.layout import add_missing, consolidate, create_store, drop_consolidated
from hts.store.lock import StoreError, StoreLock
from hts.store.reader import RowReader
from hts.store.rows import (
    Row,
    StageUpdate,
    append_columns,
    atom_columns,
    stage_columns,
    write_structures,
)
from hts.store.schema import ATOM_VARS, CANDIDATE_VARS, SCHEMA_VERSION, UPDATE_VARS
from hts.store.verify import lost_arrays, verify

__all__ = ["Row", "StageUpdate", "Store", "StoreDamagedError", "StoreMismatchError"]


_RANKED = ["e_above_hull", "formation_energy"]  # what the best-candidates order depends on


class StoreMismatchError(StoreError):
    """The store on disk belongs to another campaign (or schema)."""


class StoreDamagedError(StoreError):
    """Committed data of the store is missing or unreadable (:func:`hts.store.verify.verify`)."""

    def __init__(self, path: Path, damage: list) -> None:
        self.damage = damage
        listed = "; ".join(str(d) for d in damage[:5])
        more = f" (and {len(damage) - 5} more)" if len(damage) > 5 else ""
        super().__init__(
            f"{path}: damaged, so it is not resumed: {listed}{more}. `hts verify {path}` lists "
            "it all; restore the store from a copy, or start over in a new one"
        )


def _ranges(indices: set[int]) -> list[list[int]]:
    """Compress chunk indices to inclusive ranges for the ledger."""
    out: list[list[int]] = []
    for i in sorted(indices):
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


def _expand(ranges: list[list[int]]) -> set[int]:
    return {i for a, b in ranges for i in range(a, b + 1)}


def _reopen(path: Path, campaign_hash: str, also_accept: Sequence[str]):
    """The zarr group of an existing store, once it is known to hold this campaign's results."""
    import zarr

    try:
        drop_consolidated(path)
        group = zarr.open_group(path, mode="r+", zarr_format=3, use_consolidated=False)
    except ValueError as err:  # zarr.json truncated or not JSON: the ledger is gone
        raise StoreError(
            f"{path}/zarr.json is unreadable ({err}): the store's ledger is lost; restore the "
            "store from a copy, or start over in a new one"
        ) from None
    attrs = group.attrs
    if attrs.get("hts_schema") != SCHEMA_VERSION:
        raise StoreMismatchError(
            f"{path}: written by a different hts store schema ({attrs.get('hts_schema')})"
        )
    if attrs.get("campaign_hash") in also_accept:
        attrs["campaign_hash"] = campaign_hash
    if attrs.get("campaign_hash") != campaign_hash:
        raise StoreMismatchError(
            f"{path}: holds results of campaign {attrs.get('campaign_name')!r} with hash "
            f"{attrs.get('campaign_hash')}, but this campaign hashes to {campaign_hash}: its "
            f"settings changed. Use a new store path, or delete {path} to start over."
        )
    return group


def _create(path: Path, stages, campaign_name, campaign_hash, campaign_yaml):
    """The zarr group of a new store (created atomically, :func:`create_store`)."""
    attrs = {
        "hts_schema": SCHEMA_VERSION,
        "layout": 2,  # every chunk written, even fill-valued: a missing one is damage
        "campaign_name": campaign_name,
        "campaign_hash": campaign_hash,
        "campaign": campaign_yaml,
        "references": {},
    }
    try:
        return create_store(path, stages, attrs)
    except FileExistsError as err:
        raise StoreMismatchError(
            f"{err.filename}: {err.strerror}; refusing to overwrite it"
        ) from None


def _stage_done(store: Store, legacy: dict | None) -> dict[str, set[int]]:
    """Rows each later stage has committed, from the update log.

    A store from before the log kept them as ranges in the ledger: they are
    logged now, and committed.
    """
    if legacy and not store.n_updates:
        store.stage_done = {}
        for st, ranges in legacy.items():
            store._log(st, np.array(sorted(_expand(ranges)), dtype=np.int64))
        store._commit()
        return store.stage_done
    rows, stage_idx = store.updates()
    return {
        st: set(rows[stage_idx == k].tolist())
        for k, st in enumerate(store.stages)
        if (stage_idx == k).any()
    }


class Store(RowReader):
    """A campaign's results on disk, opened for writing by exactly one process."""

    def __init__(self, path: str | Path, group, stages: list[str]) -> None:
        self.path = Path(path)
        self._group = group
        self.stages = stages
        ledger = dict(group.attrs.get("ledger", {}))
        self.n_rows = int(ledger.get("n_rows", 0))
        self.n_atom_rows = int(ledger.get("n_atom_rows", 0))
        self.n_updates = int(ledger.get("n_updates", 0))
        self.done = _expand(ledger.get("chunks_done", []))
        self.finalized = bool(ledger.get("finalized", False))
        self.generation = int(ledger.get("generation", 0))
        self._rewritten = False  # rows rewritten in place since the last commit
        self._wall_before = float(ledger.get("wall_s", 0.0))
        self._opened = time.time()
        add_missing(group, stages, {"candidate": self.n_rows, "update": self.n_updates})
        self._arrays = {
            name: group[name].with_config({"write_empty_chunks": True})  # see hts.store.verify
            for name in (*CANDIDATE_VARS, *ATOM_VARS, *UPDATE_VARS)
        }
        self.counters = Counters.from_json(ledger.get("counters"), stages) or Counters.empty(stages)
        self.best = BestRows.from_json(ledger.get("best"))
        # rows whose later-stage results (rescore, …) are committed, per stage
        self.stage_done = _stage_done(self, ledger.get("stage_rows"))

    # -- opening ---------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        campaign_name: str,
        campaign_hash: str,
        campaign_yaml: str,
        stages: list[str],
        also_accept: Sequence[str] = (),
    ) -> Store:
        """Create the store, or reopen it for resuming after checking it is the same campaign.

        ``also_accept``: earlier hashes of the same campaign (what older hts
        versions hashed); a store carrying one is taken over and relabelled.

        Reopening counts the counters again from the arrays: a writer killed
        mid-update leaves values in committed rows that its ledger never
        counted (they are computed again, and must be counted from what is
        there).  The store is locked for this process until :meth:`close` or
        its exit (:class:`hts.store.lock.StoreLock`): a second writer is refused.
        """
        path = Path(path)
        lock = StoreLock(path).acquire()
        try:
            store = cls._open(
                path, campaign_name, campaign_hash, campaign_yaml, stages, also_accept
            )
        except BaseException:
            lock.release()
            raise
        store._lock = lock
        return store

    @classmethod
    def _open(cls, path, campaign_name, campaign_hash, campaign_yaml, stages, also_accept) -> Store:
        if path.exists() and (path / "zarr.json").exists():
            group = _reopen(path, campaign_hash, also_accept)
            if lost := lost_arrays(path):  # before opening re-adds missing variables
                raise StoreDamagedError(path, lost)
            store = cls(path, group, stages)
            store._truncate_to_ledger()
            if damage := verify(path):
                raise StoreDamagedError(path, damage)
            counted, best = store.recount(), store.best.to_json()
            store.best.rebuild(store.iter_blocks(_RANKED))
            if counted != store.counters or best != store.best.to_json():
                store.counters = counted
                store._commit()
            return store
        store = cls(
            path, _create(path, stages, campaign_name, campaign_hash, campaign_yaml), stages
        )
        store._commit()  # killed before this: an empty store with no ledger, which reads as empty
        return store

    def _truncate_to_ledger(self) -> None:
        """Cut off rows written after the last committed chunk (a killed driver's half chunk)."""
        for name, arr in self._arrays.items():
            n = self.n_atom_rows if name in ATOM_VARS else self.n_rows
            n = self.n_updates if name in UPDATE_VARS else n
            if arr.shape[0] != n:
                arr.resize((n, *arr.shape[1:]))

    def recount(self) -> Counters:
        """The counters counted again from the committed rows (O(store))."""
        return recount(self.stages, self.n_rows, self.read_range)

    # -- writing ---------------------------------------------------------------

    def set_stage_model(self, stage: str, name: str, version: str) -> None:
        k = self.stages.index(stage)
        self._group["stage_model"][k] = name
        self._group["stage_model_version"][k] = version

    @property
    def references(self) -> dict:
        return dict(self._group.attrs.get("references", {}))

    def set_references(self, refs: dict) -> None:
        self._group.attrs["references"] = refs

    def append(self, rows: Sequence[Row], chunk_index: int) -> None:
        """Write one chunk's rows, then commit it in the ledger (and count them)."""
        m = len(rows)
        n0, a0 = self.n_rows, self.n_atom_rows
        cols = append_columns(rows, self.stages, a0)
        n_atoms_new = int(cols["n_atoms"].sum())
        for name, arr in self._arrays.items():
            if name in ATOM_VARS or name in UPDATE_VARS:
                continue
            arr.resize((n0 + m, *arr.shape[1:]))
            if m:
                arr[n0 : n0 + m] = cols[name]
        for name, data in atom_columns(rows).items():
            arr = self._arrays[name]
            arr.resize((a0 + n_atoms_new, *arr.shape[1:]))
            if n_atoms_new:
                arr[a0 : a0 + n_atoms_new] = data
        state = RowState.of(self.stages, cols)
        self.counters.add_counts(state)
        self.best.merge(np.arange(n0, n0 + m), cols["e_above_hull"], cols["formation_energy"])
        for i, (st, text) in state.failures.items():
            self.counters.add_failure(n0 + i, st, text, str(cols["id"][i]))
        self.n_rows, self.n_atom_rows = n0 + m, a0 + n_atoms_new
        self.done.add(chunk_index)
        self.finalized = False
        self._commit()

    def _commit(self) -> None:
        if self.counters.stale:
            self.counters = self.recount()
        if self.best.stale:
            self.best.rebuild(self.iter_blocks(_RANKED))
        if self._rewritten:
            self.generation += 1
            self._rewritten = False
        self._group.attrs["ledger"] = {
            "n_rows": self.n_rows,
            "n_atom_rows": self.n_atom_rows,
            "n_updates": self.n_updates,
            "chunks_done": _ranges(self.done),
            "finalized": self.finalized,
            "generation": self.generation,
            "counters": self.counters.to_json(),
            "best": self.best.to_json(),
            "wall_s": round(self._wall_before + time.time() - self._opened, 3),
            "updated_at": time.time(),
        }

    def update(self, stage: str, updates: Sequence[StageUpdate]) -> None:
        """Write a later stage's results into rows that already exist, then commit them.

        The structure is replaced by the stage's relaxed one (same atoms, so it
        fits the ragged layout in place).  Rows written but not committed when
        the driver dies are simply computed again on resume.
        """
        if not updates:
            return
        k = self.stages.index(stage)
        rows = np.array([u.row for u in updates], dtype=np.int64)
        order = np.argsort(rows)
        rows = rows[order]
        ups = [updates[i] for i in order]
        if rows.max() >= self.n_rows:
            raise IndexError(f"row {int(rows.max())} is not committed (store has {self.n_rows})")
        old = self.read(STATE_VARS, rows)
        new = {name: v.copy() for name, v in old.items()}
        for name, col in stage_columns(ups).items():
            self._arrays[name].oindex[rows, k] = col
            if name in new:
                new[name][:, k] = col
        for name in ("status", "reason", "stage_reached"):
            col = np.array([getattr(u, name) for u in ups], dtype=object)
            self._arrays[name].oindex[rows] = col
            if name in new:
                new[name] = col
        audited = np.array([u.audit_missed is not None for u in ups])
        if audited.any():
            missed = np.array([bool(u.audit_missed) for u in ups])[audited]
            self._arrays["audit_missed"].oindex[rows[audited]] = missed
            new["audit_missed"][audited] = missed
        with_dir = np.array([u.dft_dir is not None for u in ups])
        if with_dir.any():
            dirs = np.array([u.dft_dir for u in ups], dtype=object)[with_dir]
            self._arrays["dft_dir"].oindex[rows[with_dir]] = dirs
        write_structures(self._arrays, stage, rows, ups)
        self.counters.move(self.stages, rows, old, new, lambda r: self.read(["id"], r)["id"])
        self.best.merge(rows, *self.read(_RANKED, rows).values())
        self._log(stage, rows)
        self.finalized = False
        self._commit()

    def _log(self, stage: str, rows: np.ndarray) -> None:
        """Append (row, stage) entries to the update log; committed with the ledger."""
        done = self.stage_done.setdefault(stage, set())
        if not done.isdisjoint(rows.tolist()):
            self._rewritten = True  # a stage's committed result replaced: readers read again
        done.update(rows.tolist())
        n0, m = self.n_updates, len(rows)
        for name, values in (("update_row", rows), ("update_stage", self.stages.index(stage))):
            arr = self._arrays[name]
            arr.resize((n0 + m,))
            arr[n0 : n0 + m] = values
        self.n_updates = n0 + m

    # -- the final pass --------------------------------------------------------

    def write_stage_column(self, name: str, stage: str, start: int, values: np.ndarray) -> None:
        """A stage column over a slice of rows (the final pass); committed by the next commit."""
        self.write_stage_rows(name, stage, np.arange(start, start + len(values)), values)

    def write_stage_rows(self, name: str, stage: str, rows: np.ndarray, values: np.ndarray) -> None:
        """A stage column at scattered rows (the few rows a late stage computed)."""
        k = self.stages.index(stage)
        rows = np.asarray(rows, dtype=np.int64)
        contiguous = len(rows) > 0 and bool((np.diff(rows) == 1).all())
        arr = self._arrays[name]
        self.best.stale |= name in _RANKED
        if name in STATE_VARS and len(rows):
            old = arr[int(rows[0]) : int(rows[-1]) + 1, k] if contiguous else arr.oindex[rows, k]
            self.counters.rewrite(name, k, old, values)
        if contiguous:
            arr[int(rows[0]) : int(rows[-1]) + 1, k] = values
        elif len(rows):
            arr.oindex[rows, k] = values
        self._rewritten = True

    def write_rows(self, name: str, rows: np.ndarray, values: np.ndarray) -> None:
        """A per-candidate column at some rows (the final pass's audit flags); committed next."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        if name in STATE_VARS:
            self.counters.stale = True  # rare (the final pass, a few rows): count again
        self._arrays[name].oindex[rows] = values
        self._rewritten = True

    def set_finalized(self, value: bool) -> None:
        self.finalized = value
        self._commit()

    def close(self) -> None:
        """Release the write lock (also released when the process exits, however it ends)."""
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            lock.release()

    def consolidate(self) -> None:
        """Consolidated metadata once the run is over, so ``xr.open_zarr`` opens it quietly and fast."""
        consolidate(self.path)
