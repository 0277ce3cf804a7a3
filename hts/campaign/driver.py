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
:mod:`~hts.campaign.scoring`, :mod:`~hts.campaign.pool` and
:mod:`~hts.campaign.validate`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hts.audit import audit_pick, estimate, warning
from hts.campaign.pool import Done, TaskPool
from hts.campaign.references import ReferenceBook, RunError
from hts.campaign.resolve import ResolvedCampaign, preflight, results_hash
from hts.campaign.scoring import StageScorer
from hts.campaign.validate import ValidatePhase
from hts.candidates import Chunk, chunks, open_source
from hts.candidates.record import Candidate
from hts.models.ase_calculator import ModelSpecError
from hts.spec import Campaign
from hts.stages.screen import StageRecord, run_stage
from hts.store import Row, StageUpdate, Store
from hts.store.schema import STATUS_FAILED, STATUS_OK

__all__ = ["RunStats", "open_store", "run_campaign"]

log = logging.getLogger("hts.campaign")

# what a stored row and a candidate share besides the structure (a survivor is requeued from either)
_IDENTITY = ("id", "source", "prototype", "formula", "chemsys")


@dataclass
class RunStats:
    """Live counts for progress displays and the closing summary."""

    total_estimate: int | None = None
    done: int = 0  # candidates with a prefilter result this run
    resumed: int = 0  # candidates already in the store from an earlier run
    ok: int = 0
    failed: int = 0
    kept: int = 0  # prefilter survivors (running verdicts until the final pass)
    rescored: int = 0  # survivors rescored by the teacher, this run
    rescore_kept: int = 0
    rescore_waiting: int = 0  # survivors (and audited rejects) queued or in flight for the teacher
    audited: int = 0  # rejects sent to the teacher by the audit, this run
    validated: int = 0  # DFT jobs finished this run (candidates)
    validate_failed: int = 0
    validate_waiting: int = 0  # DFT jobs (candidates and references) queued or running
    in_flight: int = 0
    # candidates a failed task left unjudged (not in the store: the next run retries them)
    unscreened: int = 0
    unrescored: int = 0
    unvalidated: int = 0  # DFT jobs (candidates and references)
    task_errors: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    worker_s: float = 0.0  # wall time inside tasks
    model_s: float = 0.0  # of which inside model calls
    stage_s: dict[str, float] = field(default_factory=dict)  # worker_s by stage
    phase: str = "starting"

    @property
    def rate(self) -> float:
        dt = time.time() - self.started
        return self.done / dt if dt > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left for the student's remaining candidates *and* the teacher's queue.

        Worker time per candidate of each stage so far, times what is left of
        each (the teacher's queue, plus the share of the candidates still to
        screen that the prefilter has been sending it), over the parallelism
        observed (worker time per wall second).  Unknown (None) until both
        stages have timed a task: a student-only estimate would promise
        seconds while minutes of teacher work wait.
        """
        if not self.total_estimate or self.done <= 0:
            return None
        elapsed = time.time() - self.started
        busy = sum(self.stage_s.values())
        if elapsed <= 0 or busy <= 0:
            return None
        left = max(0, self.total_estimate - self.done - self.resumed)
        work = left * self.stage_s.get("prefilter", 0.0) / self.done
        teacher_due = self.rescore_waiting + left * (self.kept + self.audited) / self.done
        if teacher_due > 0:
            if not self.rescored:
                return None
            work += teacher_due * self.stage_s.get("rescore", 0.0) / self.rescored
        return max(0.0, work / (busy / elapsed))


def _prefilter_rows(
    chunk: Chunk, recs: list[StageRecord], t: StageScorer, audit: float = 0.0, seed: int = 0
) -> list[Row]:
    """A chunk's store rows: each result scored against the hull with the chunk's own results in it.

    A reject is marked for the audit when :func:`hts.audit.audit_pick` draws
    it (rejects only tighten as the hull fills, so the final pass keeps the mark).
    """
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
        self.re = self.scorers.get("rescore")
        self.engine = engine
        self.store = store
        self.progress = progress or (lambda s: None)
        self.stats = RunStats()
        self.pool = TaskPool(engine)
        self.book = ReferenceBook(resolved, store, self.scorers, engine, self._phase)
        # survivors (and audited rejects: True) waiting for the teacher
        self.queue: list[tuple[int, Candidate, bool]] = []
        self.audit = self.r.stages["prefilter"].audit if self.re is not None else 0.0
        self._recall_warned = False
        self.committed: set[int] = set()  # ids in the store (as integers): never screened again
        self._batches = 0

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
            if self.re is not None:
                waiting.extend(
                    start + int(i)
                    for i in np.flatnonzero(b["kept"][:, 0] | b["audit"])
                    if start + int(i) not in rescored
                )
        if waiting:
            meta = self.store.read([*_IDENTITY, "audit"], waiting)
            for j, (row, (z, pos, cell)) in enumerate(
                zip(waiting, self.store.structures(waiting), strict=True)
            ):
                ident = {name: str(meta[name][j]) for name in _IDENTITY}
                cand = Candidate(**ident, numbers=z, positions=pos, cell=cell)
                self.queue.append((row, cand, bool(meta["audit"][j])))
            self.stats.rescore_waiting = len(self.queue)

    # -- the prefilter ---------------------------------------------------------

    def _records(self, stage: str, d: Done, what: str) -> list[StageRecord] | None:
        """A finished stage task's records (its time counted); None if the task died as a whole.

        A task's death (after the engine's retries) says nothing about its
        candidates: nothing is recorded, and the next run tries them again.
        """
        if not d.ok:
            if isinstance(d.error, ModelSpecError):  # every task would fail alike: stop now
                raise RunError(
                    f"{d.error.at(f'stages.{stage}.model')}. Nothing was recorded for {what}; "
                    "fix the model section and run the same command again"
                )
            why = d.describe_error()
            log.warning("%s failed as a whole (its candidates are retried next run): %s", what, why)
            self.stats.task_errors.append(f"{what}: {why}")
            return None
        self.store.set_stage_model(stage, d.result.model_name, d.result.model_version)
        self.stats.worker_s += d.result.wall_s
        self.stats.model_s += d.result.model_s
        self.stats.stage_s[stage] = self.stats.stage_s.get(stage, 0.0) + d.result.wall_s
        return d.result.records

    def _collect_prefilter(self, d: Done, chunk: Chunk) -> None:
        s = self.stats
        recs = self._records("prefilter", d, f"chunk {chunk.index}")
        if recs is None:
            s.unscreened += len(chunk.candidates)
            return
        rows = _prefilter_rows(chunk, recs, self.pre, self.audit, self.c.seed)
        first = self.store.n_rows
        self.store.append(rows, chunk.index)
        s.done += len(rows)
        s.ok += sum(r.status == STATUS_OK for r in rows)
        s.failed += sum(r.status != STATUS_OK for r in rows)
        survivors = [(first + i, r) for i, r in enumerate(rows) if r.stage["prefilter"].get("kept")]
        s.kept += len(survivors)
        if self.re is not None:
            audited = [(first + i, r) for i, r in enumerate(rows) if r.audit]
            for row, r in survivors + audited:
                ident = {name: getattr(r, name) for name in _IDENTITY}
                cand = Candidate(**ident, numbers=r.numbers, positions=r.positions, cell=r.cell)
                self.queue.append((row, cand, r.audit))
            s.rescore_waiting += len(survivors) + len(audited)
            s.audited += len(audited)

    # -- the rescore stage -----------------------------------------------------

    def _submit_rescore(self, flush: bool = False) -> None:
        if self.re is None:
            return
        spec = self.r.stages["rescore"]
        size = spec.chunk_size or self.c.chunk_size
        while self.queue and (flush or len(self.queue) >= size):
            batch, self.queue = self.queue[:size], self.queue[size:]
            rows = [r for r, _, _ in batch]
            cands = [c for _, c, _ in batch]
            audit = [a for _, _, a in batch]
            self._batches += 1
            self.pool.submit(
                spec.resource,
                ("rescore", (rows, cands, audit)),
                run_stage,
                self._batches,
                cands,
                spec,
                self.c.seed,
            )

    def _collect_rescore(
        self, d: Done, rows: list[int], cands: list[Candidate], audit: list[bool]
    ) -> None:
        t, s = self.re, self.stats
        assert t is not None
        recs = self._records("rescore", d, "a rescore task")
        if recs is None:
            s.unrescored += len(rows)
            s.rescore_waiting -= len(rows)
            return
        t.hull.add(
            (c.formula, r.energy_per_atom)
            for c, r in zip(cands, recs, strict=True)
            if r.status == STATUS_OK
        )
        updates = []
        for row, c, r, audited in zip(rows, cands, recs, audit, strict=True):
            if r.status == STATUS_OK:
                values, why = t.columns(r, c.formula, c.n_atoms)
            else:
                values, why = {"time_s": r.time_s}, r.reason
            ok = not why
            missed = None
            if audited:  # the teacher's verdict goes to audit_missed: an audited row is no survivor
                missed = bool(ok and values.get("kept"))
                values["kept"] = False
            updates.append(
                StageUpdate(
                    row=row,
                    values=values,
                    status=STATUS_OK if ok else STATUS_FAILED,
                    reason=why,
                    stage_reached="rescore" if ok else "prefilter",
                    positions=r.positions if ok else None,
                    cell=r.cell if ok else None,
                    audit_missed=missed,
                )
            )
            s.rescored += 1
            s.rescore_kept += bool(values.get("kept"))
        self.store.update("rescore", updates)
        s.rescore_waiting -= len(rows)
        if any(audit):
            self._check_recall()

    def _check_recall(self) -> None:
        """Log once when the audited recall's upper bound falls below the distillation's target."""
        link = self.r.stages["prefilter"].distillation
        if self._recall_warned or link is None:
            return
        line = warning(estimate(self.store.counters, self.audit, link.target_recall))
        if line:
            log.warning("%s", line)
            self._recall_warned = True

    # -- the loop --------------------------------------------------------------

    def _drain(self, until: int) -> None:
        """Collect finished tasks until at most ``until`` are in flight."""
        for d in self.pool.completed(until):
            kind, payload = d.tag
            if kind == "prefilter":
                self._collect_prefilter(d, payload)
            else:
                self._collect_rescore(d, *payload)
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
        s.phase = "screening"
        s.started = time.time()  # rates and ETA count screening only
        self.progress(s)

        spec = self.r.stages["prefilter"]
        labels = {st.resource for st in self.r.stages.values()}
        max_in_flight = c.limits.max_in_flight or 2 * sum(self.engine.workers(x) for x in labels)
        last_report = 0.0
        for chunk in chunks(
            source,
            c.chunk_size,
            max_candidates=c.limits.max_candidates,
            max_atoms=c.limits.max_atoms,
            min_distance=c.limits.min_distance,
            skip=self.committed,
            first_index=max(self.store.done, default=-1) + 1,
        ):
            self.book.ensure(chunk.elements)
            self._submit_rescore()
            self._drain(max_in_flight - 1)
            self.pool.submit(
                spec.resource,
                ("prefilter", chunk),
                run_stage,
                chunk.index,
                chunk.candidates,
                spec,
                c.seed,
            )
            s.in_flight = len(self.pool)
            if time.time() - last_report > 0.5:
                self.progress(s)
                last_report = time.time()
        if self.re is not None:
            s.phase = "screening; teacher rescoring the survivors"
        self._drain(0)
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

    def _final_audit(self) -> None:
        """Mark the audit sample again from the final verdicts (so it does not depend on chunking).

        An early survivor the final hull drops is a reject like any other: if
        drawn, it joins the sample (the teacher already rescored it).
        """
        if not self.audit:
            return
        for start, b in self.store.iter_blocks(["id", "e_above_hull", "kept", "audit"]):
            want = _audit_sample(
                b["id"],
                np.isfinite(b["e_above_hull"][:, 0]),
                b["kept"][:, 0],
                self.c.seed,
                self.audit,
            )
            changed = np.flatnonzero(want != b["audit"])
            self.store.write_rows("audit", start + changed, want[changed])
            self.stats.audited += int(want.sum()) - int(b["audit"].sum())

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
                self._final_audit()
            else:
                self.stats.rescore_kept = kept
        self.store.set_finalized(True)
        self.store.consolidate()


def _audit_sample(ids, scored, kept, seed: int, share: float) -> np.ndarray:
    """Which rows are in the audit: the final rejects :func:`hts.audit.audit_pick` draws."""
    out = np.zeros(len(ids), dtype=bool)
    for i in np.flatnonzero(scored & ~kept):
        out[i] = audit_pick(seed, str(ids[i]), share)
    return out


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
