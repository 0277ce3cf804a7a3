"""The teacher's queue: survivors (and audited rejects) batched to the rescore stage, verdicts written back.

The prefilter's survivors arrive a chunk at a time, and a resumed run requeues
those the teacher has not seen; :class:`TeacherQueue` holds them until a full
batch (the rescore stage's ``chunk_size``) is ready — or until the driver
flushes at the end of the stream — and submits it through the run's
:class:`~hts.campaign.pool.TaskPool`.  When a batch comes back, each result is
scored against the teacher's running hull and written as a
:class:`~hts.store.StageUpdate`.  An audited reject is never a survivor: the
teacher's verdict on it goes to ``audit_missed``, and the recall those verdicts
imply is checked against the distillation's target.
"""

from __future__ import annotations

from hts.campaign.audit import RecallWatch
from hts.campaign.pool import Done, TaskPool
from hts.campaign.resolve import ResolvedCampaign
from hts.campaign.scoring import StageScorer
from hts.campaign.stats import RunStats, book_task
from hts.candidates.record import Candidate
from hts.stages.screen import run_stage
from hts.store import StageUpdate, Store
from hts.store.schema import STATUS_FAILED, STATUS_OK

__all__ = ["TeacherQueue"]


class TeacherQueue:
    """Rows waiting for the teacher, sent in batches; each batch's verdicts committed as it returns.

    Parameters
    ----------
    resolved
        The campaign (its rescore stage, chunk size and seed).
    scorer
        The rescore stage's scorer (the teacher's hull and keep rule).
    store, pool, stats
        The run's store (the single writer), task pool and live counts.
    audit
        The audited share of the prefilter's rejects (0: no audit).
    """

    def __init__(
        self,
        resolved: ResolvedCampaign,
        scorer: StageScorer,
        store: Store,
        pool: TaskPool,
        stats: RunStats,
        audit: float,
    ) -> None:
        self.spec = resolved.stages["rescore"]
        self.size = self.spec.chunk_size or resolved.campaign.chunk_size
        self.seed = resolved.campaign.seed
        self.scorer = scorer
        self.store = store
        self.pool = pool
        self.stats = stats
        self.recall = RecallWatch(resolved.stages["prefilter"].distillation, audit)
        # (store row, candidate, audited) in arrival order
        self.waiting: list[tuple[int, Candidate, bool]] = []
        self._batches = 0

    def __len__(self) -> int:
        return len(self.waiting)

    def add(self, row: int, cand: Candidate, audited: bool) -> None:
        """Queue one stored row for the teacher (``audited``: a reject in the audit sample)."""
        self.waiting.append((row, cand, audited))

    def submit(self, flush: bool = False) -> None:
        """Submit every full batch waiting (and, with ``flush``, the last partial one)."""
        while self.waiting and (flush or len(self.waiting) >= self.size):
            batch, self.waiting = self.waiting[: self.size], self.waiting[self.size :]
            rows = [r for r, _, _ in batch]
            cands = [c for _, c, _ in batch]
            audit = [a for _, _, a in batch]
            self._batches += 1
            self.pool.submit(
                self.spec.resource,
                ("rescore", (rows, cands, audit)),
                run_stage,
                self._batches,
                cands,
                self.spec,
                self.seed,
            )

    def collect(self, d: Done, rows: list[int], cands: list[Candidate], audit: list[bool]) -> None:
        """Score a finished batch against the teacher's hull and commit its rows."""
        t, s = self.scorer, self.stats
        recs = book_task(d, "rescore", "a rescore task", self.store, s)
        if recs is None:
            s.unrescored += len(rows)
            s.rescore_waiting -= len(rows)
            return
        t.reject_implausible((c.formula, r) for c, r in zip(cands, recs, strict=True))
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
            self.recall.check(self.store.counters)
