"""Candidates handed over in Python: pymatgen ``Structure``s or ASE ``Atoms`` already in memory.

A notebook user who built or downloaded structures should not have to write
them to files first.  ``candidates: {kind: structures, structures: [...]}``
takes a list (or any iterable, read once) of pymatgen ``Structure``s, ASE
``Atoms``, or ``Structure.as_dict()`` mappings (what jobflow hands a job), or a
mapping ``{label: structure}``.  Each object becomes plain arrays once, when the
campaign is validated (:func:`given_structures`); its id is computed when the
stream is read, like every other source's.  Its ``source`` is its label — a
mapping's key, or ``label`` in ``Structure.properties`` / ``Atoms.info`` — or
else its position, ``structures[7]``.

An object of the wrong type (a string, a ``Molecule``) is the caller's mistake
and fails validation naming its position; a structure no model should see (a
disordered site, a flat cell, no periodicity) is a failed candidate with its
reason, like an unreadable file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from hts.candidates.record import (
    Candidate,
    candidate_id,
    chemsys_of,
    formula_of,
    source_id,
    structure_problem,
)

__all__ = ["Given", "GivenStructures", "digest", "given_structures"]


@dataclass(frozen=True, slots=True)
class Given:
    """One structure as validated: arrays (Cartesian Å, rows of ``cell`` are lattice vectors)."""

    source: str
    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    error: str = ""

    @classmethod
    def failed(cls, source: str, reason: str) -> Given:
        return cls(source, np.zeros(0, dtype=np.int64), np.zeros((0, 3)), np.zeros((3, 3)), reason)


def given_structures(items: object) -> tuple[Given, ...]:
    """Every object of ``items`` as a :class:`Given`; ``ValueError`` naming a wrong-typed one.

    ``items`` is a list, tuple, any other iterable (a generator is consumed
    here, once) or a mapping of label → structure.
    """
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise ValueError(
            "must be a list (or iterable) of pymatgen Structures or ASE Atoms, or a mapping "
            f"label → structure; got {type(items).__name__}"
        )
    pairs = items.items() if isinstance(items, Mapping) else ((None, x) for x in items)
    out = []
    for k, (label, obj) in enumerate(pairs):
        out.append(_given(obj, k, None if label is None else str(label)))
    return tuple(out)


def _given(obj: object, k: int, label: str | None) -> Given:
    """Object ``k`` of the list (``label``: its key in a mapping) as arrays."""
    where = f"item {label!r}" if label is not None else f"item {k}"
    if isinstance(obj, Mapping) and obj.get("@class") == "Structure":
        from pymatgen.core import Structure

        try:
            obj = Structure.from_dict(obj)
        except Exception as err:  # a malformed dict is this entry's problem, named
            raise ValueError(f"{where}: not a valid Structure.as_dict() ({err})") from None
    kind = type(obj).__name__
    if kind == "Atoms" and hasattr(obj, "get_positions"):
        return _from_atoms(obj, label or str(obj.info.get("label") or "") or f"structures[{k}]")
    if hasattr(obj, "lattice") and hasattr(obj, "is_ordered") and hasattr(obj, "sites"):
        props = getattr(obj, "properties", None) or {}
        return _from_pymatgen(obj, label or str(props.get("label") or "") or f"structures[{k}]")
    hint = " (files are read by candidates: {kind: files, path: ...})" if kind == "str" else ""
    raise ValueError(
        f"{where}: expected a pymatgen Structure, an ASE Atoms or a Structure.as_dict(), "
        f"got {kind}{hint}"
    )


def _from_pymatgen(s, source: str) -> Given:
    if not s.is_ordered:
        return Given.failed(
            source,
            "partial occupancy: hts screens ordered structures; order the sites first "
            "(e.g. pymatgen's OrderDisorderedStructureTransformation)",
        )
    numbers = np.array([site.specie.Z for site in s.sites], dtype=np.int64)
    if len(numbers) and not ((numbers >= 1) & (numbers <= 118)).all():  # DummySpecies: any Z
        return Given.failed(source, "a site holds a dummy species, not a chemical element")
    cell = np.array(s.lattice.matrix, dtype=float)
    positions = np.array(s.cart_coords, dtype=float).reshape(-1, 3)
    return _checked(source, numbers, positions, cell)


def _from_atoms(atoms, source: str) -> Given:
    numbers = np.asarray(atoms.numbers, dtype=np.int64)
    cell = np.array(atoms.cell[:], dtype=float)
    positions = np.array(atoms.positions, dtype=float)
    if not all(atoms.pbc) or (np.isfinite(cell).all() and abs(np.linalg.det(cell)) < 1e-6):
        return Given.failed(source, "not a periodic crystal (needs a 3-D cell and pbc=True)")
    if len(numbers) and numbers.min() < 1:
        return Given.failed(source, "a site holds atomic number 0 (X), not a chemical element")
    return _checked(source, numbers, positions, cell)


def _checked(source: str, numbers, positions, cell) -> Given:
    if problem := structure_problem(numbers, positions, cell):
        return Given.failed(source, problem)
    return Given(source, numbers, positions, cell)


def digest(given: Iterable[Given]) -> str:
    """What the campaign hash covers for these structures: each one's source, species and geometry.

    The same objects give the same digest in any session (so ``hts.run`` on the
    same list resumes its store); a moved atom or a new label gives another.
    """
    h = hashlib.sha256()
    for g in given:
        h.update(g.source.encode())
        h.update(g.error.encode())
        for a in (g.numbers, np.round(g.positions, 6), np.round(g.cell, 6)):
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


class GivenStructures:
    """The source over validated :class:`Given` structures (fresh candidates on every pass)."""

    def __init__(self, given: tuple[Given, ...]) -> None:
        self.given = given

    def upper_bound(self) -> int:
        return len(self.given)

    def __iter__(self) -> Iterator[Candidate]:
        for g in self.given:
            if g.error:
                yield Candidate.failed(source_id(g.source), g.source, g.error)
                continue
            yield Candidate(
                id=candidate_id(g.numbers, g.positions, g.cell),
                source=g.source,
                prototype="",
                numbers=g.numbers.copy(),
                positions=g.positions.copy(),
                cell=g.cell.copy(),
                formula=formula_of(g.numbers),
                chemsys=chemsys_of(g.numbers),
            )
