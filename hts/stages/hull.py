"""Energy above the convex hull, per chemical system, as results stream in.

The hull of a chemical system is built from the elemental references, the
user's reference entries, and every candidate scored so far: the lower convex
hull of (composition, energy per atom) points, from qhull (``scipy.spatial``)
directly.  Its lower facets' planes are the hull's supporting planes, so the
hull energy at a composition is the largest of them there — one small matrix
product per query.  That is pymatgen's ``PhaseDiagram`` construction without
its per-entry objects (tests check the two agree to 1e-9 eV/atom); at a million
candidates in as many chemical systems, building a ``PhaseDiagram`` per system
was the driver's largest cost.  Only hull vertices can ever matter to a later candidate, so
each exact chemical system keeps just its currently stable entries: memory is
bounded by the number of stable phases, not by the number of candidates.
Pruning is exact: an entry above the hull of its own system stays above it
whatever is added later, because adding points only lowers the hull.

Entries are kept as compact ``(formula, energy per atom)`` pairs — a
``PDEntry`` costs ~20× the memory.  Built hulls are cached: at most
``max_cached``, the oldest evicted first (a chunk's systems, pruned when its
results arrive, are then still cached when its verdicts are asked for), and a
cached hull is dropped as soon as an entry of any of its subsystems arrives —
found through an index from each subsystem to the cached hulls containing it,
not a scan of the cache — so the cache never grows with the run and is never
stale.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, defaultdict
from collections.abc import Iterable
from functools import lru_cache

import numpy as np

__all__ = ["HullTracker", "MissingReferenceError", "elements_of"]

Item = tuple[str, float]  # (formula, energy per atom in eV)


class MissingReferenceError(ValueError):
    """No elemental reference energy for an element of a candidate."""


@lru_cache(maxsize=1 << 16)
def _fractions(formula: str) -> dict[str, float]:
    """Atomic fractions by element (pymatgen's formula parser, cached: formulas recur)."""
    from pymatgen.core import Composition

    return {el.symbol: float(x) for el, x in Composition(formula).fractional_composition.items()}


def elements_of(formula: str) -> frozenset[str]:
    """The elements of a formula, by pymatgen's parser (the one the hull uses)."""
    return frozenset(_fractions(formula))


@lru_cache(maxsize=1 << 14)
def _subsystems(key: frozenset[str]) -> tuple[frozenset[str], ...]:
    """Every non-empty subsystem of a chemical system, itself included."""
    els = sorted(key)
    return tuple(
        frozenset(sub) for r in range(1, len(els) + 1) for sub in itertools.combinations(els, r)
    )


class _Hull:
    """The lower convex hull of one chemical system, as its supporting planes."""

    def __init__(self, elements: frozenset[str], items: list[Item]) -> None:
        from scipy.spatial import ConvexHull, QhullError

        self.order = sorted(elements)
        energies = np.array([e for _, e in items], dtype=float)
        if len(self.order) == 1:
            self.planes = None
            self.minimum = float(energies.min())
            self.stable = {items[int(np.argmin(energies))]}
            return
        x = np.array([self.coords(f) for f, _ in items])
        points = np.column_stack([x, energies])
        # a point above the simplex's centre closes the hull from above (pymatgen's trick)
        # (far enough above, relative to the spread, that float rounding never flattens it)
        spread = float(energies.max() - energies.min())
        top = np.append(
            np.full(x.shape[1], 1.0 / len(self.order)), energies.max() + 1.0 + 10.0 * spread
        )
        try:
            hull = ConvexHull(np.vstack([points, top]))
        except QhullError:  # flat (all points in a plane): joggled, as pymatgen does
            hull = ConvexHull(np.vstack([points, top]), qhull_options="QJ")
        lower = hull.equations[:, -2] < -1e-14  # outward normal points down in energy
        self.planes = hull.equations[lower]
        self.minimum = float(energies.min())
        if not len(self.planes):  # degenerate (absurd energies from a broken model): no crash
            self.planes = None
        vertices = np.unique(hull.simplices[lower])
        self.stable = {items[i] for i in vertices if i < len(items)}

    def coords(self, formula: str) -> np.ndarray:
        fr = _fractions(formula)
        return np.array([fr.get(el, 0.0) for el in self.order[1:]])

    def energy(self, formula: str) -> float:
        """The hull's energy per atom at this composition."""
        if self.planes is None:
            return self.minimum
        n = self.planes
        return float(np.max(-(n[:, :-2] @ self.coords(formula) + n[:, -1]) / n[:, -2]))


class HullTracker:
    max_cached = 4096  # hulls (a few kB each): more than the systems of one large chunk

    def __init__(self) -> None:
        self._stable: dict[frozenset[str], list[Item]] = defaultdict(list)
        self._diagrams: OrderedDict[frozenset[str], _Hull] = OrderedDict()
        # system -> cached hulls of systems containing it (the hulls its entries make stale)
        self._containing: dict[frozenset[str], set[frozenset[str]]] = defaultdict(set)

    # -- the cache ---------------------------------------------------------------

    def _cache(self, key: frozenset[str], pd: _Hull) -> None:
        if key in self._diagrams:
            self._drop(key)
        while len(self._diagrams) >= self.max_cached:
            self._drop(next(iter(self._diagrams)))  # the oldest
        self._diagrams[key] = pd
        for sub in _subsystems(key):
            self._containing[sub].add(key)

    def _drop(self, key: frozenset[str]) -> None:
        del self._diagrams[key]
        for sub in _subsystems(key):
            holders = self._containing.get(sub)
            if holders is not None:
                holders.discard(key)
                if not holders:
                    del self._containing[sub]

    # -- building --------------------------------------------------------------

    def add_reference(self, element: str, energy_per_atom: float) -> None:
        self.add([(element, float(energy_per_atom))])

    def add_entries(self, entries: Iterable) -> None:
        """Add pymatgen entries (PDEntry / ComputedEntry, corrections included)."""
        self.add(
            (e.composition.formula.replace(" ", ""), float(e.energy_per_atom)) for e in entries
        )

    def add(self, items: Iterable[Item]) -> None:
        """Add ``(formula, energy per atom)`` pairs and prune each touched system."""
        touched: set[frozenset[str]] = set()
        for item in items:
            key = elements_of(item[0])
            self._stable[key].append(item)
            touched.add(key)
        for key in sorted(touched, key=len):
            self._prune(key)

    def _prune(self, key: frozenset[str]) -> None:
        pd = None
        if len(key) == 1:
            # keep only the lowest-energy polymorph of an element
            self._stable[key] = [min(self._stable[key], key=lambda item: item[1])]
        else:
            try:
                pd = self._diagram(key, cache=False)
            except MissingReferenceError:
                pd = None  # cannot judge yet; entries stay until the references exist
            else:
                # one copy of each stable (formula, energy): a repeated entry adds nothing
                self._stable[key] = [i for i in dict.fromkeys(self._stable[key]) if i in pd.stable]
        for k in list(self._containing.get(key, ())):
            self._drop(k)  # a cached diagram containing this system is stale
        if pd is not None:
            # the diagram just built has the same hull as one of the survivors: reuse it
            self._cache(key, pd)

    # -- querying --------------------------------------------------------------

    def _items_for(self, key: frozenset[str]) -> list[Item]:
        out: list[Item] = []
        if len(key) <= 6:
            for r in range(1, len(key) + 1):
                for sub in itertools.combinations(sorted(key), r):
                    out.extend(self._stable.get(frozenset(sub), ()))
        else:
            for k, items in self._stable.items():
                if k <= key:
                    out.extend(items)
        return out

    def _diagram(self, key: frozenset[str], cache: bool = True) -> _Hull:
        if cache and key in self._diagrams:
            return self._diagrams[key]
        missing = sorted(el for el in key if not self._stable.get(frozenset([el])))
        if missing:
            raise MissingReferenceError(f"no elemental reference energy for {', '.join(missing)}")
        pd = _Hull(key, self._items_for(key))
        if cache:
            self._cache(key, pd)
        return pd

    def e_above_hull(self, formula: str, energy_per_atom: float) -> float:
        """Distance (eV/atom) above the current hull; negative if below it."""
        return float(energy_per_atom) - self._diagram(elements_of(formula)).energy(formula)

    def formation_energy(self, formula: str, energy_per_atom: float) -> float:
        """Energy per atom relative to the elemental references (eV/atom)."""
        total = 0.0
        for el, frac in _fractions(formula).items():
            refs = self._stable.get(frozenset([el]))
            if not refs:
                raise MissingReferenceError(f"no elemental reference energy for {el}")
            total += frac * refs[0][1]
        return energy_per_atom - total

    def stable_count(self) -> int:
        return sum(len(v) for v in self._stable.values())
