"""Substitution candidates: prototypes × allowed elements per site role.

Enumeration is lazy and deterministic: prototypes in the campaign's order,
then the Cartesian product of each role's element list in the order given.
Nothing but the current assignment is held in memory, so 10⁶–10⁷ candidates
stream through in constant memory.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from hts.candidates.prototypes import PROTOTYPES, prototype_cell
from hts.candidates.record import Candidate, candidate_id, chemsys_of, formula_of

__all__ = ["Assignment", "SubstitutionGenerator"]


@dataclass(frozen=True, slots=True)
class Assignment:
    """One element per role of one prototype: a candidate before its structure is built."""

    prototype: str
    elements: tuple[tuple[str, str], ...]  # (role, element), roles sorted

    @property
    def label(self) -> str:
        return f"{self.prototype}:" + ",".join(f"{r}={e}" for r, e in self.elements)


@functools.cache
def _radius(symbol: str) -> float:
    """Empirical atomic radius (Slater), falling back to the covalent radius."""
    from ase.data import atomic_numbers, covalent_radii
    from pymatgen.core import Element

    r = Element(symbol).atomic_radius
    return float(r) if r is not None else float(covalent_radii[atomic_numbers[symbol]])


@functools.cache
def _oxidation_states(symbol: str, which: str = "common") -> tuple[int, ...]:
    from pymatgen.core import Element

    el = Element(symbol)
    if which == "icsd":
        states = tuple(el.icsd_oxidation_states or ()) or tuple(el.common_oxidation_states or ())
    else:
        states = tuple(el.common_oxidation_states or ())
    return tuple(sorted(set(states)))


@functools.cache
def _electronegativity(symbol: str) -> float:
    from pymatgen.core import Element

    x = Element(symbol).X
    return float(x) if x == x else 0.0


def charge_balanced(
    assignment: dict[str, str], multiplicity: dict[str, int], states: str = "common"
) -> bool:
    """True if oxidation states sum to zero with the anions the most electronegative.

    Each element takes one of its oxidation states — pymatgen's common ones, or
    (``states="icsd"``) every state seen in ICSD compounds (Ti³⁺ in LaTiO3, Cu⁺
    in Cu2O, Mn³⁺ in LiMnO2) — and every
    element in a negative state must be more electronegative than every element
    in a positive one: Si⁴⁻ beside Ge⁴⁺, or Br⁺ beside Sr²⁺, balances on paper
    and is no ionic compound.
    """
    roles = sorted(assignment)
    options = [_oxidation_states(assignment[r], states) for r in roles]
    if any(not o for o in options):
        return False
    chi = [_electronegativity(assignment[r]) for r in roles]
    for combo in itertools.product(*options):
        if sum(multiplicity[r] * q for r, q in zip(roles, combo, strict=True)) != 0:
            continue
        anions = [x for x, q in zip(chi, combo, strict=True) if q < 0]
        cations = [x for x, q in zip(chi, combo, strict=True) if q > 0]
        if not anions or not cations or min(anions) > max(cations):
            return True
    return False


def _build(a: Assignment) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    from ase.data import atomic_numbers

    proto = prototype_cell(a.prototype)
    table = dict(a.elements)
    scale = max((_radius(table[r1]) + _radius(table[r2])) / d for r1, r2, d in proto.contacts)
    cell = proto.cell * scale
    numbers = np.array([atomic_numbers[table[r]] for r in proto.roles], dtype=np.int64)
    return numbers, proto.frac @ cell, cell, scale


def build_structure(a: Assignment) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Numbers, Cartesian positions and cell, with the volume guessed from radii.

    The cell is scaled until no nearest-neighbour contact of the prototype is
    shorter than the sum of the two atoms' radii: a start close enough to the
    minimum that a FIRE relaxation converges in tens of steps.
    """
    return _build(a)[:3]


