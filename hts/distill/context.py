"""What every phase of one distillation shares: its settings, its labels, its engine, its progress.

The phases (:mod:`~hts.distill.labelling`, :mod:`~hts.distill.rounds`,
:mod:`~hts.distill.calibration`, :mod:`~hts.distill.report`) are functions of a
:class:`DistillRun`, so each reads as one job and none holds state of its own.
Work leaves the process only through :func:`run_tasks`, which fans jobs out on
the campaign's site through the one task-waiting loop,
:class:`hts.campaign.pool.TaskPool`.
"""

from __future__ import annotations

import functools
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hts.campaign.pool import Done, TaskPool
from hts.candidates.record import Candidate
from hts.distill.config import DistillConfig
from hts.distill.dataset import LabelStore
from hts.distill.sample import held_out_system
from hts.distill.stores import StoreRows
from hts.spec import ModelSpec

__all__ = [
    "DistillProgress",
    "DistillRun",
    "num",
    "path_frames",
    "rescore_threshold",
    "run_tasks",
    "student_spec",
]


@dataclass
class DistillProgress:
    """What ``hts distill`` shows live: the phase, how far it is, and a line of detail."""

    phase: str = "starting"
    done: int = 0
    total: int = 0
    detail: str = ""


def run_tasks(
    engine, label: str, jobs: list[tuple], on_done: Callable[[Done], None], progress: Callable
) -> None:
    """Run ``(fn, *args)`` jobs on ``label`` workers; ``on_done`` gets each :class:`Done` as it ends.

    At most twice the label's workers are in flight, so a long job list never
    sits as thousands of queued futures (and their pickled batches) at once,
    while every worker still finds its next task waiting.  ``Done.tag`` is the
    job's index in ``jobs``; a task that died after the engine's retries comes
    back with ``Done.error`` set, and the rest go on: a phase decides whether
    a lost chunk matters.
    """
    pool = TaskPool(engine)
    limit = 2 * engine.workers(label)

    def drain(until: int) -> None:
        for done in pool.completed(until=until):
            on_done(done)
            progress()

    for i, job in enumerate(jobs):
        drain(limit - 1)
        pool.submit(label, i, *job)
    drain(0)


@dataclass
class DistillRun:
    """One distillation's settings and the candidate lists its phases fill in, in order.

    ``cands`` holds every sampled candidate by id; ``train``, ``points``,
    ``primary`` (the calibration systems) and ``closure`` (their subsystems,
    there for the hull only) are ids into it and into ``labels``.  In a space
    of one chemistry calibration systems are compositions (:attr:`by`),
    ``systems`` holds formulas and ``weights`` each calibration candidate's
    weight (:func:`hts.candidates.sampling.systems`).
    """

    cfg: DistillConfig
    campaign: object
    teacher: ModelSpec
    engine: object
    labels: LabelStore
    out: Path
    progress: Callable[[DistillProgress], None]
    cands: dict[str, Candidate] = field(default_factory=dict)  # every sampled candidate
    train: list[str] = field(default_factory=list)  # labelled training candidates
    points: list[str] = field(default_factory=list)  # candidates with a single point to learn
    primary: list[str] = field(default_factory=list)  # calibration systems' candidates
    closure: list[str] = field(default_factory=list)  # their subsystems' (hull only)
    systems: list[str] = field(default_factory=list)  # drawn: chemical systems or formulas
    weights: dict[str, float] = field(default_factory=dict)  # calibration id -> weight (or all 1)
    state: DistillProgress = field(default_factory=DistillProgress)
    student_refs: dict[str, float] = field(default_factory=dict)  # the last round's fitted ones
    failures: Counter = field(default_factory=Counter)  # why the student failed, this round
    timing: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    stores: StoreRows | None = None  # data.stores: a campaign's teacher rows (the flywheel)

    @property
    def teacher_label(self) -> str:
        """The teacher runs where the campaign's rescore stage would run it."""
        rescore = self.campaign.stages.rescore
        return rescore.resource if rescore else "cpu"

    @property
    def student_label(self) -> str:
        """The student runs where the campaign's prefilter will run it."""
        return self.campaign.stages.prefilter.resource

    @property
    def direct(self) -> bool:
        """A direct student (trunk or from scratch): one forward pass per candidate, no relaxation."""
        return self.cfg.student.kind in ("direct", "trunk")

    def ok(self, cid: str) -> bool:
        """Whether the teacher relaxed ``cid`` to a finite energy (a failed label is kept, as failed)."""
        v = self.labels.candidates.get(cid)
        return bool(v and v["file"] and not v["error"] and math.isfinite(v["energy_per_atom"]))

    @functools.cached_property
    def by(self) -> str:
        """What calibration draws whole and holdout keeps out: ``"chemsys"`` or ``"formula"``.

        Compositions in a space of one chemistry (orderings of a lattice, random
        crystals), whose few chemical systems would hold out all or nothing;
        chemical systems everywhere else (:func:`hts.candidates.sampling.grouping`).
        """
        from hts.candidates.sampling import grouping

        return grouping(self.campaign)

    def held(self, formula: str, chemsys: str) -> bool:
        """Whether a candidate's system (or composition, see :attr:`by`) is never trained on.

        Fixed by seed and name, so every candidate of a held-out system or
        composition is out, in every run and round.
        """
        key = formula if self.by == "formula" else chemsys
        return held_out_system(key, self.cfg.sampling.holdout_systems, self.cfg.seed)

    @property
    def elements(self) -> list[str]:
        return sorted({el for c in self.cands.values() for el in c.chemsys.split("-")})

    def phase(self, name: str, total: int = 0, detail: str = "") -> None:
        """Start a new phase of the progress display."""
        self.state.phase, self.state.done, self.state.total = name, 0, total
        self.state.detail = detail
        self.progress(self.state)


def path_frames(run: DistillRun, ids: set[str]) -> dict[str, list]:
    """Every candidate's teacher relaxation frames, in order (the first is the unrelaxed input)."""
    frames: dict[str, list] = defaultdict(list)
    for a in run.labels.frames(ids):
        if a.info.get("config_type") == "path":
            frames[a.info["hts_id"]].append(a)
    return frames


def student_spec(run: DistillRun, path: Path) -> ModelSpec:
    """The student file as a model, batched as the prefilter will batch it."""
    return ModelSpec(
        name="student",
        path=str(path.resolve()),
        dtype=run.cfg.training.dtype,
        device="auto",
        batch_size=64 if run.direct else 16,
    )


def rescore_threshold(campaign) -> float:
    """The ``e_above_hull`` the rescore stage keeps below: what "teacher-stable" means by default."""
    rescore = campaign.stages.rescore
    if rescore is not None:
        for f, op, v in rescore.keep.terms:
            if f == "e_above_hull" and op in ("<=", "<"):
                return v
    return 0.05


def num(x: float) -> float | None:
    """A float for the JSON report: NaN and infinities become null."""
    return float(x) if math.isfinite(x) else None
