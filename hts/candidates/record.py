"""The candidate record and its stable identity.

A :class:`Candidate` is plain arrays (cheap to pickle into a task) plus the
metadata the store keeps.  Its id is a hash of a canonical, isometry-invariant
description of the structure, so the same crystal reached twice (a symmetric
role swap, a translated or rotated copy of a file) is screened once.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Candidate",
    "Unit",
    "pack_units",
    "chemist_formula",
    "candidate_id",
    "chemsys_of",
    "formula_of",
    "source_id",
    "structure_problem",
]

# Volume per atom a crystal can have, Å^3: the densest solids sit near 5 (diamond 5.7), the
# loosest near 120 (Cs, noble-gas solids ~40-60).  Outside [1, 1000] the input is broken (a
# near-flat cell, a lattice constant in the wrong unit), and the neighbour search would run
# away on it: such a structure fails before any id, check or model sees it.
VOLUME_PER_ATOM = (1.0, 1000.0)


def structure_problem(numbers, positions, cell) -> str:
    """Why these arrays are not a structure any model should see ('' when they are)."""
    numbers, positions, cell = np.asarray(numbers), np.asarray(positions), np.asarray(cell)
    if not np.isfinite(cell).all():
        return "cell has a non-finite entry (inf or NaN lattice parameter)"
    if not np.isfinite(positions).all():
        bad = int(np.flatnonzero(~np.isfinite(positions).all(axis=1))[0])
        return f"site {bad} has a non-finite coordinate (NaN or inf)"
    n = max(len(numbers), 1)
    volume = abs(float(np.linalg.det(cell)))
    lo, hi = VOLUME_PER_ATOM
    if not lo <= volume / n <= hi:
        return (
            f"volume per atom {volume / n:.3g} Å^3 is outside [{lo:g}, {hi:g}] "
            "(a flat or exploded cell, or lattice parameters in the wrong unit)"
        )
    return ""


def source_id(source: str) -> str:
    """The id of an input that is not a usable structure: from where it came, not what it is.

    Such inputs never share an id with a real structure (a supercell over
    ``max_atoms`` would otherwise take its valid primitive cell's id and hide it).
    """
    return hashlib.sha1(source.encode()).hexdigest()[:16]


@dataclass(slots=True)
class Candidate:
    """One crystal structure to screen.

    ``error`` is set when the input could not be turned into a usable structure
    (unreadable file, overlapping atoms, ...): such a candidate still travels
    through the funnel so it is recorded as failed with its reason.
    """

    id: str
    source: str
    prototype: str
    numbers: np.ndarray  # (n,) atomic numbers
    positions: np.ndarray  # (n, 3) Cartesian, Å
    cell: np.ndarray  # (3, 3) rows are lattice vectors, Å
    formula: str = ""
    chemsys: str = ""
    error: str = ""
    # shortest interatomic distance, Å, when the source already knows it (NaN: not known)
    nearest: float = float("nan")

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    def to_atoms(self):
        from ase import Atoms

        return Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=True)

    @classmethod
    def failed(cls, id: str, source: str, reason: str, prototype: str = "") -> Candidate:
        return cls(
            id=id,
            source=source,
            prototype=prototype,
            numbers=np.zeros(0, dtype=np.int64),
            positions=np.zeros((0, 3)),
            cell=np.zeros((3, 3)),
            error=reason,
        )


@dataclass(frozen=True, slots=True)
class Unit:
    """One worker task of a source that generates on the workers (enumeration, random).

    What the driver hands a worker instead of candidates: a few integers.  Each
    piece ``(stratum, part, parts)`` is the ``part``-th of ``parts`` equal slices
    of one stratum's raw indices; small strata are packed together so a task
    holds about a chunk of candidates however finely the space is stratified.
    """

    pieces: tuple[tuple[int, int, int], ...]


def pack_units(estimates: list[float], chunk_size: int) -> list[Unit]:
    """Strata (with their estimated candidates) cut and packed into units of about ``chunk_size``.

    A large stratum is cut into equal slices; consecutive small ones share a
    unit.  The result depends only on the estimates, so a resumed run (same
    campaign) numbers the units the same.
    """
    units: list[Unit] = []
    pieces: list[tuple[int, int, int]] = []
    held = 0.0
    for k, est in enumerate(estimates):
        parts = max(1, math.ceil(est / chunk_size))
        for p in range(parts):
            pieces.append((k, p, parts))
            held += est / parts
            if held >= chunk_size * 0.75:
                units.append(Unit(tuple(pieces)))
                pieces, held = [], 0.0
    if pieces:
        units.append(Unit(tuple(pieces)))
    return units


def _symbols(numbers) -> list[str]:
    from ase.data import chemical_symbols

    return [chemical_symbols[int(z)] for z in numbers]


def formula_of(numbers) -> str:
    """Reduced formula, elements in alphabetical order (stable, unlike electronegativity order)."""
    counts = Counter(_symbols(numbers))
    if not counts:
        return ""
    g = math.gcd(*counts.values())
    return "".join(f"{el}{n // g if n // g > 1 else ''}" for el, n in sorted(counts.items()))


@functools.lru_cache(maxsize=1 << 16)
def chemist_formula(formula: str) -> str:
    """A formula as chemists write it (pymatgen's reduced formula: NaCl, SrTiO3, Li2O).

    The store keeps :func:`formula_of`'s alphabetical form (ClNa, O3SrTi) as a
    key: stable and sortable.  Everything a person reads shows this one.
    """
    if not formula:
        return ""
    from pymatgen.core import Composition

    try:
        return Composition(formula).reduced_formula
    except Exception:  # not a formula pymatgen reads: show it as stored
        return formula


def chemsys_of(numbers) -> str:
    """Chemical system in pymatgen's convention: sorted elements joined by '-'."""
    return "-".join(sorted(set(_symbols(numbers))))


def candidate_id(
    numbers: np.ndarray,
    positions: np.ndarray,
    cell: np.ndarray,
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> str:
    """A 16-hex-digit id from an isometry-invariant fingerprint of the structure.

    The fingerprint is the reduced formula, the volume per atom and, for every site, its species with the sorted species-resolved
    distances to all neighbours within twice the shortest bond of the structure
    (as a multiset, reduced by its common multiplicity).  It does not depend on
    the cell choice (a supercell included), the origin, a rotation, or the order
    of the sites.  Values are rounded (0.01 Å, 0.01 Å^3), so two inputs that differ
    by less may share an id; a structure that differs more never does.

    ``pairs`` — ``(i, j, d)`` of every pair within :func:`fingerprint_cutoff` — may
    be given by a source that already has them (a prototype scaled as a whole has
    its pairs scaled too), saving the neighbour search.
    """
    numbers = np.asarray(numbers)
    n = len(numbers)
    volume = abs(float(np.linalg.det(cell)))
    parts = [formula_of(numbers), f"{volume / max(n, 1):.2f}"]
    if n:
        if pairs is None:
            from hts.geometry import pairs_within

            i, j, d, _ = pairs_within(positions, cell, fingerprint_cutoff(cell, n))
        else:
            i, j, d = pairs
        dmin = d.min() if len(d) else 0.0
        keep = d <= 2.0 * dmin + 1e-6
        i, j, d = i[keep], j[keep], d[keep]
        envs: Counter = Counter()
        for site in range(n):
            m = i == site
            env = sorted(zip(numbers[j[m]].tolist(), np.round(d[m], 2).tolist(), strict=True))
            envs[(int(numbers[site]), tuple(env))] += 1
        # divide out the multiplicity so a supercell has the id of its primitive cell
        g = math.gcd(*envs.values())
        parts.append(repr(sorted((env, k // g) for env, k in envs.items())))
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def fingerprint_cutoff(cell: np.ndarray, n: int) -> float:
    """Twice the longest nearest-neighbour distance any sane packing of this density has."""
    volume = abs(float(np.linalg.det(cell)))
    return 2.5 * (volume / max(n, 1)) ** (1 / 3)
