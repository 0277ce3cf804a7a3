"""The campaign driver: streams chunks through the stages into the store.

The driver owns the store (the single writer).  It enumerates candidates
lazily, keeps at most ``max_in_flight`` tasks submitted (backpressure: memory
stays flat however long the stream), scores each finished chunk against the
running hull, appends it to the store and commits it in the ledger; survivors
queue for the teacher in batches.  A restarted run rebuilds the same numbered
chunks, skips every candidate whose id is committed, rebuilds the hulls from the
store and requeues the survivors the teacher has not seen.  A task that fails
as a whole (the model, a worker, the infrastructure) records nothing: its
candidates are not judged, and the next run tries them again.  At the end every stage's hull is
recomputed once over everything, then the DFT phase runs.

What the loop hands off lives beside it: :mod:`~hts.campaign.resolve` (the
campaign's files read once), :mod:`~hts.campaign.references`,
:mod:`~hts.campaign.scoring`, :mod:`~hts.campaign.pool` (the one task-waiting
loop), :mod:`~hts.campaign.rescore` (the teacher's queue),
:mod:`~hts.campaign.audit` (the final audit sample and the recall warning),
:mod:`~hts.campaign.stats` (the live counts) and :mod:`~hts.campaign.validate`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hts.audit import audit_pick
from hts.campaign.audit import final_audit
from hts.campaign.feed import chunk_tasks, new_only, unit_tasks
from hts.campaign.pool import Done, TaskPool
from hts.campaign.references import ReferenceBook
from hts.campaign.rescore import TeacherQueue
from hts.campaign.resolve import ResolvedCampaign, preflight, results_hash
from hts.campaign.scoring import StageScorer
from hts.campaign.stats import RunStats, book_task
from hts.campaign.validate import ValidatePhase
from hts.candidates import Chunk, open_source
from hts.candidates.record import Candidate
from hts.spec import Campaign
from hts.stages.screen import StageRecord
from hts.store import Row, Store
from hts.store.schema import STATUS_FAILED, STATUS_OK

__all__ = ["RunStats", "open_store", "run_campaign"]  # RunStats lives in hts.campaign.stats

# what a stored row and a candidate share besides the structure (a survivor is requeued from either)
_IDENTITY = ("id", "source", "prototype", "formula", "chemsys")


def _prefilter_rows(
    chunk: Chunk, recs: list[StageRecord], t: StageScorer, audit: float = 0.0, seed: int = 0
) -> list[Row]:
    """A chunk's store rows: each result scored against the hull with the chunk's own results in it.

    A reject is marked for the audit when :func:`hts.audit.audit_pick` draws
    it (rejects only tighten as the hull fills, so the final pass keeps the mark).
    """
    t.reject_implausible((c.formula, r) for c, r in zip(chunk.candidates, recs, strict=True))
    t.hull.add(
        (c.formula, r.energy_per_atom)
        for c, r in zip(chunk.candidates, recs, strict=True)
        if r.status == STATUS_OK
    )
    rows = []
    for c, r in zip(chunk.candidates, recs, strict=True):
        status, reason = r.status, r.reason
        if status == STATUS_OK:
            values, why = t.columns(r, c.formula, c.n_atoms)
            if why:
                status, reason = STATUS_FAILED, why
        else:
            values = {"time_s": r.time_s}
        has_structure = len(r.numbers) > 0
        rows.append(
            Row(
                id=c.id,
                formula=c.formula,
                chemsys=c.chemsys,
                prototype=c.prototype,
                source=c.source,
                chunk=chunk.index,
                status=status,
                reason=reason,
                stage_reached="prefilter" if status == STATUS_OK else "",
                numbers=r.numbers if has_structure else c.numbers,
                positions=r.positions if has_structure else c.positions,
                cell=r.cell if has_structure else c.cell,
                stage={"prefilter": values},
                audit=status == STATUS_OK
                and not values.get("kept")
                and audit_pick(seed, c.id, audit),
            )
        )
    return rows


class _Driver:
    """The loop: chunks in, prefilter verdicts appended, survivors batched to the teacher."""

    def __init__(
        self, resolved: ResolvedCampaign, engine, store: Store, progress: Callable | None
    ) -> None:
        self.r = resolved
        self.c = resolved.campaign
        self.scorers = {
            name: StageScorer(name, k, stage.keep)
            for k, (name, stage) in enumerate(resolved.stages.items())
        }
        self.pre = self.scorers["prefilter"]
        re = self.scorers.get("rescore")
        self.engine = engine
        self.store = store
        self.progress = progress or (lambda s: None)
        self.stats = RunStats()
        self.pool = TaskPool(engine)
        self.book = ReferenceBook(resolved, store, self.scorers, engine, self._phase)
        self.audit = self.r.stages["prefilter"].audit if re is not None else 0.0
        # survivors (and audited rejects) waiting for the teacher; None: no rescore stage
        self.teacher = (
            TeacherQueue(resolved, re, store, self.pool, self.stats, self.audit)
            if re is not None
            else None
        )
        self.committed: set[int] = set()  # ids in the store (as integers): never screened again
        self.unit_size = 0  # candidates a generated unit holds, about (for the unscreened count)
        self.screening = 0  # prefilter tasks in flight

    def _phase(self, phase: str) -> None:
        self.stats.phase = phase
        self.progress(self.stats)

    # -- resume ----------------------------------------------------------------

    def _rebuild(self) -> None:
        """Put every committed result back into its stage's hull; requeue unrescored survivors."""
        waiting: list[int] = []
        rescored = self.store.stage_done.get("rescore", set())
        names = ["id", "formula", "energy_per_atom", "kept", "audit"]
        for start, b in self.store.iter_blocks(names):
            self.committed.update(int(x, 16) for x in b["id"])
            for t in self.scorers.values():
                e = b["energy_per_atom"][:, t.k]
                t.hull.add(
                    (str(f), float(v))
                    for f, v in zip(b["formula"], e, strict=True)
                    if math.isfinite(v)
                )
            if self.teacher is not None:
                waiting.extend(
                    start + int(i)
                    for i in np.flatnonzero(b["kept"][:, 0] | b["audit"])
                    if start + int(i) not in rescored
                )
        if waiting:
            assert self.teacher is not None
            meta = self.store.read([*_IDENTITY, "audit"], waiting)
            for j, (row, (z, pos, cell)) in enumerate(
                zip(waiting, self.store.structures(waiting), strict=True)
            ):
                ident = {name: str(meta[name][j]) for name in _IDENTITY}
                cand = Candidate(**ident, numbers=z, positions=pos, cell=cell)
                self.teacher.add(row, cand, bool(meta["audit"][j]))
            self.stats.rescore_waiting = len(self.teacher)

    # -- the prefilter ---------------------------------------------------------

    def _collect_prefilter(self, d: Done, chunk: Chunk) -> None:
        s = self.stats
        recs = book_task(d, "prefilter", f"chunk {chunk.index}", self.store, s)
        if recs is None:
            s.unscreened += len(chunk.candidates) or self.unit_size
            return
        if d.result.candidates is not None:  # generated by the task: drop what is already in
            limit = self.c.limits.max_candidates or None
            chunk, recs = new_only(chunk.index, d.result.candidates, recs, self.committed, limit)
        rows = _prefilter_rows(chunk, recs, self.pre, self.audit, self.c.seed)
        first = self.store.n_rows
        self.store.append(rows, chunk.index)
        s.done += len(rows)
        s.ok += sum(r.status == STATUS_OK for r in rows)
        s.failed += sum(r.status != STATUS_OK for r in rows)
        survivors = [(first + i, r) for i, r in enumerate(rows) if r.stage["prefilter"].get("kept")]
        s.kept += len(survivors)
        if self.teacher is not None:
            audited = [(first + i, r) for i, r in enumerate(rows) if r.audit]
            for row, r in survivors + audited:
                ident = {name: getattr(r, name) for name in _IDENTITY}
                cand = Candidate(**ident, numbers=r.numbers, positions=r.positions, cell=r.cell)
                self.teacher.add(row, cand, r.audit)
            s.rescore_waiting += len(survivors) + len(audited)
            s.audited += len(audited)

    # -- the loop --------------------------------------------------------------

    def _submit_rescore(self, flush: bool = False) -> None:
        if self.teacher is not None:
            self.teacher.submit(flush)

    def _drain(self, until: int) -> None:
        """Collect finished tasks until at most ``until`` are in flight."""
        for d in self.pool.completed(until):
            kind, payload = d.tag
            if kind == "unit":
                self.screening -= 1
                self._collect_prefilter(d, Chunk(payload, []))
            elif kind == "prefilter":
                self.screening -= 1
                self._collect_prefilter(d, payload)
            else:
                assert self.teacher is not None
                self.teacher.collect(d, *payload)
            self._submit_rescore()
            self.stats.in_flight = len(self.pool)
            self.progress(self.stats)

    def run(self) -> RunStats:
        c, s = self.c, self.stats
        self.book.load()
        self._rebuild()
        s.resumed = self.store.n_rows
        source = open_source(c)
        counter = getattr(source, "count", None)
        s.total_estimate = (counter() if counter else None) or source.upper_bound()
        if c.limits.max_candidates and s.total_estimate:
            s.total_estimate = min(s.total_estimate, c.limits.max_candidates)
        self.book.ensure(self.r.source_elements)
        if c.candidates.kind in ("enumeration", "random"):
            field = (
                "candidates.species"
                if c.candidates.kind == "enumeration"
                else "candidates.compositions"
            )
            self.book.require(self.r.source_elements, field)
        s.phase = "screening"
        s.started = time.time()  # rates and ETA count screening only
        self.progress(s)

        spec = self.r.stages["prefilter"]
        if hasattr(source, "units"):
            units = source.units(c.chunk_size)
            self.unit_size = max(1, round(source.upper_bound() / max(len(units), 1)))
            tasks = unit_tasks(c, spec, units, self.store.done, lambda: len(self.committed))
        else:
            first = max(self.store.done, default=-1) + 1
            tasks = chunk_tasks(c, spec, source, self.committed, first, self.book.ensure)
        labels = {st.resource for st in self.r.stages.values()}
        max_in_flight = c.limits.max_in_flight or 2 * sum(self.engine.workers(x) for x in labels)
        last_report = 0.0
        for tag, fn, *args in tasks:
            self._submit_rescore()
            self._drain(max_in_flight - 1)
            self.pool.submit(spec.resource, tag, fn, *args)
            self.screening += 1
            s.in_flight = len(self.pool)
            if time.time() - last_report > 0.5:
                self.progress(s)
                last_report = time.time()
        if self.teacher is not None:
            s.phase = "screening; teacher rescoring the survivors"
        # the last, partial teacher batch goes out as soon as the stream is screened, beside
        # the full batches still running, not after them (they can each take an hour)
        while self.screening:
            self._drain(len(self.pool) - 1)
        self._submit_rescore(flush=True)
        self._drain(0)
        self._finalize()
        if self.r.validate is not None:
            last = list(self.scorers.values())[-1]
            ValidatePhase(
                self.r.validate, self.store, last, self.book, self.engine, s, self.progress
            ).run()
        s.phase = "done"
        self.progress(s)
        return s

    def _finalize(self) -> None:
        """Score everything once more against each stage's final hull and write the final values."""
        if self.store.finalized:
            self.store.consolidate()  # reopening dropped it, or a kill came between the two
            return
        self._phase("final hull pass")
        for t in self.scorers.values():
            kept = t.final_pass(self.store, gated=t is not self.pre)
            if t is self.pre:
                self.stats.kept = kept
                self.stats.audited += final_audit(self.store, self.c.seed, self.audit)
            else:
                self.stats.rescore_kept = kept
        self.store.set_finalized(True)
        self.store.consolidate()


