"""Energy above the convex hull, per chemical system, as results stream in.

The hull of a chemical system is built (pymatgen ``PhaseDiagram``) from the
elemental references, the user's reference entries, and every candidate
scored so far.  Only hull vertices can ever matter to a later candidate, so
each exact chemical system keeps just its currently stable entries: memory is
bounded by the number of stable phases, not by the number of candidates.
Pruning is exact: an entry above the hull of its own system stays above it
whatever is added later, because adding points only lowers the hull.

Entries are kept as compact ``(formula, energy per atom)`` pairs — a
``PDEntry`` costs ~20× the memory — and turned into pymatgen entries only
while a diagram is built.  At most ``max_cached`` diagrams are kept (the driver
also clears them after each chunk), so the cache never grows with the run.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable

__all__ = ["HullTracker", "MissingReferenceError"]

Item = tuple[str, float]  # (formula, energy per atom in eV)


class MissingReferenceError(ValueError):
    """No elemental reference energy for an element of a candidate."""


def _key(formula: str) -> frozenset[str]:
    from pymatgen.core import Composition

    return frozenset(el.symbol for el in Composition(formula).elements)


class HullTracker:
    max_cached = 512

    def __init__(self) -> None:
        self._stable: dict[frozenset[str], list[Item]] = defaultdict(list)
        self._diagrams: dict[frozenset[str], object] = {}

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
            key = _key(item[0])
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
                stable = {e.attribute for e in pd.stable_entries}
                self._stable[key] = [item for item in self._stable[key] if item in stable]
        for k in [k for k in self._diagrams if key <= k]:
            del self._diagrams[k]  # a cached diagram containing this system is stale
        if pd is not None and len(self._diagrams) < self.max_cached:
            # the diagram just built has the same hull as one of the survivors: reuse it
            self._diagrams[key] = pd

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

    def _diagram(self, key: frozenset[str], cache: bool = True):
        from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
        from pymatgen.core import Composition

        if cache and key in self._diagrams:
            return self._diagrams[key]
        missing = sorted(el for el in key if not self._stable.get(frozenset([el])))
        if missing:
            raise MissingReferenceError(f"no elemental reference energy for {', '.join(missing)}")
        entries = []
        for item in self._items_for(key):
            comp = Composition(item[0])
            entries.append(PDEntry(comp, item[1] * comp.num_atoms, attribute=item))
        pd = PhaseDiagram(entries)
        if cache:
            if len(self._diagrams) >= self.max_cached:
                self._diagrams.clear()  # a diagram is ~10 kB: never let the cache grow with the run
            self._diagrams[key] = pd
        return pd

    def e_above_hull(self, formula: str, energy_per_atom: float) -> float:
        """Distance (eV/atom) above the current hull; negative if below it."""
        from pymatgen.analysis.phase_diagram import PDEntry
        from pymatgen.core import Composition

        comp = Composition(formula)
        pd = self._diagram(frozenset(el.symbol for el in comp.elements))
        entry = PDEntry(comp, energy_per_atom * comp.num_atoms)
        _, e = pd.get_decomp_and_e_above_hull(entry, allow_negative=True, check_stable=False)
        return float(e)

    def formation_energy(self, formula: str, energy_per_atom: float) -> float:
        """Energy per atom relative to the elemental references (eV/atom)."""
        from pymatgen.core import Composition

        total = 0.0
        for el, frac in Composition(formula).fractional_composition.items():
            refs = self._stable.get(frozenset([el.symbol]))
            if not refs:
                raise MissingReferenceError(f"no elemental reference energy for {el.symbol}")
            total += frac * refs[0][1]
        return energy_per_atom - total

    def stable_count(self) -> int:
        return sum(len(v) for v in self._stable.values())

    def clear_cache(self) -> None:
        self._diagrams.clear()