@functools.cache
def _unit_pairs(prototype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fingerprint's pairs of the unscaled prototype cell.

    Every candidate of a prototype is that cell scaled as a whole, and the
    fingerprint's cutoff scales with it, so the pairs are the same and their
    distances scale: one neighbour search per prototype instead of per candidate.
    """
    from hts.candidates.record import fingerprint_cutoff
    from hts.geometry import pairs_within

    proto = prototype_cell(prototype)
    cell = np.asarray(proto.cell, dtype=float)
    i, j, d, _ = pairs_within(proto.frac @ cell, cell, fingerprint_cutoff(cell, len(proto.roles)))
    return i, j, d


class SubstitutionGenerator:
    """Lazily enumerate substitution candidates of a campaign's ``candidates`` section.

    Besides walking the space in order, it is addressable: each prototype is a
    *stratum* whose raw assignments are the mixed-radix numbers over its role
    lists, so :meth:`assignment_at` decodes any index without enumerating the
    ones before it (uniform sampling of 10⁷-candidate spaces), and
    :meth:`system_assignments` lists every candidate of one chemical system
    directly (complete hulls for a sampled system).
    """

    def __init__(self, spec) -> None:
        self.spec = spec

    def _plans(self) -> Iterator[tuple[str, list[str], list[list[str]], bool]]:
        for choice in self.spec.prototypes:
            table = choice.elements or self.spec.elements
            roles = list(PROTOTYPES[choice.name].roles)
            balance = (
                self.spec.charge_balance if choice.charge_balance is None else choice.charge_balance
            )
            yield choice.name, roles, [table[r] for r in roles], balance

    def upper_bound(self) -> int:
        """Number of raw assignments before filters: a cheap total for progress displays."""
        return sum(self.strata())

    def strata(self) -> list[int]:
        """Raw assignments per prototype entry of the campaign (before the filters)."""
        return [math.prod(len(x) for x in lists) for _, _, lists, _ in self._plans()]

    def count(self, limit: int = 200_000) -> int | None:
        """Exact number of assignments after the filters, when the raw space is small enough to walk."""
        if self.upper_bound() > limit:
            return None
        return sum(1 for _ in self.assignments())

    def _accept(self, name: str, roles: list[str], combo: tuple, balance: bool) -> bool:
        if self.spec.distinct_elements and len(set(combo)) < len(combo):
            return False
        table = dict(zip(roles, combo, strict=True))
        return not balance or charge_balanced(
            table, prototype_cell(name).multiplicity, self.spec.oxidation_states
        )

    def assignments(self) -> Iterator[Assignment]:
        for name, roles, lists, balance in self._plans():
            for combo in itertools.product(*lists):
                if self._accept(name, roles, combo, balance):
                    yield Assignment(name, tuple(zip(roles, combo, strict=True)))

    def assignment_at(self, stratum: int, index: int) -> Assignment | None:
        """The ``index``-th raw assignment of a stratum (enumeration order), None if filtered out."""
        name, roles, lists, balance = list(self._plans())[stratum]
        combo = []
        for options in reversed(lists):  # the last role varies fastest, as in itertools.product
            index, k = divmod(index, len(options))
            combo.append(options[k])
        combo = tuple(reversed(combo))
        if not self._accept(name, roles, combo, balance):
            return None
        return Assignment(name, tuple(zip(roles, combo, strict=True)))

    def system_assignments(self, elements: frozenset[str] | set[str]) -> list[Assignment]:
        """Every assignment (of every prototype) whose elements are exactly ``elements``."""
        out = []
        for name, roles, lists, balance in self._plans():
            if len(roles) < len(elements):
                continue
            allowed = [[e for e in options if e in elements] for options in lists]
            for combo in itertools.product(*allowed):
                if set(combo) == set(elements) and self._accept(name, roles, combo, balance):
                    out.append(Assignment(name, tuple(zip(roles, combo, strict=True))))
        return out

    def candidate(self, a: Assignment) -> Candidate:
        """The candidate (structure, id, identity) of one assignment."""
        numbers, positions, cell, scale = _build(a)
        i, j, d = _unit_pairs(a.prototype)
        d = d * scale
        return Candidate(
            id=candidate_id(numbers, positions, cell, pairs=(i, j, d)),
            source=f"substitution:{a.label}",
            prototype=a.prototype,
            numbers=numbers,
            positions=positions,
            cell=cell,
            formula=formula_of(numbers),
            chemsys=chemsys_of(numbers),
            nearest=float(d.min()) if len(d) else float("nan"),
        )

    def __iter__(self) -> Iterator[Candidate]:
        for a in self.assignments():
            yield self.candidate(a)
