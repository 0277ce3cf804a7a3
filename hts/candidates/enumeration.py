"""Orderings of a parent lattice: derivative superstructures, enumerated by icet.

icet's ``enumerate_structures`` walks cell sizes, then the supercells' Smith
normal forms (SNF), then each SNF's Hermite normal forms (HNF, one per
supercell shape), and for each HNF yields the decorations not equivalent
under the parent's symmetry and the supercell's translations.  This module
cuts that same walk into independent pieces, using icet's own functions for
every step, so that workers can each generate a piece and any candidate can
be reached without generating those before it:

- a *stratum* is one (cell size, SNF, HNF); its raw indices address icet's
  list of the SNF's translation-distinct labelings (computed once per process
  and SNF, a few seconds for 10⁵ labelings);
- raw index ``i`` is a candidate iff no rotation-translation of labeling ``i``
  (icet's permutations for that HNF) is an earlier labeling of the list.  That
  is exactly the labeling icet's own pass yields, in the same order (the first
  of each class), but it is decided for each index alone; a test checks the
  two agree structure for structure and count for count.

A :class:`Unit` is a slice of one stratum's raw indices: what the driver hands
to a worker (:func:`hts.candidates.build_unit`).  Ids come from the decoration itself (parent,
supercell HNF and labeling): distinct decorations always get distinct ids, which
a structural fingerprint cannot promise for orderings at ideal positions
(homometric structures share every pair distance; 457 of fcc's 10,850 binary
orderings up to 12 atoms collide in :func:`~hts.candidates.record.candidate_id`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from hts.candidates.lattices import Parent, named_parent, parent_from_cif
from hts.candidates.record import Candidate, Unit, chemsys_of, formula_of, pack_units

__all__ = ["EnumerationSpace", "Ordering", "Unit"]


@dataclass(frozen=True, slots=True)
class Ordering:
    """One raw index of one stratum: a candidate before its structure is built."""

    stratum: int
    index: int


class _Walk:
    """icet's enumeration state for one space: symmetry, HNFs and SNFs, labelings per SNF."""

    def __init__(self, parent: Parent, species: list[list[str]], sizes: range, conc) -> None:
        from ase import Atoms
        from icet.tools.structure_enumeration import _get_symmetry_operations
        from icet.tools.structure_enumeration_support.labeling_generation import (
            LabelingGenerator,
        )
        from icet.tools.structure_enumeration_support.normal_form_matrices import (
            get_unique_snfs,
            yield_reduced_hnfs,
        )

        self.parent = parent
        self.nsites = parent.n_sites
        # sites allowed the same species are alike to the symmetry search; others are not
        kinds = {tuple(s): 1 + k for k, s in enumerate(dict.fromkeys(map(tuple, species)))}
        numbers = [kinds[tuple(s)] for s in species]
        self.atoms = Atoms(
            numbers=numbers, scaled_positions=parent.frac, cell=parent.cell, pbc=True
        )
        self.elements: list[str] = list(dict.fromkeys(e for s in species for e in s))
        allowed = [tuple(self.elements.index(e) for e in s) for s in species]
        concentrations = {self.elements.index(e): tuple(r) for e, r in conc.items()} or None
        self.generator = LabelingGenerator(allowed, concentrations)
        symmetries = _get_symmetry_operations(self.atoms, symprec=1e-5, position_tolerance=1e-5)
        self.strata: list[tuple[int, int, object, object]] = []  # (size, snf index, snf, hnf)
        self.snfs: list[object] = []
        for n in sizes:
            hnfs = list(yield_reduced_hnfs(n, symmetries, self.atoms.pbc))
            for snf in get_unique_snfs(hnfs):
                self.snfs.append(snf)
                for hnf in snf.hnfs:
                    self.strata.append((n, len(self.snfs) - 1, snf, hnf))
        self._labelings: dict[int, tuple[list[tuple], dict[tuple, int]]] = {}
        self._cells: dict[int, np.ndarray] = {}

    def labelings(self, snf_index: int) -> tuple[list[tuple], dict[tuple, int]]:
        """icet's translation-distinct labelings of one SNF, and each one's position."""
        if snf_index not in self._labelings:
            from icet.tools.structure_enumeration import _get_all_labelings

            labs = _get_all_labelings(self.snfs[snf_index], self.generator, self.nsites)
            self._labelings[snf_index] = (labs, {lab: i for i, lab in enumerate(labs)})
        return self._labelings[snf_index]

    def accepted(self, stratum: int, i: int) -> bool:
        """True iff labeling ``i`` is the first of its class under this HNF's rotations."""
        from icet.tools.structure_enumeration import _permute_labeling, _translate_labelings

        _, snf_index, snf, hnf = self.strata[stratum]
        labs, where = self.labelings(snf_index)
        lab = labs[i]
        for transformation in hnf.transformations:
            rotated = _permute_labeling(lab, snf, transformation, self.nsites)
            if rotated == lab:
                continue
            for image in _translate_labelings(rotated, snf, self.nsites, include_self=True):
                j = where.get(image)
                if j is not None and j < i:
                    return False
        return True

    def cell(self, stratum: int) -> np.ndarray:
        """The supercell, Niggli-reduced as icet reduces it."""
        if stratum not in self._cells:
            from icet.tools.geometry import call_spglib
            from spglib import niggli_reduce

            hnf = self.strata[stratum][3]
            cell = np.dot(hnf.H.T, self.atoms.cell)
            with contextlib.suppress(ValueError):  # icet keeps the unreduced cell too
                cell = call_spglib(niggli_reduce, cell)
            self._cells[stratum] = np.asarray(cell)
        return self._cells[stratum]


