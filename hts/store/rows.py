"""What one write carries, and how it becomes the store's columns.

:class:`Row` is a new candidate's everything (the prefilter's chunk), and
:class:`StageUpdate` a later stage's result for a row already stored.  The
functions here turn a batch of either into numpy columns shaped like the
schema (:mod:`hts.store.schema`) — the per-candidate variables, the ragged
atom arrays, the per-stage variables — so the writer
(:mod:`hts.store.writer`) only resizes arrays, writes columns and commits.
Kept apart from the writer because they are pure: no zarr, no ledger, and
testable on their own.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hts.store.schema import CANDIDATE_VARS

__all__ = [
    "Row",
    "StageUpdate",
    "append_columns",
    "atom_columns",
    "stage_columns",
    "write_structures",
]


@dataclass(slots=True)
class Row:
    """Everything the store keeps about one candidate.

    ``stage`` maps each stage that produced values for the row to them; those
    stages' ``stage_status`` is set to ``status``.
    """

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
    audit: bool = False


@dataclass(slots=True)
class StageUpdate:
    """A later stage's result for one existing row (``status`` also goes to its ``stage_status``)."""

    row: int
    values: dict[str, float | bool | int]
    status: str
    reason: str
    stage_reached: str
    positions: np.ndarray | None = None
    cell: np.ndarray | None = None
    dft_dir: str | None = None
    audit_missed: bool | None = None  # an audited row: whether the teacher keeps it


def append_columns(rows: Sequence[Row], stages: list[str], a0: int) -> dict[str, np.ndarray]:
    """One chunk's rows as columns of the candidate variables."""
    m = len(rows)
    counts = np.array([len(r.numbers) for r in rows], dtype=np.int64)
    starts = a0 + np.concatenate([[0], np.cumsum(counts)[:-1]]) if m else np.zeros(0, np.int64)
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
        "audit": np.array([r.audit for r in rows], dtype=bool),
        "audit_missed": np.zeros(m, dtype=bool),
        "committed_at": np.full(m, time.time()),
        "cell": np.array([r.cell for r in rows], dtype=np.float64).reshape(m, 3, 3),
    }
    for name, (dims, dtype, fill, _) in CANDIDATE_VARS.items():
        if dims != ("stage",):
            continue
        # object for strings: np.full(…, "", dtype=str) is one character wide and cut "ok" to "o"
        col = np.full((m, len(stages)), fill, dtype=object if dtype is str else dtype)
        for i, r in enumerate(rows):
            for s, values in r.stage.items():
                if name == "stage_status":
                    col[i, stages.index(s)] = r.status
                elif name in values:
                    col[i, stages.index(s)] = values[name]
        cols[name] = col
    return cols


def atom_columns(rows: Sequence[Row]) -> dict[str, np.ndarray]:
    """One chunk's atoms, concatenated in row order (the ragged layout)."""
    if not sum(len(r.numbers) for r in rows):
        return {"species": np.zeros(0, np.int16), "positions": np.zeros((0, 3))}
    return {
        "species": np.concatenate([r.numbers for r in rows]).astype(np.int16),
        "positions": np.concatenate([np.asarray(r.positions).reshape(-1, 3) for r in rows]),
    }


def stage_columns(ups: Sequence[StageUpdate]) -> dict[str, np.ndarray]:
    """A later stage's values for its rows, one column per stage variable any of them set."""
    cols = {"stage_status": np.array([u.status for u in ups], dtype=object)}
    for name, (dims, dtype, fill, _) in CANDIDATE_VARS.items():
        if dims == ("stage",) and name != "stage_status" and any(name in u.values for u in ups):
            cols[name] = np.array([u.values.get(name, fill) for u in ups], dtype=dtype)
    return cols


def write_structures(arrays: dict, stage: str, rows: np.ndarray, ups: list[StageUpdate]) -> None:
    """A later stage's relaxed structures, in place (same atoms: the ragged layout holds)."""
    with_structure = [(r, u) for r, u in zip(rows, ups, strict=True) if u.positions is not None]
    if not with_structure:
        return
    idx = np.array([r for r, _ in with_structure])
    arrays["cell"].oindex[idx] = np.array([u.cell for _, u in with_structure])
    starts = arrays["atom_start"].oindex[idx]
    counts = arrays["n_atoms"].oindex[idx]
    for (_, u), a0, n in zip(with_structure, starts, counts, strict=True):
        if len(u.positions) != n:
            raise ValueError(f"{stage}: structure has {len(u.positions)} atoms, row has {n}")
        arrays["positions"][int(a0) : int(a0) + int(n)] = u.positions
