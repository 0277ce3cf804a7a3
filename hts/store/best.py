"""The most stable candidates of a store, ranked once and kept up to date by the writer.

``hts status`` and the dashboard list the best candidates.  Ranking the whole
store for that costs O(store) per look (two float columns of every row, then a
sort); instead the writer keeps the top :data:`KEPT` rows in the ledger and
merges each commit's rows into them, so a reader gets the list in O(1).

The order (:func:`rank_keys`): the deepest stage a candidate reached first
(teacher values before student values), then ``e_above_hull`` to 0.1 meV, then
formation energy, then row.  Given any subset of rows in row order, it is the
order the whole store gives them, so the new top is the top of (old top ∪
changed rows) — exact as long as no row of the old top got worse, which
:meth:`BestRows.merge` checks; when one did, or when committed values are
rewritten in place (the final hull pass), the writer ranks the store again.
"""

from __future__ import annotations

import numpy as np

__all__ = ["KEPT", "BestRows", "rank", "rank_keys"]

KEPT = 100  # rows the ledger keeps; longer lists are ranked from the arrays


def rank_keys(ehull_all: np.ndarray, eform_all: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ranking key and the stage it is ranked at.

    The key is ``[stages below the deepest scored one, e_above_hull to 0.1 meV,
    formation energy]`` per row (smaller ranks first; NaN where no stage scored
    the row), compared left to right, then by row.
    """
    m, n_stages = ehull_all.shape
    depth = np.zeros(m, dtype=int)
    for k in range(n_stages):
        depth[np.isfinite(ehull_all[:, k])] = k
    idx = np.arange(m)
    ehull = ehull_all[idx, depth] if m else np.zeros(0)
    eform = eform_all[idx, depth] if m else ehull
    keys = np.stack([(n_stages - 1 - depth).astype(float), np.round(ehull, 4), eform], axis=1)
    keys[~np.isfinite(ehull)] = np.nan
    return keys.reshape(m, 3), depth


def rank(ehull_all: np.ndarray, eform_all: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the ``top`` most stable rows and the stage each is ranked at."""
    keys, depth = rank_keys(ehull_all, eform_all)
    order = _order(keys)[:top]
    return order, depth[order]


def _order(keys: np.ndarray) -> np.ndarray:
    finite = np.flatnonzero(np.isfinite(keys[:, 1]))
    return finite[np.lexsort(keys[finite].T[::-1])]


def _later(new: np.ndarray, old: np.ndarray) -> bool:
    """Whether key ``new`` ranks after key ``old`` (a NaN key, unscored, ranks last)."""
    if np.isnan(new[1]):
        return True
    for a, b in zip(new, old, strict=True):
        if a != b:
            return bool(a > b)
    return False


class BestRows:
    """The top rows of a store and their keys; ``stale`` when it must be ranked again."""

    def __init__(self, size: int = KEPT) -> None:
        self.size = size
        self.rows = np.zeros(0, dtype=np.int64)
        self.keys = np.zeros((0, 3))
        self.stale = False

    @classmethod
    def from_json(cls, data: list | None) -> BestRows:
        """The ledger's list (``[[row, key…], …]``); stale when the ledger has none."""
        best = cls()
        if data is None:
            best.stale = True
        elif data:
            table = np.array(data, dtype=float).reshape(-1, 4)
            best.rows, best.keys = table[:, 0].astype(np.int64), table[:, 1:]
        return best

    def to_json(self) -> list:
        return [[int(r), *map(float, k)] for r, k in zip(self.rows, self.keys, strict=True)]

    def merge(self, rows: np.ndarray, ehull: np.ndarray, eform: np.ndarray) -> None:
        """Rows whose values are new (appended or updated): ``ehull``/``eform`` are theirs, all stages.

        Marks the list stale when a row of it now ranks later than it did.
        """
        if not len(rows) or self.stale:
            return
        rows = np.asarray(rows, dtype=np.int64)
        keys, _ = rank_keys(ehull, eform)
        where = {int(r): j for j, r in enumerate(rows)}
        for r, old in zip(self.rows, self.keys, strict=True):
            j = where.get(int(r))
            if j is not None and _later(keys[j], old):
                self.stale = True
                return
        outside = ~np.isin(self.rows, rows)
        all_rows = np.concatenate([self.rows[outside], rows])
        all_keys = np.concatenate([self.keys[outside], keys])
        order = np.argsort(all_rows, kind="stable")  # row order breaks ties
        all_rows, all_keys = all_rows[order], all_keys[order]
        top = _order(all_keys)[: self.size]
        self.rows, self.keys = all_rows[top], all_keys[top]

    def rebuild(self, blocks) -> None:
        """Rank the whole store again from ``(start, {"e_above_hull", "formation_energy"})`` blocks."""
        self.rows, self.keys, self.stale = np.zeros(0, dtype=np.int64), np.zeros((0, 3)), False
        for start, cols in blocks:
            n = len(cols["e_above_hull"])
            self.merge(np.arange(start, start + n), cols["e_above_hull"], cols["formation_energy"])
