"""The single writer of a campaign's Zarr store, and its resume ledger.

One process (the driver) owns the store and appends one chunk of results at a
time: first the data (every array grown and written), then the ledger in the
root attributes (one atomic file replace in zarr's LocalStore).  The ledger's
row counts are the truth: on open, anything past them — a chunk half-written
when the driver was killed — is cut off, and that chunk, absent from the
ledger, is computed again.  So no candidate is lost or written twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hts.store.schema import ATOM_VARS, CANDIDATE_VARS, FIXED_SIZES, SCHEMA_VERSION

__all__ = ["Row", "StageUpdate", "Store", "StoreMismatchError"]

_CAND_CHUNK = 4096
_ATOM_CHUNK = 32768


class StoreMismatchError(RuntimeError):
    """The store on disk belongs to another campaign (or schema)."""


@dataclass(slots=True)
class Row:
    """Everything the store keeps about one candidate."""

    id: str
    formula: str
    chemsys: str
    prototype: str
    source: str
    chunk: int
    status: str
    reason: str
    stage_reached: str
    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    stage: dict[str, dict[str, float | bool | int]] = field(default_factory=dict)


@dataclass(slots=True)
class StageUpdate:
    """A later stage's result for one existing row."""

    row: int
    values: dict[str, float | bool | int]
    status: str
    reason: str
    stage_reached: str
    positions: np.ndarray | None = None
    cell: np.ndarray | None = None
    dft_dir: str | None = None


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


