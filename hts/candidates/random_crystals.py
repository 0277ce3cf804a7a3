"""Random symmetric crystals per composition: pyxtal's random search, cut into independent draws.

AIRSS-style structure search starts from random crystals that already carry a
space group's symmetry: the atoms sit on the group's Wyckoff positions, so a
relaxation keeps the symmetry and explores far fewer degrees of freedom than a
random P1 cell.  pyxtal builds such crystals; this module addresses them so
that any one can be built alone, on any worker, and always the same:

- a *stratum* is one (composition, formula units Z, space group), nested in
  that order; its ``per_group`` raw indices are the crystals drawn for it;
- draw ``i`` of a stratum is built from its own random stream,
  ``np.random.default_rng([seed, composition, Z, group, i])``: the same
  campaign seed and index give a bitwise-identical crystal, whatever else the
  run builds, in whichever order or process;
- a group whose Wyckoff positions cannot hold the composition at that Z (pyxtal's
  own ``check_compatible``) is an empty stratum: its draws are ``None``,
  :meth:`RandomSpace.skipped` lists it, and no task is spent on it.

**Formula units count the primitive cell.**  ``Z`` formula units of the
composition fill the primitive cell of the group's lattice, so a centred group
places ``Z`` times its centring multiplicity (A/B/C/I: 2, R in the hexagonal
setting: 3, F: 4) in the conventional cell pyxtal fills.  That is the cell the
candidate is screened in (it is reduced to its primitive cell), so ``Z`` is what
``limits.max_atoms`` sees, and every group is reachable at ``Z = 1`` when its
Wyckoff positions allow (counted per conventional cell, an F-centred group could
never hold fewer than four formula units).  A draw can come out *more*
symmetric than its group (several atoms on special positions related by a
translation the group lacks): its primitive cell then holds fewer formula units
than asked, as a real random search finds.

A crystal's id is its structural fingerprint (:func:`candidate_id`), so two
draws that give the same crystal (frequent at high symmetry and small Z, where
the Wyckoff choice fixes every position) are screened once.  A crystal pyxtal
fails to build is a failed candidate with the reason, never an exception.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from hts.candidates.record import (
    Candidate,
    Unit,
    candidate_id,
    chemsys_of,
    fingerprint_cutoff,
    formula_of,
    pack_units,
    source_id,
)

__all__ = ["Draw", "RandomSpace", "Unit"]

# Sites closer than this (Å) after mapping by a lattice translation are one site when the
# conventional cell is reduced to its primitive cell.  pyxtal places symmetry copies exactly
# (to float rounding), so the reduction needs no slack; pymatgen's default of 0.25 Å would
# merge near-coincident random atoms into one averaged site.
_PRIMITIVE_TOLERANCE = 1e-3

# pyxtal warns (``warnings.warn``) when it enlarges a volume guess; the module-wide warning
# filters are swapped only under this lock so two builder threads cannot restore each
# other's filters (``warnings.catch_warnings`` is not thread-safe before Python 3.14).
_QUIET_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class Draw:
    """One raw index of one stratum: a crystal before pyxtal builds it.

    ``elements`` pairs each element with itself, in the shape of a substitution
    assignment's (role, element) pairs, so code that reads a draw's chemical
    system (:func:`hts.candidates.sampling.systems`) reads it the same way.
    """

    comp: int  # index into the spec's compositions
    z: int  # formula units per primitive cell
    group: int  # space-group number
    index: int  # which of the stratum's per_group draws
    elements: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)


@functools.cache
def _group(number: int):
    """pyxtal's Group, built once per process (a few ms each, ~1 s for all 230)."""
    from pyxtal.symmetry import Group

    return Group(number)


@functools.cache
def _fits(number: int, ions: tuple[int, ...]) -> bool:
    """Whether the group's Wyckoff positions can hold these conventional-cell counts."""
    return bool(_group(number).check_compatible(list(ions))[0])


def _name(comp: dict[str, int]) -> str:
    """The composition as the campaign writes it (MgO, SiO2, Mg2O2): readable in sources."""
    return "".join(f"{el}{n if n > 1 else ''}" for el, n in comp.items())


