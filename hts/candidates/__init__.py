"""Where candidates come from, and how they are cut into chunks.

:func:`open_source` turns a campaign's ``candidates`` section into a lazy
iterator of :class:`Candidate`; :func:`chunks` checks each one, drops
duplicates (same id seen earlier in the stream) and cuts the stream into
fixed-size, numbered chunks.  A resumed run skips every candidate whose id
is already in the store, so what is screened depends on the store's contents,
not on where a candidate sits in the stream.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
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

__all__ = [
    "Candidate",
    "Chunk",
    "EmptySourceError",
    "candidate_id",
    "check_candidate",
    "chemsys_of",
    "chunks",
    "formula_of",
    "open_source",
    "source_id",
]


class EmptySourceError(ValueError):
    """The campaign's candidate source yields nothing; raised before any work starts."""


@dataclass(slots=True)
class Chunk:
    index: int
    candidates: list[Candidate]

    @property
    def elements(self) -> set[str]:
        from ase.data import chemical_symbols

        return {chemical_symbols[int(z)] for c in self.candidates if not c.error for z in c.numbers}


def open_source(campaign):
    """The lazy candidate iterator for a campaign (has ``upper_bound()`` for progress)."""
    spec = campaign.candidates
    if spec.kind == "substitution":
        from hts.candidates.substitution import SubstitutionGenerator

        return SubstitutionGenerator(spec)
    if spec.kind == "enumeration":
        from hts.candidates.enumeration import EnumerationSpace

        return EnumerationSpace(spec, campaign.base_dir)
    if spec.kind == "random":
        from hts.candidates.random_crystals import RandomSpace

        return RandomSpace(spec, campaign.seed)
    if spec.kind == "structures":
        from hts.candidates.given import GivenStructures

        return GivenStructures(spec.structures)
    from hts.candidates.files import FileReader

    return FileReader(
        campaign.resolve_input(spec.path), spec.formats, display_root=campaign.resolve_input(".")
    )


def build_unit(source_json: str, base_dir: str, seed: int, unit) -> list[Candidate]:
    """The candidates of one unit of a worker-generated source, built where the task runs.

    The source is rebuilt from its JSON once per process (cached): a task
    carries a few hundred bytes, not its candidates.
    """
    return _unit_source(source_json, base_dir, seed).unit_candidates(unit)


@functools.lru_cache(maxsize=4)
def _unit_source(source_json: str, base_dir: str, seed: int):
    import json

    from pydantic import TypeAdapter

    from hts.spec.sources import CandidateSource

    spec = TypeAdapter(CandidateSource).validate_python(json.loads(source_json))
    if spec.kind == "enumeration":
        from hts.candidates.enumeration import EnumerationSpace

        return EnumerationSpace(spec, base_dir)
    from hts.candidates.random_crystals import RandomSpace

    return RandomSpace(spec, seed)


def ensure_not_empty(campaign) -> None:
    """Fail before any work when the source yields nothing, naming the field to fix."""
    spec = campaign.candidates
    source = open_source(campaign)
    if spec.kind == "files":
        if not source.paths():
            raise EmptySourceError(
                f"candidates.path: {spec.path!r} (resolved to {campaign.resolve_input(spec.path)}) "
                f"matches no {'/'.join(spec.formats)} files"
            )
    elif spec.kind == "structures":
        if not spec.structures:
            raise EmptySourceError("candidates.structures: the list of structures is empty")
    elif spec.kind in ("enumeration", "random"):
        from hts.candidates.lattices import ParentError
        from hts.spec.base import CampaignError

        try:
            first = next(iter(source.assignments()), None)
        except ParentError as err:
            raise CampaignError(f"candidates.lattice: {err}") from None
        if first is None:
            what = (
                "no ordering meets the concentrations"
                if spec.kind == "enumeration"
                else "no space group can hold any composition at these formula units"
            )
            raise EmptySourceError(f"candidates: the {spec.kind} space is empty ({what})")
    elif next(iter(source.assignments()), None) is None:
        raise EmptySourceError(
            "candidates: the substitution yields no candidate (every element combination was "
            "filtered out; check elements, distinct_elements and charge_balance)"
        )


def check_candidate(c: Candidate, max_atoms: int, min_distance: float) -> Candidate:
    """Mark inputs no model should see as failed, with a reason a person can act on.

    A failed input takes the id of its source (:func:`source_id`), so it never
    hides a valid structure with the same fingerprint.
    """
    if not c.error:
        c.error = _problem(c, max_atoms, min_distance)
    if c.error:
        c.id = source_id(c.source)
    return c


def _problem(c: Candidate, max_atoms: int, min_distance: float) -> str:
    if problem := structure_problem(c.numbers, c.positions, c.cell):
        return problem
    if c.n_atoms == 0:
        return "structure has no atoms"
    if c.n_atoms > max_atoms:
        return f"{c.n_atoms} atoms exceeds limits.max_atoms = {max_atoms}"
    if not c.nearest >= min_distance:  # unknown (NaN) or too close: look at the pairs
        from ase.data import chemical_symbols

        from hts.geometry import pairs_within

        i, j, d, _ = pairs_within(c.positions, c.cell, min_distance)
        if len(d):
            k = int(np.argmin(d))
            a, b = int(i[k]), int(j[k])
            return (
                f"overlapping atoms: site {a} ({chemical_symbols[c.numbers[a]]}) and site {b} "
                f"({chemical_symbols[c.numbers[b]]}) are {d[k]:.3f} Å apart "
                f"(limits.min_distance = {min_distance} Å)"
            )
    return ""


def chunks(
    stream: Iterable[Candidate],
    chunk_size: int,
    *,
    max_candidates: int | None = None,
    max_atoms: int = 64,
    min_distance: float = 0.5,
    skip: set[int] | None = None,
    first_index: int = 0,
) -> Iterator[Chunk]:
    """Checked, de-duplicated, numbered chunks of the stream.

    ``skip`` holds the ids (as integers) already in the store: they are not
    screened again, whatever chunk they were in or wherever they sit in the
    stream now (a file source may have gained files), but they count towards
    ``max_candidates``.  Chunks are numbered from ``first_index``.

    Ids are kept as 64-bit integers (8 bytes of entropy each) so a million of
    them cost tens of MB, not the hundreds a set of strings would.
    """
    seen: set[int] = set()
    skip = skip or set()
    batch: list[Candidate] = []
    index = first_index
    taken = 0
    for cand in stream:
        cand = check_candidate(cand, max_atoms, min_distance)  # before its id is trusted
        key = int(cand.id, 16)
        if key in seen:
            continue
        seen.add(key)
        taken += 1
        if key not in skip:
            batch.append(cand)
        if len(batch) == chunk_size:
            yield Chunk(index, batch)
            index += 1
            batch = []
        if max_candidates is not None and taken >= max_candidates:
            break
    if batch:
        yield Chunk(index, batch)
