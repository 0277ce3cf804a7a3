"""The shipped library of crystal prototypes for substitution.

Each prototype is data: a space group, a lattice shape at unit scale and its
Wyckoff sites, each labelled with a *role* (A, B, X).  A substitution puts one
element on every role and scales the cell from the elements' radii.  The
primitive cell of each prototype is built once (pymatgen), then every candidate
is a cheap copy with new species and a new scale.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = ["PROTOTYPES", "Prototype", "PrototypeCell"]


@dataclass(frozen=True)
class Prototype:
    """A prototype description (facts from the crystallographic literature)."""

    name: str
    example: str
    spacegroup: int
    lattice: tuple[float, float, float, float, float, float]  # a, b, c, alpha, beta, gamma at a=1
    sites: tuple[tuple[str, tuple[float, float, float]], ...]  # (role, fractional coords)

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(sorted({role for role, _ in self.sites}))


@dataclass(frozen=True)
class PrototypeCell:
    """The primitive cell of a prototype at unit scale, ready for substitution."""

    cell: np.ndarray  # (3, 3), rows are lattice vectors, unit scale
    frac: np.ndarray  # (n, 3) fractional coordinates
    roles: tuple[str, ...]  # role of each site
    multiplicity: dict[str, int]  # sites per role in the primitive cell
    contacts: tuple[tuple[str, str, float], ...]  # nearest-neighbour role pairs and unit distance


_SQ83 = (8 / 3) ** 0.5

PROTOTYPES: dict[str, Prototype] = {
    p.name: p
    for p in (
        Prototype(
            "rocksalt",
            "NaCl",
            225,
            (1, 1, 1, 90, 90, 90),
            (("A", (0, 0, 0)), ("X", (0.5, 0.5, 0.5))),
        ),
        Prototype(
            "zincblende",
            "ZnS",
            216,
            (1, 1, 1, 90, 90, 90),
            (("A", (0, 0, 0)), ("X", (0.25, 0.25, 0.25))),
        ),
        Prototype(
            "wurtzite",
            "ZnO",
            186,
            (1, 1, _SQ83, 90, 90, 120),
            (("A", (1 / 3, 2 / 3, 0.0)), ("X", (1 / 3, 2 / 3, 0.375))),
        ),
        Prototype(
            "cscl", "CsCl", 221, (1, 1, 1, 90, 90, 90), (("A", (0, 0, 0)), ("X", (0.5, 0.5, 0.5)))
        ),
        Prototype(
            "fluorite",
            "CaF2",
            225,
            (1, 1, 1, 90, 90, 90),
            (("A", (0, 0, 0)), ("X", (0.25, 0.25, 0.25))),
        ),
        Prototype(
            "perovskite",
            "SrTiO3",
            221,
            (1, 1, 1, 90, 90, 90),
            (("A", (0, 0, 0)), ("B", (0.5, 0.5, 0.5)), ("X", (0.5, 0.5, 0.0))),
        ),
        Prototype(
            # Fd-3m, origin choice 1: A on 8a, B on 16d, X on 32e (u = 0.387 in MgAl2O4)
            "spinel",
            "MgAl2O4",
            227,
            (1, 1, 1, 90, 90, 90),
            (("A", (0, 0, 0)), ("B", (0.625, 0.625, 0.625)), ("X", (0.387, 0.387, 0.387))),
        ),
        Prototype(
            # FeTiO3 ilmenite (the ordered-corundum ABX3), R-3 hexagonal setting
            # (Wechsler & Prewitt 1984): A 6c z = 0.3554, B 6c z = 0.1464, X 18f
            "ilmenite",
            "FeTiO3",
            148,
            (1, 1, 2.7687, 90, 90, 120),
            (("A", (0, 0, 0.3554)), ("B", (0, 0, 0.1464)), ("X", (0.3172, 0.0204, 0.2446))),
        ),
        Prototype(
            # K2NiF4 (Ruddlesden-Popper n = 1, Sr2TiO4), I4/mmm: A 4e, B 2a, X 4c + 4e
            "k2nif4",
            "K2NiF4",
            139,
            (1, 1, 3.264, 90, 90, 90),
            (
                ("A", (0, 0, 0.3521)),
                ("B", (0, 0, 0)),
                ("X", (0, 0.5, 0)),
                ("X", (0, 0, 0.1534)),
            ),
        ),
        Prototype(
            # CuFeS2 chalcopyrite, I-42d: A 4a, B 4b, X 8d (x = 0.2574)
            "chalcopyrite",
            "CuFeS2",
            122,
            (1, 1, 1.9707, 90, 90, 90),
            (("A", (0, 0, 0)), ("B", (0, 0, 0.5)), ("X", (0.2574, 0.25, 0.125))),
        ),
        Prototype(
            # alpha-NaFeO2 (LiCoO2) layered rocksalt, hexagonal setting of R-3m
            "layered",
            "LiCoO2",
            166,
            (1, 1, 4.99, 90, 90, 120),
            (("A", (0, 0, 0.5)), ("B", (0, 0, 0)), ("X", (0, 0, 0.2395))),
        ),
        Prototype(
            # full Heusler L2_1 (Cu2MnAl): A on 8c, B on 4a, X on 4b
            "heusler",
            "Cu2MnAl",
            225,
            (1, 1, 1, 90, 90, 90),
            (("A", (0.25, 0.25, 0.25)), ("B", (0, 0, 0)), ("X", (0.5, 0.5, 0.5))),
        ),
        Prototype(
            # anti-CaF2 (Li2O): cations on the tetrahedral 8c sites, anion on 4a
            "antifluorite",
            "Li2O",
            225,
            (1, 1, 1, 90, 90, 90),
            (("A", (0.25, 0.25, 0.25)), ("X", (0, 0, 0))),
        ),
        Prototype(
            # NiAs, P6_3/mmc: octahedral cation 2a, trigonal-prismatic anion 2c (c/a ~1.39)
            "nias",
            "NiAs",
            194,
            (1, 1, 1.39, 90, 90, 120),
            (("A", (0, 0, 0)), ("X", (1 / 3, 2 / 3, 0.25))),
        ),
        Prototype(
            # CdI2 (1T layers), P-3m1: cation 1a, anion 2d with z = 1/4 (c/a ~1.61)
            "cdi2",
            "CdI2",
            164,
            (1, 1, 1.61, 90, 90, 120),
            (("A", (0, 0, 0)), ("X", (1 / 3, 2 / 3, 0.25))),
        ),
        Prototype(
            # alpha-Al2O3, R-3c hexagonal setting: cation 12c (z = 0.3523), anion 18e (x = 0.3064)
            "corundum",
            "Al2O3",
            167,
            (1, 1, 2.7296, 90, 90, 120),
            (("A", (0, 0, 0.3523)), ("X", (0.3064, 0, 0.25))),
        ),
        Prototype(
            "rutile",
            "TiO2",
            136,
            (1, 1, 0.644, 90, 90, 90),
            (("A", (0, 0, 0)), ("X", (0.3048, 0.3048, 0.0))),
        ),
    )
}


@functools.cache
def prototype_cell(name: str) -> PrototypeCell:
    """Primitive cell of a prototype at unit scale (built once per process)."""
    from pymatgen.core import Lattice, Structure

    proto = PROTOTYPES[name]
    # Placeholder species, one per role, so symmetry expansion keeps roles apart.
    placeholder = {"A": "Li", "B": "Be", "X": "F", "C": "Na", "D": "Mg"}
    species = [placeholder[role] for role, _ in proto.sites]
    # Built at a = 5 Å so pymatgen's distance tolerances mean what they say, then rescaled.
    a, b, c, alpha, beta, gamma = proto.lattice
    s = Structure.from_spacegroup(
        proto.spacegroup,
        Lattice.from_parameters(5 * a, 5 * b, 5 * c, alpha, beta, gamma),
        species,
        [xyz for _, xyz in proto.sites],
    )
    prim = s.get_primitive_structure(tolerance=0.01)
    back = {v: k for k, v in placeholder.items()}
    roles = tuple(back[site.specie.symbol] for site in prim)
    order = np.argsort(roles, kind="stable")
    roles = tuple(roles[i] for i in order)
    cell = np.array(prim.lattice.matrix) / 5.0
    frac = np.array(prim.frac_coords)[order] % 1.0
    mult = {r: roles.count(r) for r in sorted(set(roles))}
    return PrototypeCell(
        cell=cell, frac=frac, roles=roles, multiplicity=mult, contacts=_contacts(cell, frac, roles)
    )


def _contacts(
    cell: np.ndarray, frac: np.ndarray, roles: tuple[str, ...]
) -> tuple[tuple[str, str, float], ...]:
    """Nearest-neighbour role pairs and their distance at unit scale.

    The volume guess scales the cell until no such contact is shorter than the
    sum of the two atoms' radii.
    """
    from hts.geometry import pairs_within

    i, j, d, _ = pairs_within(frac @ cell, cell, 1.5)
    found: dict[tuple[str, str], float] = {}
    for site in range(len(roles)):
        mask = i == site
        if not mask.any():
            continue
        dmin = d[mask].min()
        for jj, dd in zip(j[mask], d[mask], strict=True):
            if dd <= dmin * 1.05:
                key = tuple(sorted((roles[site], roles[jj])))
                found[key] = min(found.get(key, np.inf), float(dd))
    return tuple((a, b, dist) for (a, b), dist in sorted(found.items()))
