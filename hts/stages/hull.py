"""Energy above the convex hull, per chemical system, as results stream in.

The hull of a chemical system is built (pymatgen ``PhaseDiagram``) from the
elemental references, the user's reference entries, and every candidate
scored so far.  Only hull vertices can ever matter to a later candidate, so
each exact chemical system keeps just its currently stable entries: memory is
bounded by the number of stable phases, not by the number of candidates.
Pruning is exact: an entry above the hull of its own system stays above it
whatever is added later, because adding points only lowers the hull.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable

__all__ = ["HullTracker", "MissingReferenceError"]


class MissingReferenceError(ValueError):
    """No elemental reference energy for an element of a candidate."""


class HullTracker:
    def __init__(self) -> None:
        self._stable: dict[frozenset[str], list] = defaultdict(list)
        self._diagrams: dict[frozenset[str], object] = {}

    # -- building --------------------------------------------------------------

    def add_reference(self, element: str, energy_per_atom: float, name: str = "") -> None:
        from pymatgen.analysis.phase_diagram import PDEntry
        from pymatgen.core import Composition

        self.add_entries(
            [PDEntry(Composition(element), energy_per_atom, name=name or f"{element} (ref)")]
        )

    def add_entries(self, entries: Iterable) -> None:
        """Add pymatgen entries (PDEntry / ComputedEntry) and prune each touched system."""
        touched: set[frozenset[str]] = set()
        for e in entries:
            key = frozenset(el.symbol for el in e.composition.elements)
            self._stable[key].append(e)
            touched.add(key)
        for key in sorted(touched, key=len):
            self._prune(key)

    def _prune(self, key: frozenset[str]) -> None:
        if len(key) == 1:
            # keep only the lowest-energy polymorph of an element
            best = min(self._stable[key], key=lambda e: e.energy_per_atom)
            self._stable[key] = [best]
        else:
            try:
                pd = self._diagram(key, cache=False)
            except MissingReferenceError:
                return  # cannot judge yet; entries stay until the references exist
            stable = {id(e) for e in pd.stable_entries}
            self._stable[key] = [e for e in self._stable[key] if id(e) in stable]
        # any cached diagram containing this system is stale now
        for k in [k for k in self._diagrams if key <= k]:
            del self._diagrams[k]

    # -- querying --------------------------------------------------------------

    def _entries_for(self, key: frozenset[str]) -> list:
        out = []
        if len(key) <= 6:
            for r in range(1, len(key) + 1):
                for sub in itertools.combinations(sorted(key), r):
                    out.extend(self._stable.get(frozenset(sub), ()))
        else:
            for k, entries in self._stable.items():
                if k <= key:
                    out.extend(entries)
        return out

    def _diagram(self, key: frozenset[str], cache: bool = True):
        from pymatgen.analysis.phase_diagram import PhaseDiagram

        if cache and key in self._diagrams:
            return self._diagrams[key]
        missing = sorted(el for el in key if not self._stable.get(frozenset([el])))
        if missing:
            raise MissingReferenceError(f"no elemental reference energy for {', '.join(missing)}")
        pd = PhaseDiagram(self._entries_for(key))
        if cache:
            self._diagrams[key] = pd
        return pd

    def e_above_hull(self, formula: str, energy_per_atom: float) -> float:
        """Distance (eV/atom) above the current hull; negative if below it."""
        from pymatgen.analysis.phase_diagram import PDEntry
        from pymatgen.core import Composition

        comp = Composition(formula)
        key = frozenset(el.symbol for el in comp.elements)
        pd = self._diagram(key)
        entry = PDEntry(comp, energy_per_atom * comp.num_atoms)
        _, e = pd.get_decomp_and_e_above_hull(entry, allow_negative=True, check_stable=False)
        return float(e)

    def formation_energy(self, formula: str, energy_per_atom: float) -> float:
        """Energy per atom relative to the elemental references (eV/atom)."""
        from pymatgen.core import Composition

        comp = Composition(formula)
        total = 0.0
        for el, frac in comp.fractional_composition.items():
            refs = self._stable.get(frozenset([el.symbol]))
            if not refs:
                raise MissingReferenceError(f"no elemental reference energy for {el.symbol}")
            total += frac * refs[0].energy_per_atom
        return energy_per_atom - total

    def entry(self, formula: str, energy_per_atom: float, name: str = ""):
        from pymatgen.analysis.phase_diagram import PDEntry
        from pymatgen.core import Composition

        comp = Composition(formula)
        return PDEntry(comp, energy_per_atom * comp.num_atoms, name=name)

    def stable_count(self) -> int:
        return sum(len(v) for v in self._stable.values())

    def clear_cache(self) -> None:
        self._diagrams.clear()