def _reduced(counts) -> tuple:
    g = math.gcd(*counts.values())
    return tuple(sorted((k, v // g) for k, v in counts.items()))


class EnumerationSpace:
    """The candidates of a campaign's ``candidates: {kind: enumeration}`` section.

    Deterministic (icet is pinned) and addressable: :meth:`strata` and
    :meth:`assignment_at` give the sampling interface of the substitution space,
    :meth:`units` cuts the space into worker tasks of about ``chunk_size``
    candidates, and iterating walks everything in icet's order.
    """

    def __init__(self, spec, base_dir: str = ".") -> None:
        self.spec = spec
        self.base_dir = base_dir

    @functools.cached_property
    def parent(self) -> Parent:
        from pathlib import Path

        if self.spec.lattice.lower().endswith(".cif"):
            p = Path(self.spec.lattice).expanduser()
            return parent_from_cif(p if p.is_absolute() else Path(self.base_dir) / p)
        return named_parent(self.spec.lattice)

    @functools.cached_property
    def walk(self) -> _Walk:
        n = self.parent.n_sites
        if len(self.spec.species) != n:
            from hts.candidates.lattices import ParentError

            raise ParentError(
                f"candidates.species: the parent {self.parent.name} has {n} sites per primitive "
                f"cell, species lists {len(self.spec.species)}"
            )
        lo = max(1, math.ceil(self.spec.min_atoms / n))
        return _Walk(
            self.parent,
            self.spec.species,
            range(lo, self.spec.max_atoms // n + 1),
            self.spec.concentrations,
        )

    @functools.cached_property
    def key(self) -> str:
        """What the ids hash besides the decoration: the parent and the allowed species."""
        p = self.parent
        return json.dumps(
            [np.round(p.cell, 6).tolist(), np.round(p.frac, 6).tolist(), self.spec.species]
        )

    # -- the sampling interface ------------------------------------------------------

    def strata(self) -> list[int]:
        """Raw indices per stratum: the length of its SNF's labeling list."""
        w = self.walk
        return [len(w.labelings(snf_index)[0]) for _, snf_index, _, _ in w.strata]

    def upper_bound(self) -> int:
        """A cheap estimate of the candidates (progress, unit sizes), without listing labelings.

        The name is the sources' shared interface; here it is an estimate, not a bound.
        """
        return sum(self._estimate(k) for k in range(len(self.walk.strata)))

    def _estimate(self, stratum: int) -> int:
        """Orderings of one stratum, estimated: raw decorations over translations (n) and over
        the HNF's rotations (about half of which fix a typical labeling's orbit).  Within 2 % of
        the count for fcc Cu-Ag-Au-Pd up to 10 atoms (1,167,289 vs 1,189,299)."""
        n, _, _, hnf = self.walk.strata[stratum]
        raw = math.prod(len(s) for s in self.spec.species) ** n / n
        return max(1, round(raw / max(1, len(hnf.transformations) // 2)))

    def assignment_at(self, stratum: int, index: int) -> Ordering | None:
        """Raw index ``index`` of a stratum, or None when it repeats an earlier ordering."""
        return Ordering(stratum, index) if self.walk.accepted(stratum, index) else None

    def assignments(self) -> Iterator[Ordering]:
        """Every ordering in icet's order; each SNF's labelings are listed only when reached
        (so the first ordering, which ``hts validate`` asks for, costs milliseconds)."""
        for k, (_, snf_index, _, _) in enumerate(self.walk.strata):
            for i in range(len(self.walk.labelings(snf_index)[0])):
                if self.walk.accepted(k, i):
                    yield Ordering(k, i)

    def system_assignments(self, elements) -> list[Ordering]:
        """Every ordering whose elements are exactly ``elements`` (walks the whole space)."""
        want = {self.walk.elements.index(e) for e in elements if e in self.walk.elements}
        if len(want) < len(set(elements)):
            return []
        return self._matching(lambda lab: set(lab) == want)

    def formula_assignments(self, formula: str) -> list[Ordering]:
        """Every ordering of one composition (the reduced formula :func:`formula_of` writes).

        Only labelings with the right counts are checked for repeats, so listing a
        composition costs one pass over the raw labelings (seconds at 10⁶), no builds.
        """
        import re
        from collections import Counter

        w = self.walk
        counts: Counter = Counter()
        for el, k in re.findall(r"([A-Z][a-z]?)(\d*)", formula):
            if el not in w.elements:
                return []
            counts[w.elements.index(el)] += int(k or 1)
        target = _reduced(counts)
        return self._matching(lambda lab: _reduced(Counter(lab)) == target)

    def _matching(self, test) -> list[Ordering]:
        out = []
        for k, (_, snf_index, _, _) in enumerate(self.walk.strata):
            labs, _ = self.walk.labelings(snf_index)
            out.extend(
                Ordering(k, i)
                for i, lab in enumerate(labs)
                if test(lab) and self.walk.accepted(k, i)
            )
        return out

    # -- building ------------------------------------------------------------------

    def candidate(self, o: Ordering) -> Candidate:
        """The structure, id and identity of one ordering, its cell from the radii rule."""
        from ase.data import atomic_numbers

        from hts.candidates.substitution import _radius

        w = self.walk
        n, snf_index, _, hnf = w.strata[o.stratum]
        labs, _ = w.labelings(snf_index)
        lab = labs[o.index]
        from icet.tools.structure_enumeration import _labeling_to_ase_atoms

        atoms = _labeling_to_ase_atoms(
            lab, hnf, w.atoms.cell, w.cell(o.stratum), w.parent.frac, w.elements, [True] * 3
        )
        symbols = atoms.get_chemical_symbols()
        # each primitive site's sublattice: atoms come in blocks of nsites, site order kept
        site = np.tile(np.arange(w.nsites), n)
        r = np.array([_radius(s) for s in symbols])
        radii = np.array([r[site == s].mean() for s in range(w.nsites)])
        scale = w.parent.scale(radii)
        numbers = np.array([atomic_numbers[s] for s in symbols], dtype=np.int64)
        cell = np.array(atoms.cell[:]) * scale
        positions = atoms.positions * scale
        decoration = "".join(symbols)
        h = hnf.H
        hnf_text = f"{h[0, 0]}{h[1, 0]}{h[1, 1]}{h[2, 0]}{h[2, 1]}{h[2, 2]}"
        ident = f"{self.key}|{h.tolist()}|{decoration}"
        nearest = min(d for _, _, d in w.parent.contacts) * scale
        return Candidate(
            id=hashlib.sha1(ident.encode()).hexdigest()[:16],
            source=f"enumeration:{w.parent.name}:{n}:{hnf_text}:{decoration}",
            prototype=w.parent.name,
            numbers=numbers,
            positions=positions,
            cell=cell,
            formula=formula_of(numbers),
            chemsys=chemsys_of(numbers),
            nearest=float(nearest),
        )

    def __iter__(self) -> Iterator[Candidate]:
        for o in self.assignments():
            yield self.candidate(o)

    # -- worker tasks --------------------------------------------------------------

    def units(self, chunk_size: int) -> list[Unit]:
        """The space cut into worker tasks of about ``chunk_size`` candidates, in icet's order.

        A stratum's parts are equal slices of its raw list; their number comes from
        an estimate of the stratum's size (so the driver lists no labelings).  The
        list depends only on the campaign, so a resumed run numbers them the same.
        """
        return pack_units([self._estimate(k) for k in range(len(self.walk.strata))], chunk_size)

    def unit_candidates(self, unit: Unit) -> list[Candidate]:
        out = []
        for stratum, part, parts in unit.pieces:
            raw = len(self.walk.labelings(self.walk.strata[stratum][1])[0])
            lo, hi = raw * part // parts, raw * (part + 1) // parts
            out.extend(
                self.candidate(Ordering(stratum, i))
                for i in range(lo, hi)
                if self.walk.accepted(stratum, i)
            )
        return out
