"""Candidates read from structure files: CIF, POSCAR/CONTCAR, extxyz, or an ASE database.

Files are listed once (sorted, so the order is deterministic) and read one at a
time.  A file that cannot be read becomes a failed candidate carrying the
parser's message; it never stops the campaign.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hts.candidates.record import (
    Candidate,
    candidate_id,
    chemsys_of,
    formula_of,
    source_id,
    structure_problem,
)

__all__ = ["FileReader", "detect_format"]


def detect_format(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".cif"):
        return "cif"
    if name.endswith((".extxyz", ".xyz")):
        return "extxyz"
    if name.endswith(".db"):
        return "db"
    if name.endswith((".vasp", ".poscar")) or name.startswith(("poscar", "contcar")):
        return "poscar"
    return None


class FileReader:
    """Iterate the structures under a folder, a glob, a single file or an ASE database."""

    def __init__(
        self, pattern: str | Path, formats: list[str], display_root: Path | None = None
    ) -> None:
        self.pattern = str(pattern)
        self.formats = set(formats)
        self.display_root = display_root

    def paths(self) -> list[Path]:
        p = Path(self.pattern)
        if p.is_dir():
            found = [q for q in p.rglob("*") if q.is_file()]
        elif any(ch in self.pattern for ch in "*?["):
            found = [Path(q) for q in glob.glob(self.pattern, recursive=True) if Path(q).is_file()]
        elif p.is_file():
            found = [p]
        else:
            found = []
        return sorted(q for q in found if detect_format(q) in self.formats)

    def upper_bound(self) -> int | None:
        return None  # files may hold many frames; unknown until read

    def _label(self, path: Path) -> str:
        if self.display_root is not None:
            try:
                return str(path.resolve().relative_to(self.display_root.resolve()))
            except ValueError:
                pass
        return str(path)

    def __iter__(self) -> Iterator[Candidate]:
        for path in self.paths():
            label = f"file:{self._label(path)}"
            fmt = detect_format(path)
            try:
                frames = list(self._read(path, fmt))
            except Exception as err:  # any parser failure is this file's problem only
                yield Candidate.failed(
                    source_id(label), label, f"unreadable {fmt} file: {_short(err)}"
                )
                continue
            if not frames:
                yield Candidate.failed(
                    source_id(label), label, f"unreadable {fmt} file: no structure found in it"
                )
                continue
            for k, atoms in enumerate(frames):
                source = label if len(frames) == 1 else f"{label}@{k}"
                yield _from_atoms(atoms, source)

    @staticmethod
    def _read(path: Path, fmt: str):
        if fmt == "db":
            from ase.db import connect

            with connect(path) as db:
                for row in db.select():
                    yield row.toatoms()
            return
        import warnings

        from ase.io import iread

        ase_format = {"cif": "cif", "poscar": "vasp", "extxyz": "extxyz"}[fmt]
        with warnings.catch_warnings():  # a broken cell's NaNs: failed below, with a reason
            warnings.filterwarnings("ignore", message="invalid value encountered")
            frames = list(iread(path, index=":", format=ase_format))
        yield from frames


def _from_atoms(atoms, source: str) -> Candidate:
    numbers = np.asarray(atoms.numbers, dtype=np.int64)
    cell = np.array(atoms.cell[:], dtype=float)
    positions = np.array(atoms.positions, dtype=float)
    finite = np.isfinite(cell).all()
    if finite and (not all(atoms.pbc) or abs(np.linalg.det(cell)) < 1e-6):
        return Candidate.failed(
            source_id(source), source, "not a periodic crystal (needs a 3-D cell)"
        )
    problem = structure_problem(numbers, positions, cell) or _disorder(atoms)
    if problem:
        return Candidate.failed(source_id(source), source, problem)
    return Candidate(
        id=candidate_id(numbers, positions, cell),
        source=source,
        prototype="",
        numbers=numbers,
        positions=positions,
        cell=cell,
        formula=formula_of(numbers),
        chemsys=chemsys_of(numbers),
    )


def _disorder(atoms) -> str:
    """A CIF site shared by several species or partly empty: ASE keeps one species, silently."""
    for label, species in (atoms.info.get("occupancy") or {}).items():
        total = sum(species.values())
        if len(species) > 1 or total < 1 - 1e-3:
            shares = ", ".join(f"{el} {x:g}" for el, x in species.items())
            return (
                f"partial occupancy (site {label}: {shares}): hts screens ordered structures; "
                "order the site first (e.g. pymatgen's OrderDisorderedStructureTransformation)"
            )
    return ""


def _short(err: Exception) -> str:
    """A parser's exception as a reason a person can act on."""
    if isinstance(err, KeyError):
        return (
            f"unknown element symbol {err.args[0]!r}" if err.args else "a required field is missing"
        )
    text = f"{err}".strip().replace("\n", " ")
    if isinstance(err, (AssertionError, AttributeError, IndexError, TypeError)) or not text:
        return f"the file is malformed or truncated (the parser stopped with {type(err).__name__}{': ' + text if text else ''})"[
            :300
        ]
    if "broadcast" in text:
        return f"the atom counts do not match the coordinates given ({text})"[:300]
    return f"{type(err).__name__}: {text}"[:300]
