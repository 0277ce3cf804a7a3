"""Is a store whole?  Every committed chunk present and readable, the ragged index consistent.

Zarr reads a missing chunk file as the array's fill value, silently: a deleted
chunk of ``energy`` reads as NaN energies, which ``hts status`` would show as
failures of nothing.  :func:`verify` checks, for every variable up to the
ledger's committed lengths, that each chunk file exists (stores written with
every chunk on disk, ``layout >= 2``; older ones skip fill-valued chunks, so
only what is there can be checked) and decodes, and that the ragged atom
index adds up, and that every variable the store should hold is there
(:func:`lost_arrays`).  ``hts verify STORE`` prints the result; the writer runs it when
it reopens a store, so a damaged store is never resumed into.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hts.store.reader import StoreReader

__all__ = ["Damage", "lost_arrays", "verify"]


@dataclass(frozen=True)
class Damage:
    """One problem: which variable, which rows of its dimension, and what is wrong."""

    variable: str
    start: int
    stop: int
    what: str

    def __str__(self) -> str:
        rows = (
            f"row {self.start}"
            if self.stop - self.start == 1
            else f"rows {self.start}–{self.stop - 1}"
        )
        return f"{self.variable} {rows}: {self.what}"


def verify(path: str | Path, decode: bool = True) -> list[Damage]:
    """Every problem found in the committed part of the store (empty when it is whole).

    ``decode=False`` only looks for missing chunk files (a directory listing's
    cost, for ``hts status``); the full check reads every committed chunk once.
    """
    r = StoreReader(path)
    strict = int(r.attrs.get("layout", 1)) >= 2
    lengths = {"candidate": r.n_rows, "atom": r.n_atom_rows, "update": r.n_updates}
    damage: list[Damage] = []
    for name, arr, dims in r.variables():
        if not dims or dims[0] not in lengths:
            continue
        n, size = lengths[dims[0]], arr.chunks[0]
        if arr.shape[0] < n:
            damage.append(Damage(name, arr.shape[0], n, "array shorter than the ledger's count"))
            n = arr.shape[0]
        rest = "/".join("0" for _ in dims[1:])
        for i in range(math.ceil(n / size)):
            start, stop = i * size, min(n, (i + 1) * size)
            key = Path(r.path, name, "c", str(i), *([rest] if rest else []))
            if strict and not key.is_file():
                damage.append(Damage(name, start, stop, "chunk file missing"))
                continue
            if not decode:
                continue
            try:
                arr[start:stop]
            except Exception as err:  # any codec or I/O failure is this chunk's damage
                damage.append(Damage(name, start, stop, f"unreadable ({type(err).__name__})"))
    damage.extend(lost_arrays(path, r))
    if not damage and decode:
        damage.extend(_ragged(r))
    return damage


def lost_arrays(path: str | Path, r: StoreReader | None = None) -> list[Damage]:
    """Variables the store should hold but does not (its metadata, or its whole folder, gone).

    Such an array is not in the group's listing, so the chunk check above never
    sees it, and a reader would simply lack the variable.  Expected are the
    variables of the first schema (:data:`~hts.store.schema.FIRST_VARS`) and
    those the store lists as its own (root attribute ``variables``); a newer
    variable absent from a store that predates it is not damage (the writer
    adds it on reopening, after this check, so a loss is never hidden).
    """
    from hts.store.schema import ATOM_VARS, CANDIDATE_VARS, FIRST_VARS, UPDATE_VARS

    r = r or StoreReader(path)
    lengths = {"candidate": r.n_rows, "atom": r.n_atom_rows, "update": r.n_updates}
    present = {name for name, _, _ in r.variables()}
    expected = FIRST_VARS | set(r.attrs.get("variables", []))
    out = []
    for names, dim in ((CANDIDATE_VARS, "candidate"), (ATOM_VARS, "atom"), (UPDATE_VARS, "update")):
        for name in names:
            if name in present:
                continue
            if Path(r.path, name).is_dir():
                what = "array metadata missing (its chunks are there, zarr.json is not)"
            elif name in expected:
                what = "array missing (neither its metadata nor its chunks are there)"
            else:
                continue
            out.append(Damage(name, 0, max(lengths[dim], 1), what))
    return out


def _ragged(r: StoreReader) -> list[Damage]:
    """The atom index: each row's atoms follow the previous row's, and they add up."""
    if not r.n_rows:
        return []
    c = r.read_range(["atom_start", "n_atoms"])
    starts, counts = c["atom_start"].astype(np.int64), c["n_atoms"].astype(np.int64)
    expected = np.concatenate([[0], np.cumsum(counts)[:-1]])
    bad = np.flatnonzero(starts != expected)
    if len(bad):
        return [Damage("atom_start", int(bad[0]), int(bad[-1]) + 1, "does not follow n_atoms")]
    if int(counts.sum()) != r.n_atom_rows:
        return [
            Damage(
                "n_atoms",
                0,
                r.n_rows,
                f"adds up to {int(counts.sum())}, ledger says {r.n_atom_rows}",
            )
        ]
    return []
