"""Where a campaign's candidates come from: the substitution space, orderings of a parent
lattice (enumeration), random symmetric crystals, structure files, or structures handed over
in Python."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_serializer, field_validator, model_validator

from hts.spec.base import Strict

__all__ = [
    "CandidateSource",
    "EnumerationSource",
    "FileSource",
    "RandomSource",
    "PrototypeChoice",
    "StructureSource",
    "SubstitutionSource",
]


class PrototypeChoice(Strict):
    """One prototype of the substitution library, optionally with its own element lists."""

    name: str
    elements: dict[str, list[str]] | None = Field(
        default=None,
        description="Allowed elements per site role (A, B, X); overrides the source's.",
    )
    charge_balance: bool | None = Field(
        default=None, description="Overrides the source's charge_balance for this prototype."
    )

    @field_validator("name")
    @classmethod
    def _known_prototype(cls, name: str) -> str:
        from hts.candidates.prototypes import PROTOTYPES

        if name not in PROTOTYPES:
            raise ValueError(f"unknown prototype {name!r}; known: {', '.join(sorted(PROTOTYPES))}")
        return name


class SubstitutionSource(Strict):
    """Prototypes × allowed elements per Wyckoff-site role, enumerated lazily."""

    kind: Literal["substitution"]
    prototypes: list[PrototypeChoice | str] = Field(min_length=1)
    elements: dict[str, list[str]] = Field(
        default_factory=dict, description="Default allowed elements per role (A, B, X)."
    )
    charge_balance: bool = Field(
        default=True,
        description="Keep only compositions that balance with common oxidation states.",
    )
    distinct_elements: bool = Field(
        default=True, description="Never put the same element on two different roles."
    )
    oxidation_states: Literal["common", "icsd"] = Field(
        default="common",
        description="States charge balance may use: pymatgen's common ones, or every state seen "
        "in ICSD compounds (Ti3+, Cu+, Mn3+, Bi5+, ...).",
    )

    @field_validator("prototypes")
    @classmethod
    def _normalise(cls, items: list[PrototypeChoice | str]) -> list[PrototypeChoice | str]:
        return [PrototypeChoice(name=p) if isinstance(p, str) else p for p in items]

    @field_validator("elements")
    @classmethod
    def _known_elements(cls, elements: dict[str, list[str]]) -> dict[str, list[str]]:
        _check_elements(elements)
        return elements

    @model_validator(mode="after")
    def _roles_covered(self) -> SubstitutionSource:
        from hts.candidates.prototypes import PROTOTYPES

        for i, choice in enumerate(self.prototypes):
            assert isinstance(choice, PrototypeChoice)
            if choice.elements is not None:
                _check_elements(choice.elements, where=f"prototypes.{i}.elements")
            table = choice.elements or self.elements
            for role in PROTOTYPES[choice.name].roles:
                if not table.get(role):
                    raise ValueError(
                        f"prototypes.{i} ({choice.name}) needs elements for role {role!r}: "
                        f"give elements.{role} or prototypes.{i}.elements.{role}"
                    )
        return self


def _check_elements(table: dict[str, list[str]], where: str = "elements") -> None:
    from ase.data import atomic_numbers

    for role, symbols in table.items():
        if not re.fullmatch(r"[A-Z]", role):
            raise ValueError(f"{where}: role {role!r} must be one capital letter (A, B, X)")
        for s in symbols:
            if s not in atomic_numbers or s == "X":
                raise ValueError(f"{where}.{role}: {s!r} is not a chemical element")
        if len(set(symbols)) != len(symbols):
            raise ValueError(f"{where}.{role}: repeated elements in {symbols}")


class FileSource(Strict):
    """Structures read from files: a folder, a glob, or an ASE database."""

    kind: Literal["files"]
    path: str = Field(
        description="A folder, a glob (``data/*.cif``), or an ASE database (``.db``)."
    )
    formats: list[Literal["cif", "poscar", "extxyz", "db"]] = Field(
        default_factory=lambda: ["cif", "poscar", "extxyz", "db"]
    )


class StructureSource(Strict):
    """Structures already in memory: pymatgen ``Structure``s or ASE ``Atoms`` (``hts.run``).

    Validation turns each object into arrays once (:mod:`hts.candidates.given`);
    the campaign hash and the campaign the store records hold their count and
    a digest, not the structures themselves.
    """

    kind: Literal["structures"]
    structures: tuple[Any, ...] = Field(
        description="A list (or iterable) of pymatgen Structures, ASE Atoms or "
        "Structure.as_dict() mappings, or a mapping label → structure."
    )

    @field_validator("structures", mode="before")
    @classmethod
    def _read(cls, items: object) -> tuple:
        from hts.candidates.given import given_structures

        return given_structures(items)

    @field_serializer("structures")
    def _summary(self, given: tuple) -> dict:
        from hts.candidates.given import digest

        return {"count": len(given), "digest": digest(given)}


def _check_symbol(s: str, where: str) -> None:
    from ase.data import atomic_numbers

    if s not in atomic_numbers or s == "X":
        raise ValueError(f"{where}: {s!r} is not a chemical element")


class EnumerationSource(Strict):
    """Every symmetry-distinct ordering of a parent lattice's sites up to ``max_atoms``.

    The derivative superstructures of Hart & Forcade (PRB 77, 224115, 2008), as
    icet's ``enumerate_structures`` lists them: all supercells of the parent with
    ``min_atoms``..``max_atoms`` atoms (cell sizes that are a multiple of the
    parent's site count), each decorated in every way the species allow, one
    structure per class of decorations equivalent under the parent's symmetry
    and the supercell's translations.  Unaries and binaries of the species come
    too: they are the hull's corners.
    """

    kind: Literal["enumeration"]
    lattice: str = Field(
        description="A parent lattice by name (fcc, bcc, hcp, sc, diamond, rocksalt, "
        "zincblende, wurtzite, cesiumchloride, fluorite, perovskite) or a CIF file's path."
    )
    species: list[list[str]] = Field(
        min_length=1,
        description="Allowed species per site of the parent's primitive cell, in the parent's "
        "site order (a flat list: the same species on every site).",
    )
    max_atoms: int = Field(ge=1, le=64, description="Largest cell, in atoms.")
    min_atoms: int = Field(default=1, ge=1, description="Smallest cell, in atoms.")
    concentrations: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="Per element, the [low, high] share of all atoms of a cell it may take.",
    )

    @model_validator(mode="before")
    @classmethod
    def _every_site(cls, data: object) -> object:
        """A flat list, or one list on a many-site lattice: the same species on every site."""
        from hts.candidates.lattices import LATTICES

        if not isinstance(data, dict):
            return data
        v = data.get("species")
        if isinstance(v, list | tuple) and v and all(isinstance(x, str) for x in v):
            v = [list(v)]
        known = LATTICES.get(data.get("lattice")) if isinstance(data.get("lattice"), str) else None
        if known is not None and isinstance(v, list) and len(v) == 1 and known.n_sites > 1:
            v = v * known.n_sites
        return {**data, "species": v} if v is not None else data

    @field_validator("lattice")
    @classmethod
    def _known_lattice(cls, name: str) -> str:
        from hts.candidates.lattices import LATTICES

        if name not in LATTICES and not name.lower().endswith(".cif"):
            raise ValueError(
                f"unknown lattice {name!r}; known: {', '.join(sorted(LATTICES))}, "
                "or the path of a .cif file"
            )
        return name

    @model_validator(mode="after")
    def _consistent(self) -> EnumerationSource:
        from hts.candidates.lattices import LATTICES

        for k, site in enumerate(self.species):
            if not site:
                raise ValueError(f"species.{k}: no species for this site")
            for s in site:
                _check_symbol(s, f"species.{k}")
            if len(set(site)) != len(site):
                raise ValueError(f"species.{k}: repeated species in {site}")
        if self.min_atoms > self.max_atoms:
            raise ValueError(f"min_atoms = {self.min_atoms} exceeds max_atoms = {self.max_atoms}")
        if self.lattice in LATTICES:
            n = LATTICES[self.lattice].n_sites
            if len(self.species) != n:
                raise ValueError(
                    f"species: lattice {self.lattice} has {n} sites per primitive cell, "
                    f"species lists {len(self.species)}"
                )
            if self.max_atoms < n:
                raise ValueError(
                    f"max_atoms = {self.max_atoms} is below the {n} sites of one {self.lattice} cell"
                )
        everything = {s for site in self.species for s in site}
        for el, (lo, hi) in self.concentrations.items():
            if el not in everything:
                raise ValueError(
                    f"concentrations.{el}: {el} is not among the species {sorted(everything)}"
                )
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(
                    f"concentrations.{el}: need 0 <= low <= high <= 1, got [{lo}, {hi}]"
                )
        return self

    @property
    def elements(self) -> list[str]:
        return sorted({s for site in self.species for s in site})


class RandomSource(Strict):
    """Random symmetric crystals per composition (pyxtal), AIRSS-style random search.

    For every composition, number of formula units and space group, ``per_group``
    crystals, each reproducible from the campaign's seed and its own index.  A
    group whose Wyckoff positions cannot hold the composition is skipped and
    counted; a crystal pyxtal fails to build is a failed candidate with its reason.
    """

    kind: Literal["random"]
    compositions: list[dict[str, int]] = Field(
        min_length=1, description="Formula units, e.g. {Mg: 1, O: 1} or {Si: 1, O: 2}."
    )
    formula_units: tuple[int, int] | int = Field(
        default=(1, 4), description="Formula units per cell: a number or an inclusive [low, high]."
    )
    space_groups: list[int | str] | int = Field(
        default_factory=lambda: [1, 230],
        description="Space groups: [low, high] (two numbers: an inclusive range), a longer list "
        "of numbers and 'low-high' ranges, or one number.",
    )
    per_group: int = Field(default=1, ge=1, le=100_000, description="Crystals per group.")

    @field_validator("compositions")
    @classmethod
    def _known(cls, comps: list[dict[str, int]]) -> list[dict[str, int]]:
        for k, comp in enumerate(comps):
            if not comp:
                raise ValueError(f"compositions.{k}: empty composition")
            for el, n in comp.items():
                _check_symbol(el, f"compositions.{k}")
                if not isinstance(n, int) or n < 1:
                    raise ValueError(f"compositions.{k}.{el}: need a whole number >= 1, got {n!r}")
        return comps

    @field_validator("formula_units")
    @classmethod
    def _units(cls, v: tuple[int, int] | int) -> tuple[int, int] | int:
        lo, hi = (v, v) if isinstance(v, int) else v
        if not 1 <= lo <= hi <= 64:
            raise ValueError(f"need 1 <= low <= high <= 64 formula units, got {v}")
        return v

    @field_validator("space_groups")
    @classmethod
    def _groups(cls, v: list[int | str] | int) -> list[int | str] | int:
        groups_of(v)
        return v

    @property
    def groups(self) -> list[int]:
        return groups_of(self.space_groups)

    @property
    def units(self) -> list[int]:
        fu = self.formula_units
        lo, hi = (fu, fu) if isinstance(fu, int) else fu
        return list(range(lo, hi + 1))

    @property
    def elements(self) -> list[str]:
        return sorted({el for comp in self.compositions for el in comp})


def groups_of(v: list[int | str] | int) -> list[int]:
    """Space-group numbers from a range [low, high], a list with 'low-high' items, or one number."""
    items: list[int | str] = [v] if isinstance(v, int) else list(v)
    if len(items) == 2 and all(isinstance(x, int) for x in items) and items[0] < items[1]:
        items = [f"{items[0]}-{items[1]}"]
    out: set[int] = set()
    for x in items:
        if isinstance(x, int):
            lo = hi = x
        else:
            m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", x)
            if not m:
                raise ValueError(f"space group {x!r}: need a number or a 'low-high' range")
            lo, hi = int(m[1]), int(m[2])
        if not 1 <= lo <= hi <= 230:
            raise ValueError(f"space group {x!r} is out of range: groups are numbered 1 to 230")
        out.update(range(lo, hi + 1))
    if not out:
        raise ValueError("no space group given")
    return sorted(out)


CandidateSource = Annotated[
    SubstitutionSource | EnumerationSource | RandomSource | FileSource | StructureSource,
    Field(discriminator="kind"),
]
