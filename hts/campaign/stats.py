"""The run's live counts, and the booking of each finished stage task into them.

:class:`RunStats` is what progress displays, the dashboard and the closing
summary read while the run goes on.  :func:`book_task` is the one place a
finished prefilter or rescore task is turned into records: its times counted,
its model named in the store, or — when the task died as a whole — its error
kept for the summary, so the two stages cannot count a failure differently.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from hts.campaign.pool import Done
from hts.campaign.references import RunError
from hts.models.ase_calculator import ModelSpecError
from hts.stages.screen import StageRecord

__all__ = ["RunStats", "book_task"]

log = logging.getLogger("hts.campaign")


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


def book_task(d: Done, stage: str, what: str, store, stats: RunStats) -> list[StageRecord] | None:
    """A finished stage task's records (its time counted); None if the task died as a whole.

    A task's death (after the engine's retries) says nothing about its
    candidates: nothing is recorded, and the next run tries them again.  A
    model that cannot be built is different — every task would fail alike —
    so it stops the run with a :class:`~hts.campaign.references.RunError`
    naming the campaign file's model section.

    Parameters
    ----------
    d
        The finished task; its result is a :func:`~hts.stages.screen.run_stage` outcome.
    stage, what
        The stage's name, and how the task is named in warnings (``chunk 3``).
    store, stats
        Where the stage's model name goes, and the counts its times go to.
    """
    if not d.ok:
        if isinstance(d.error, ModelSpecError):  # every task would fail alike: stop now
            raise RunError(
                f"{d.error.at(f'stages.{stage}.model')}. Nothing was recorded for {what}; "
                "fix the model section and run the same command again"
            )
        why = d.describe_error()
        log.warning("%s failed as a whole (its candidates are retried next run): %s", what, why)
        stats.task_errors.append(f"{what}: {why}")
        return None
    store.set_stage_model(stage, d.result.model_name, d.result.model_version)
    stats.worker_s += d.result.wall_s
    stats.model_s += d.result.model_s
    stats.stage_s[stage] = stats.stage_s.get(stage, 0.0) + d.result.wall_s
    return d.result.records
