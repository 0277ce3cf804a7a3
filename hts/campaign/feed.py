"""What the driver hands out: checked chunks of candidates, or units a task generates itself.

Two ways to feed the prefilter, one task list each; the driver's loop submits
them with backpressure and never sees the difference.

- :func:`chunk_tasks` — sources that must be read here (files, structures
  given in Python, the substitution space): candidates are generated, ided and
  checked by the driver, de-duplicated, and cut into numbered chunks.
- :func:`unit_tasks` — sources addressable by index (enumeration, random):
  the driver hands out :class:`~hts.candidates.record.Unit` s, a few integers
  each, numbered in the space's fixed order; the task builds, ids and checks its
  own candidates (:func:`~hts.stages.screen.screen_unit`) and sends them back with
  their records, and :func:`new_only` drops ids already stored.  A unit whose
  rows are committed is never handed out again, so a resumed run skips it
  without generating it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

from hts.candidates import Chunk, chunks
from hts.candidates.record import Candidate, Unit
from hts.stages.screen import StageRecord, run_stage, screen_unit

__all__ = ["chunk_tasks", "new_only", "unit_tasks"]


def chunk_tasks(
    c, spec, source, committed: set[int], first_index: int, ensure: Callable
) -> Iterator[tuple]:
    """``(tag, fn, *args)`` per chunk of candidates generated and checked here."""
    for chunk in chunks(
        source,
        c.chunk_size,
        max_candidates=c.limits.max_candidates,
        max_atoms=c.limits.max_atoms,
        min_distance=c.limits.min_distance,
        skip=committed,
        first_index=first_index,
    ):
        ensure(chunk.elements)  # elemental references before the chunk's hull needs them
        yield ("prefilter", chunk), run_stage, chunk.index, chunk.candidates, spec, c.seed


def unit_tasks(
    c, spec, units: list[Unit], done: set[int], taken: Callable[[], int]
) -> Iterator[tuple]:
    """``(tag, fn, *args)`` per unit not yet committed, until ``limits.max_candidates``."""
    source_json = json.dumps(c.candidates.model_dump(mode="json"))
    limit = c.limits.max_candidates
    for k, unit in enumerate(units):
        if k in done:
            continue
        if limit and taken() >= limit:
            return
        yield ("unit", k), screen_unit, k, source_json, c.base_dir, unit, spec, c.seed, c.limits


def new_only(
    index: int,
    cands: list[Candidate],
    recs: list[StageRecord],
    committed: set[int],
    limit: int | None = None,
) -> tuple[Chunk, list[StageRecord]]:
    """A generated unit's candidates (and records) whose ids are not stored yet.

    Their ids join ``committed``; past ``limit`` stored ids the rest are dropped.
    """
    keep_c, keep_r = [], []
    for cand, rec in zip(cands, recs, strict=True):
        key = int(cand.id, 16)
        if key in committed or (limit and len(committed) >= limit):
            continue
        committed.add(key)
        keep_c.append(cand)
        keep_r.append(rec)
    return Chunk(index, keep_c), keep_r