class Store:
    """A campaign's results on disk, opened for writing by exactly one process."""

    def __init__(self, path: str | Path, group, stages: list[str]) -> None:
        self.path = Path(path)
        self.group = group
        self.stages = stages
        ledger = dict(group.attrs.get("ledger", {}))
        self.n_rows = int(ledger.get("n_rows", 0))
        self.n_atom_rows = int(ledger.get("n_atom_rows", 0))
        self.done = _expand(ledger.get("chunks_done", []))
        # rows whose later-stage results (rescore, …) are committed, per stage
        self.stage_done = {k: _expand(v) for k, v in ledger.get("stage_rows", {}).items()}
        self.finalized = bool(ledger.get("finalized", False))
        self._wall_before = float(ledger.get("wall_s", 0.0))
        self._opened = time.time()
        for name, (dims, dtype, fill, doc) in CANDIDATE_VARS.items():
            if name not in group:  # a variable added since the store was written
                self._create(group, name, ("candidate", *dims), dtype, fill, doc, len(stages))
                group[name].resize((self.n_rows, *group[name].shape[1:]))
        self._arrays = {name: group[name] for name in (*CANDIDATE_VARS, *ATOM_VARS)}

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
    ) -> Store:
        """Create the store, or reopen it for resuming after checking it is the same campaign."""
        import zarr

        path = Path(path)
        if path.exists() and (path / "zarr.json").exists():
            cls._drop_consolidated(path)
            group = zarr.open_group(path, mode="r+", zarr_format=3, use_consolidated=False)
            attrs = group.attrs
            if attrs.get("hts_schema") != SCHEMA_VERSION:
                raise StoreMismatchError(
                    f"{path}: written by a different hts store schema ({attrs.get('hts_schema')})"
                )
            if attrs.get("campaign_hash") != campaign_hash:
                raise StoreMismatchError(
                    f"{path}: holds results of campaign {attrs.get('campaign_name')!r} with hash "
                    f"{attrs.get('campaign_hash')}, but this campaign hashes to {campaign_hash}: its settings "
                    f"changed. Use a new store path, or delete {path} to start over."
                )
            store = cls(path, group, stages)
            store._truncate_to_ledger()
            return store
        if path.exists() and any(path.iterdir()):
            raise StoreMismatchError(
                f"{path}: exists and is not an hts store; refusing to overwrite it"
            )
        group = zarr.open_group(path, mode="w", zarr_format=3)
        for name, (dims, dtype, fill, doc) in CANDIDATE_VARS.items():
            cls._create(group, name, ("candidate", *dims), dtype, fill, doc, len(stages))
        for name, (dims, dtype, fill, doc) in ATOM_VARS.items():
            cls._create(group, name, ("atom", *dims), dtype, fill, doc, len(stages))
        coord = group.create_array(
            "stage", shape=(len(stages),), dtype=str, dimension_names=["stage"], fill_value=""
        )
        coord[:] = np.array(stages, dtype=object)
        for name in ("stage_model", "stage_model_version"):
            a = group.create_array(
                name, shape=(len(stages),), dtype=str, dimension_names=["stage"], fill_value=""
            )
            a.attrs["description"] = "model (and version) that produced each stage's values"
        group.attrs.update(
            {
                "hts_schema": SCHEMA_VERSION,
                "campaign_name": campaign_name,
                "campaign_hash": campaign_hash,
                "campaign": campaign_yaml,
                "references": {},
                "ledger": {"n_rows": 0, "n_atom_rows": 0, "chunks_done": [], "finalized": False},
            }
        )
        return cls(path, group, stages)

    @staticmethod
    def _create(group, name, dims, dtype, fill, doc, n_stages):
        sizes = {**FIXED_SIZES, "stage": n_stages, "candidate": 0, "atom": 0}
        shape = tuple(sizes[d] for d in dims)
        chunk0 = _CAND_CHUNK if dims[0] == "candidate" else _ATOM_CHUNK
        chunks = (chunk0, *shape[1:])
        arr = group.create_array(
            name,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            fill_value=fill,
            dimension_names=list(dims),
        )
        arr.attrs["description"] = doc

    def _truncate_to_ledger(self) -> None:
        """Cut off rows written after the last committed chunk (a killed driver's half chunk)."""
        for name, arr in self._arrays.items():
            n = self.n_atom_rows if name in ATOM_VARS else self.n_rows
            if arr.shape[0] != n:
                arr.resize((n, *arr.shape[1:]))

    @staticmethod
    def _drop_consolidated(path: Path) -> None:
        """Consolidated metadata would go stale while rows are appended: remove it first."""
        import json

        meta_path = path / "zarr.json"
        meta = json.loads(meta_path.read_text())
        if meta.pop("consolidated_metadata", None) is not None:
            tmp = meta_path.with_name("zarr.json.tmp")
            tmp.write_text(json.dumps(meta))
            tmp.replace(meta_path)

    # -- writing ---------------------------------------------------------------

    def set_stage_model(self, stage: str, name: str, version: str) -> None:
        k = self.stages.index(stage)
        self.group["stage_model"][k] = name
        self.group["stage_model_version"][k] = version

    @property
    def references(self) -> dict:
        return dict(self.group.attrs.get("references", {}))

    def set_references(self, refs: dict) -> None:
        self.group.attrs["references"] = refs

    def append(self, rows: Sequence[Row], chunk_index: int) -> None:
        """Write one chunk's rows, then commit it in the ledger."""
        m = len(rows)
        n0, a0 = self.n_rows, self.n_atom_rows
        counts = np.array([len(r.numbers) for r in rows], dtype=np.int64)
        starts = a0 + np.concatenate([[0], np.cumsum(counts)[:-1]]) if m else np.zeros(0, np.int64)
        n_atoms_new = int(counts.sum())
        cols: dict[str, np.ndarray] = {
            "id": np.array([r.id for r in rows], dtype=object),
            "formula": np.array([r.formula for r in rows], dtype=object),
            "chemsys": np.array([r.chemsys for r in rows], dtype=object),
            "prototype": np.array([r.prototype for r in rows], dtype=object),
            "source": np.array([r.source for r in rows], dtype=object),
            "chunk": np.array([r.chunk for r in rows], dtype=np.int64),
            "n_atoms": counts.astype(np.int32),
            "atom_start": starts.astype(np.int64),
            "status": np.array([r.status for r in rows], dtype=object),
            "reason": np.array([r.reason for r in rows], dtype=object),
            "stage_reached": np.array([r.stage_reached for r in rows], dtype=object),
            "dft_dir": np.full(m, "", dtype=object),
            "committed_at": np.full(m, time.time()),
            "cell": np.array([r.cell for r in rows], dtype=np.float64).reshape(m, 3, 3),
        }
        for name, (dims, dtype, fill, _) in CANDIDATE_VARS.items():
            if dims != ("stage",):
                continue
            col = np.full((m, len(self.stages)), fill, dtype=dtype)
            for i, r in enumerate(rows):
                for s, values in r.stage.items():
                    if name in values:
                        col[i, self.stages.index(s)] = values[name]
            cols[name] = col
        for name, arr in self._arrays.items():
            if name in ATOM_VARS:
                continue
            arr.resize((n0 + m, *arr.shape[1:]))
            if m:
                arr[n0 : n0 + m] = cols[name]
        if n_atoms_new:
            species = np.concatenate([r.numbers for r in rows]).astype(np.int16)
            positions = np.concatenate([np.asarray(r.positions).reshape(-1, 3) for r in rows])
        else:
            species, positions = np.zeros(0, np.int16), np.zeros((0, 3))
        for name, data in (("species", species), ("positions", positions)):
            arr = self._arrays[name]
            arr.resize((a0 + n_atoms_new, *arr.shape[1:]))
            if n_atoms_new:
                arr[a0 : a0 + n_atoms_new] = data
        self.n_rows, self.n_atom_rows = n0 + m, a0 + n_atoms_new
        self.done.add(chunk_index)
        self.finalized = False
        self._commit()

    def _commit(self) -> None:
        self.group.attrs["ledger"] = {
            "n_rows": self.n_rows,
            "n_atom_rows": self.n_atom_rows,
            "chunks_done": _ranges(self.done),
            "stage_rows": {k: _ranges(v) for k, v in self.stage_done.items()},
            "finalized": self.finalized,
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
        for name, (dims, dtype, fill, _) in CANDIDATE_VARS.items():
            if dims != ("stage",) or not any(name in u.values for u in ups):
                continue
            col = np.array([u.values.get(name, fill) for u in ups], dtype=dtype)
            self._arrays[name].oindex[rows, k] = col
        for name in ("status", "reason", "stage_reached"):
            self._arrays[name].oindex[rows] = np.array(
                [getattr(u, name) for u in ups], dtype=object
            )
        with_dir = [(r, u.dft_dir) for r, u in zip(rows, ups, strict=True) if u.dft_dir is not None]
        if with_dir:
            self._arrays["dft_dir"].oindex[np.array([r for r, _ in with_dir])] = np.array(
                [d for _, d in with_dir], dtype=object
            )
        with_structure = [(r, u) for r, u in zip(rows, ups, strict=True) if u.positions is not None]
        if with_structure:
            idx = np.array([r for r, _ in with_structure])
            self._arrays["cell"].oindex[idx] = np.array([u.cell for _, u in with_structure])
            starts = self._arrays["atom_start"].oindex[idx]
            counts = self._arrays["n_atoms"].oindex[idx]
            pos = self._arrays["positions"]
            for (_, u), a0, n in zip(with_structure, starts, counts, strict=True):
                if len(u.positions) != n:
                    raise ValueError(
                        f"{stage}: structure has {len(u.positions)} atoms, row has {n}"
                    )
                pos[int(a0) : int(a0) + int(n)] = u.positions
        self.stage_done.setdefault(stage, set()).update(int(r) for r in rows)
        self.finalized = False
        self._commit()

    def structures(self, rows: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(numbers, positions, cell) of committed rows, read in as few slices as possible."""
        if not len(rows):
            return []
        idx = np.asarray(rows, dtype=np.int64)
        starts = self._arrays["atom_start"].oindex[idx]
        counts = self._arrays["n_atoms"].oindex[idx]
        cells = self._arrays["cell"].oindex[idx]
        lo, hi = int(starts.min()), int((starts + counts).max())
        species = self._arrays["species"][lo:hi]
        positions = self._arrays["positions"][lo:hi]
        out = []
        for a0, n, cell in zip(starts - lo, counts, cells, strict=True):
            sl = slice(int(a0), int(a0 + n))
            out.append((species[sl].astype(np.int64), positions[sl], cell))
        return out

    # -- the final pass --------------------------------------------------------

    def iter_blocks(
        self, names: Sequence[str], block: int = 16384
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Committed rows in blocks, for passes over the whole store in flat memory."""
        for start in range(0, self.n_rows, block):
            stop = min(start + block, self.n_rows)
            yield start, {name: self._arrays[name][start:stop] for name in names}

    def write_stage_column(self, name: str, stage: str, start: int, values: np.ndarray) -> None:
        k = self.stages.index(stage)
        self._arrays[name][start : start + len(values), k] = values

    def write_stage_rows(self, name: str, stage: str, rows: np.ndarray, values: np.ndarray) -> None:
        """A stage column at scattered rows (the few rows a late stage computed)."""
        self._arrays[name].oindex[np.asarray(rows, dtype=np.int64), self.stages.index(stage)] = (
            values
        )

    def set_finalized(self, value: bool) -> None:
        self.finalized = value
        self._commit()

    def consolidate(self) -> None:
        """Consolidated metadata once the run is over, so ``xr.open_zarr`` opens it quietly and fast."""
        import warnings

        import zarr

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "not part of the v3 spec yet": xarray reads it fine
            zarr.consolidate_metadata(str(self.path))
