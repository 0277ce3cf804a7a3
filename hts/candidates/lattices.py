"""Parent lattices for enumeration: their primitive cells at unit scale, and how to scale them.

A parent is a primitive cell (rows are lattice vectors) with fractional site
positions, its conventional lattice parameter 1.  The species a campaign allows
on each site decorate it (:mod:`hts.candidates.enumeration`); the cell is then
scaled by the radii rule of :mod:`hts.candidates.substitution`: until no
nearest-neighbour contact is shorter than the sum of its two atoms' radii, with
each site's radius the mean of the radii on its sublattice.  On a one-sublattice
parent (fcc, bcc, hcp) that is Vegard's law: the lattice parameter is the
composition-weighted mean of the pure elements' own (each from its radius), a
start within a few per cent of the relaxed cell, which the relaxation corrects.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["LATTICES", "Parent", "parent_from_cif"]


@dataclass(frozen=True)
class Parent:
    """A parent lattice: primitive cell, fractional sites and its nearest-neighbour contacts."""

    name: str
    cell: np.ndarray  # (3, 3) rows, conventional parameter 1 (CIF: as read)
    frac: np.ndarray  # (n, 3)
    # (site, site, distance) for every site's nearest neighbours, at this cell's scale
    contacts: tuple[tuple[int, int, float], ...] = ()

    @property
    def n_sites(self) -> int:
        return len(self.frac)

    def with_contacts(self) -> Parent:
        from hts.geometry import pairs_within

        pos = self.frac @ self.cell
        vol = abs(float(np.linalg.det(self.cell))) / self.n_sites
        i, j, d, _ = pairs_within(pos, self.cell, 2.0 * vol ** (1 / 3))
        found: dict[tuple[int, int], float] = {}
        for site in range(self.n_sites):
            m = i == site
            dmin = d[m].min()
            for jj, dd in zip(j[m], d[m], strict=True):
                if dd <= dmin * 1.05:
                    key = (min(site, int(jj)), max(site, int(jj)))
                    found[key] = min(found.get(key, np.inf), float(dd))
        contacts = tuple((a, b, dist) for (a, b), dist in sorted(found.items()))
        return Parent(self.name, self.cell, self.frac, contacts)

    def scale(self, radii: np.ndarray) -> float:
        """The factor on the unit cell that makes every contact the sum of its sites' radii.

        ``radii`` holds one (mean) radius per site of the parent.
        """
        return max((radii[a] + radii[b]) / d for a, b, d in self.contacts)


def _bulk(symbols: str, kind: str, **kw) -> tuple[np.ndarray, np.ndarray]:
    from ase.build import bulk

    at = bulk(symbols, kind, a=1.0, **kw)
    return np.array(at.cell[:]), at.get_scaled_positions(wrap=True)


def _perovskite() -> tuple[np.ndarray, np.ndarray]:
    # cubic ABX3 (Pm-3m): A at the corner, B at the body centre, X on the face centres
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    return np.eye(3), frac.astype(float)


_BUILDERS = {
    "fcc": lambda: _bulk("Cu", "fcc"),
    "bcc": lambda: _bulk("Fe", "bcc"),
    "hcp": lambda: _bulk("Mg", "hcp", c=(8 / 3) ** 0.5),
    "sc": lambda: _bulk("Po", "sc"),
    "diamond": lambda: _bulk("Si", "diamond"),
    "rocksalt": lambda: _bulk("NaCl", "rocksalt"),
    "zincblende": lambda: _bulk("ZnS", "zincblende"),
    "wurtzite": lambda: _bulk("ZnO", "wurtzite", c=(8 / 3) ** 0.5, u=0.375),
    "cesiumchloride": lambda: _bulk("CsCl", "cesiumchloride"),
    "fluorite": lambda: _bulk("CaF2", "fluorite"),
    "perovskite": _perovskite,
}

# sites per primitive cell, known without building anything (validation needs only these)
_SITES = {
    "fcc": 1,
    "bcc": 1,
    "hcp": 2,
    "sc": 1,
    "diamond": 2,
    "rocksalt": 2,
    "zincblende": 2,
    "wurtzite": 4,
    "cesiumchloride": 2,
    "fluorite": 3,
    "perovskite": 5,
}


@dataclass(frozen=True)
class _Known:
    n_sites: int


LATTICES: dict[str, _Known] = {name: _Known(n) for name, n in _SITES.items()}


@functools.cache
def named_parent(name: str) -> Parent:
    cell, frac = _BUILDERS[name]()
    return Parent(name, cell, frac).with_contacts()


class ParentError(ValueError):
    """A CIF parent that cannot be read or has disordered sites."""


def parent_from_cif(path: Path) -> Parent:
    """The primitive cell of the structure in a CIF file, at its own scale."""
    import warnings

    from pymatgen.core import Structure

    try:
        with warnings.catch_warnings():  # pymatgen's parsing notes; a failure is reported below
            warnings.simplefilter("ignore")
            s = Structure.from_file(str(path))
    except Exception as err:
        raise ParentError(f"cannot read {path} as a CIF: {err}") from None
    if not s.is_ordered:
        raise ParentError(f"{path}: the parent must be ordered (one species per site)")
    prim = s.get_primitive_structure()
    cell = np.array(prim.lattice.matrix)
    frac = np.array(prim.frac_coords) % 1.0
    # at the CIF's scale the radii rule still works: contacts scale with the cell
    return Parent(f"cif:{path.name}", cell, frac).with_contacts()
