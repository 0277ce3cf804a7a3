"""Where a campaign's candidates come from: the substitution space, structure files, or
structures handed over in Python."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_serializer, field_validator, model_validator

from hts.spec.base import Strict

__all__ = [
    "CandidateSource",
    "FileSource",
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


CandidateSource = Annotated[
    SubstitutionSource | FileSource | StructureSource, Field(discriminator="kind")
]