@contextlib.contextmanager
def _quiet():
    import warnings

    with _QUIET_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class RandomSpace:
    """The candidates of a campaign's ``candidates: {kind: random}`` section.

    Addressable like the other generated spaces: :meth:`strata` and
    :meth:`assignment_at` give the sampling interface, :meth:`units` cuts the
    space into worker tasks of about ``chunk_size`` draws, and iterating builds
    every draw in stratum order.  Nothing is imported or built until asked:
    constructing one on the driver costs nothing, checking compatibility costs
    pyxtal's import and one Group per space group (about 1 s for all 230).
    """

    def __init__(self, spec, seed: int = 0) -> None:
        self.spec = spec
        self.seed = int(seed)

    # -- the strata ----------------------------------------------------------------

    @functools.cached_property
    def _cells(self) -> list[tuple[int, int, int]]:
        """(composition index, Z, group) of every stratum, in nesting order."""
        spec = self.spec
        return [
            (k, z, g)
            for k in range(len(spec.compositions))
            for z in spec.units
            for g in spec.groups
        ]

    @functools.cached_property
    def _species(self) -> list[tuple[list[str], list[int], tuple[tuple[str, str], ...]]]:
        """Per composition: elements sorted (generation does not depend on how the file
        orders them), their counts per formula unit, and the draw's element pairs."""
        out = []
        for comp in self.spec.compositions:
            els = sorted(comp)
            out.append((els, [comp[e] for e in els], tuple((e, e) for e in els)))
        return out

    def _ions(self, k: int, z: int, g: int) -> list[int]:
        """Atoms per element in the conventional cell pyxtal fills (Z counts the primitive)."""
        mult = _group(g).cellsize()
        return [n * z * mult for n in self._species[k][1]]

    def compatible(self, stratum: int) -> bool:
        """Whether the stratum's group can hold its composition at its Z (cached per process)."""
        k, z, g = self._cells[stratum]
        return _fits(g, tuple(self._ions(k, z, g)))

    @functools.cached_property
    def _ok(self) -> list[bool]:
        return [self.compatible(s) for s in range(len(self._cells))]

    def strata(self) -> list[int]:
        """Raw indices per stratum: ``per_group`` each (a skipped stratum's are all None)."""
        return [self.spec.per_group] * len(self._cells)

    def count(self) -> int:
        """Draws in the compatible strata: the crystals a run builds (before merging repeats)."""
        return sum(self._ok) * self.spec.per_group

    def upper_bound(self) -> int:
        """The same as :meth:`count`: exact, and what the driver sizes units by."""
        return self.count()

    def skipped(self) -> list[tuple[dict[str, int], int, int]]:
        """(composition, Z, group) of every stratum whose group cannot hold its composition.

        For the run's report: ``len(skipped())`` of ``len(strata())`` combinations
        are skipped, none of them costs a task.
        """
        return [
            (dict(self.spec.compositions[k]), z, g)
            for (k, z, g), ok in zip(self._cells, self._ok, strict=True)
            if not ok
        ]

    # -- the sampling interface ------------------------------------------------------

    def assignment_at(self, stratum: int, index: int) -> Draw | None:
        """Raw index ``index`` of a stratum, or None when its group cannot hold the composition."""
        if not 0 <= index < self.spec.per_group:
            raise IndexError(f"draw {index} of a stratum of {self.spec.per_group}")
        if not self.compatible(stratum):
            return None
        k, z, g = self._cells[stratum]
        return Draw(k, z, g, index, self._species[k][2])

    def assignments(self) -> Iterator[Draw]:
        for s in range(len(self._cells)):
            if self.compatible(s):
                k, z, g = self._cells[s]
                for i in range(self.spec.per_group):
                    yield Draw(k, z, g, i, self._species[k][2])

    def system_assignments(self, elements) -> list[Draw]:
        """Every draw whose composition has exactly these elements."""
        want = set(elements)
        return [d for d in self.assignments() if {e for e, _ in d.elements} == want]

    def formula_assignments(self, formula: str) -> list[Draw]:
        """Every draw of one composition, given as :func:`formula_of` writes it (MgO, O2Si).

        A draw's crystal always has its composition's formula (Z and the centring
        multiply every count alike), so this builds nothing.
        """
        want = [_reduced(comp) for comp in self.spec.compositions]
        return [d for d in self.assignments() if want[d.comp] == formula]

    # -- building ------------------------------------------------------------------

    def candidate(self, d: Draw) -> Candidate:
        """The crystal of one draw, reduced to its primitive cell; a failed candidate if
        pyxtal cannot build it (never raises)."""
        comp = self.spec.compositions[d.comp]
        name = _name(comp)
        try:
            group = _group(d.group)
            symbol = group.symbol
        except Exception as e:  # not a group pyxtal knows: the spec validates 1..230
            source = f"random:{name}:Z={d.z}:{d.group}:{d.index}"
            reason = f"pyxtal has no space group {d.group}: {_one_line(e)}"
            return Candidate.failed(source_id(source), source, reason)
        prototype = f"{symbol}({d.group})"
        source = f"random:{name}:Z={d.z}:{prototype}:{d.index}"
        species, _, _ = self._species[d.comp]
        ions = self._ions(d.comp, d.z, d.group)
        where = f"{name} (Z={d.z}, {dict(zip(species, ions, strict=True))} per conventional cell)"
        if not _fits(d.group, tuple(ions)):
            reason = f"group {d.group} ({symbol}) has no Wyckoff positions that hold {where}"
            return Candidate.failed(source_id(source), source, reason, prototype)
        try:
            numbers, positions, cell = self._build(d, group, species, ions)
        except Exception as e:  # pyxtal's RuntimeError, Comp_CompatibilityError, VolumeError...
            reason = (
                f"pyxtal could not place {where} in group {d.group} ({symbol}): "
                f"{type(e).__name__}: {_one_line(e)}"
            )
            return Candidate.failed(source_id(source), source, reason, prototype)
        from hts.geometry import pairs_within

        i, j, dist, _ = pairs_within(positions, cell, fingerprint_cutoff(cell, len(numbers)))
        return Candidate(
            id=candidate_id(numbers, positions, cell, pairs=(i, j, dist)),
            source=source,
            prototype=prototype,
            numbers=numbers,
            positions=positions,
            cell=cell,
            formula=formula_of(numbers),
            chemsys=chemsys_of(numbers),
            nearest=float(dist.min()) if len(dist) else float("nan"),
        )

    def _build(self, d: Draw, group, species: list[str], ions: list[int]):
        """pyxtal's crystal for one draw, as primitive-cell arrays."""
        from pyxtal import pyxtal

        rng = np.random.default_rng([self.seed, d.comp, d.z, d.group, d.index])
        with _quiet():
            xtal = pyxtal()
            # random_state, not seed=: pyxtal 1.1.5 ignores seed= for atomic crystals
            xtal.from_random(3, group, species, ions, random_state=rng)
            prim = xtal.to_pymatgen().get_primitive_structure(tolerance=_PRIMITIVE_TOLERANCE)
        numbers = np.asarray(prim.atomic_numbers, dtype=np.int64)
        return numbers, np.array(prim.cart_coords, dtype=float), np.array(prim.lattice.matrix)

    def __iter__(self) -> Iterator[Candidate]:
        for d in self.assignments():
            yield self.candidate(d)

    # -- worker tasks --------------------------------------------------------------

    def units(self, chunk_size: int) -> list[Unit]:
        """The compatible strata cut into worker tasks of about ``chunk_size`` draws.

        A stratum with more draws than a chunk is cut into equal slices; small ones
        are packed together (one draw per group would otherwise be one task per
        group).  Skipped strata are in no unit.  The list depends only on the
        campaign, so a resumed run numbers the units the same.
        """
        kept = [s for s, ok in enumerate(self._ok) if ok]
        packed = pack_units([float(self.spec.per_group)] * len(kept), chunk_size)
        return [Unit(tuple((kept[k], p, n) for k, p, n in u.pieces)) for u in packed]

    def unit_candidates(self, unit: Unit) -> list[Candidate]:
        out: list[Candidate] = []
        raw = self.spec.per_group
        for stratum, part, parts in unit.pieces:
            for i in range(raw * part // parts, raw * (part + 1) // parts):
                d = self.assignment_at(stratum, i)
                if d is not None:
                    out.append(self.candidate(d))
        return out


def _reduced(comp: dict[str, int]) -> str:
    """A composition's reduced formula, elements in alphabetical order (as :func:`formula_of`)."""
    import math

    g = math.gcd(*comp.values())
    return "".join(f"{el}{comp[el] // g if comp[el] // g > 1 else ''}" for el in sorted(comp))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
