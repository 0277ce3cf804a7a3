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
def _oxidation_states(symbol: str) -> tuple[int, ...]:
    from pymatgen.core import Element

    el = Element(symbol)
    states = el.common_oxidation_states or ()
    return tuple(states)


def charge_balanced(assignment: dict[str, str], multiplicity: dict[str, int]) -> bool:
    """True if some choice of common oxidation states sums to zero over the formula."""
    roles = sorted(assignment)
    options = [_oxidation_states(assignment[r]) for r in roles]
    if any(not o for o in options):
        return False
    return any(
        sum(multiplicity[r] * q for r, q in zip(roles, combo, strict=True)) == 0
        for combo in itertools.product(*options)
    )


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
    """Lazily enumerate substitution candidates of a campaign's ``candidates`` section."""

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
        return sum(math.prod(len(x) for x in lists) for _, _, lists, _ in self._plans())

    def count(self, limit: int = 200_000) -> int | None:
        """Exact number of assignments after the filters, when the raw space is small enough to walk."""
        if self.upper_bound() > limit:
            return None
        return sum(1 for _ in self.assignments())

    def assignments(self) -> Iterator[Assignment]:
        for name, roles, lists, balance in self._plans():
            mult = prototype_cell(name).multiplicity
            for combo in itertools.product(*lists):
                if self.spec.distinct_elements and len(set(combo)) < len(combo):
                    continue
                table = dict(zip(roles, combo, strict=True))
                if balance and not charge_balanced(table, mult):
                    continue
                yield Assignment(name, tuple(zip(roles, combo, strict=True)))

    def __iter__(self) -> Iterator[Candidate]:
        for a in self.assignments():
            numbers, positions, cell, scale = _build(a)
            i, j, d = _unit_pairs(a.prototype)
            d = d * scale
            yield Candidate(
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