def open_store(
    campaign: Campaign | ResolvedCampaign, store_path: str | Path | None = None
) -> Store:
    """The campaign's store, created or reopened for resuming (refused if another campaign's)."""
    import yaml

    resolved = campaign if isinstance(campaign, ResolvedCampaign) else None
    c = resolved.campaign if resolved is not None else campaign
    path = Path(store_path or c.store)
    return Store.open(
        path,
        campaign_name=c.name,
        campaign_hash=resolved.hash if resolved is not None else results_hash(c),
        campaign_yaml=yaml.safe_dump(
            c.model_dump(mode="json", exclude={"base_dir"}), sort_keys=False
        ),
        stages=c.stages.names(),
        also_accept=[results_hash(c, legacy=True)],
    )


def run_campaign(
    campaign: Campaign,
    engine,
    *,
    store_path: str | Path | None = None,
    progress: Callable[[RunStats], None] | None = None,
) -> RunStats:
    """Run (or resume) a campaign on an engine; returns the run's counts.

    Problems with the campaign itself (an empty source, an unreadable
    reference file, a store of another campaign) are raised before any task is
    submitted.
    """
    resolved = preflight(campaign)
    if (
        resolved.validate is not None
    ):  # a site that cannot launch the DFT code fails now, not hours later
        engine.launcher(resolved.validate.resource, resolved.validate.ranks)
    store = open_store(resolved, store_path)
    try:
        return _Driver(resolved, engine, store, progress).run()
    finally:
        store.close()
