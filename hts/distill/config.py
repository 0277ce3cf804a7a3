"""Distillation file → validated settings (``hts distill CONFIG``).

A distillation names a campaign (its candidate source, limits, site and, by
default, its rescore stage's model as the teacher), how to sample and perturb
structures, the student's architecture and training, and where the dataset,
checkpoints, student file and report go.  Like a campaign file it is parsed
once, strictly, and every bad field is reported with its path.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from hts.config import Strict, read_mapping, validate
from hts.spec import (
    Campaign,
    CampaignError,
    ModelSpec,
    RelaxSettings,
    load_campaign,
)

__all__ = ["DistillConfig", "load_distill"]

# what the teacher computes per labelled candidate: the only sampling settings in the dataset's key
_PER_CANDIDATE = (
    "trajectory_snapshots",
    "rattled",
    "rattle_sigma",
    "strained",
    "max_strain",
    "relax",
)


class Sampling(Strict):
    """Which candidates the teacher labels, and what it labels for each.

    Two samples of the campaign's space, drawn without walking it
    (:mod:`hts.candidates.sampling`): ``train`` candidates uniformly (stratified by
    prototype) to learn from, and ``calibration`` candidates in whole chemical
    systems (each drawn with equal probability, with its subsystems), on which
    the keep threshold is chosen and every figure of the report is measured:
    within those systems the hull is complete, so ``e_above_hull`` there is
    what the campaign will compute.  A space of one chemistry (orderings of a
    lattice, random crystals) is calibrated and held out by composition
    instead, and its hull is the one over every teacher label of the run
    (:mod:`hts.distill.calibration`).  Budgets are counts, or shares of the
    space when below 1.
    """

    train: float = Field(
        default=0.1,
        ge=0,
        le=1_000_000,
        description="Candidates labelled for training: a count, or a share of the space if < 1.",
    )
    calibration: float = Field(
        default=1000,
        ge=0,
        le=1_000_000,
        description="Candidates of whole chemical systems labelled for calibration (their "
        "subsystems come along for the hull; in a space of one chemistry, compositions, none "
        "giving more than a tenth of the budget per draw): a count, or a share of the space if "
        "< 1.  0 (with data.stores): the stores' held-out teacher rows calibrate instead.",
    )
    points: float = Field(
        default=0,
        ge=0,
        le=10_000_000,
        description="Direct student: teacher single points of unrelaxed candidates (a count, or "
        "a share of the space if < 1), ~40× cheaper than relaxations; learnt by their own readout.",
    )
    holdout_systems: float = Field(
        default=0.1,
        ge=0,
        lt=0.5,
        description="Share of chemical systems (in a space of one chemistry: compositions) "
        "never trained on: the report's figures for chemistry the student has not seen.",
    )
    valid: float = Field(
        default=0.1, gt=0, lt=0.5, description="Share of training candidates for early stopping."
    )
    trajectory_snapshots: int = Field(
        default=4,
        ge=1,
        le=100,
        description="Frames kept along each teacher relaxation, evenly spaced, first and last included.",
    )
    rattled: int = Field(
        default=1, ge=0, le=50, description="Rattled copies of each relaxed structure."
    )
    rattle_sigma: float = Field(default=0.05, ge=0, le=0.5, description="Å, Gaussian.")
    strained: int = Field(default=1, ge=0, le=50, description="Strained (and rattled) copies.")
    max_strain: float = Field(default=0.04, ge=0, le=0.3, description="Largest strain component.")
    relax: RelaxSettings | None = Field(
        default=None,
        description="The teacher's relaxation; default: the campaign's rescore stage settings.",
    )


class Rounds(Strict):
    """Further rounds of labels after the first training, each followed by retraining.

    A relaxing student relaxes ``labels`` training candidates and the teacher
    labels the structures it visits and ends at (on-policy, DAgger-style: the
    student learns where it goes, not only where the teacher went).  A direct
    student scores ``pool`` unlabelled candidates and the teacher relaxes the
    ``labels`` whose student ``e_above_hull`` lies nearest the keep threshold,
    where the screen's decisions are made.  Rounds stop early once the
    calibration target (recall bound and discarded share) is met.
    """

    max: int = Field(default=2, ge=0, le=20, description="Rounds after the first training.")
    labels: int = Field(
        default=300, ge=1, le=1_000_000, description="Teacher labels (candidates) per round."
    )
    pool: int = Field(
        default=5000,
        ge=1,
        le=10_000_000,
        description="Direct student: unlabelled candidates scored to choose each round's labels from.",
    )
    epochs: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Epochs of each later round, which starts from the last round's student "
        "(direct students); default half of training.epochs.",
    )
    snapshots: int = Field(
        default=4,
        ge=1,
        le=100,
        description="Relaxing student: frames of its own relaxation the teacher labels, last included.",
    )


class Student(Strict):
    """What the student is: the teacher's own first layers, or a small MACE from scratch.

    ``trunk`` (what ``auto`` picks when the teacher has layers to give: a
    SevenNet checkpoint or a MACE file): the teacher's embedding and first
    ``blocks`` interaction blocks, weights copied, and a new readout,
    fine-tuned to predict the teacher's relaxed energy from the unrelaxed
    candidate (:mod:`hts.models.student`).  ``direct`` (``auto`` for a black-box
    teacher: an ASE calculator, CHGNet): the same prediction by a small MACE
    trained from scratch.  Both are direct students: one forward pass per
    candidate, the prefilter runs with ``direct: true``.  ``relax``: a MACE
    force field the prefilter relaxes each candidate with.  The MACE fields
    (``channels`` … ``radial_mlp``) shape ``direct`` and ``relax`` students.
    """

    kind: Literal["auto", "trunk", "direct", "relax"] = "auto"
    blocks: int | None = Field(
        default=None,
        ge=1,
        le=20,
        description="Trunk student: interaction blocks copied from the teacher (fewer cost less "
        "per candidate); default: all of them.",
    )
    readout_hidden: int = Field(
        default=64, ge=4, le=1024, description="Trunk student: width of the heads' MLPs."
    )
    heads: int = Field(
        default=1,
        ge=1,
        le=32,
        description="Trunk student: MLP heads on the shared trunk, each trained on its own (an "
        "ensemble: their mean is the prediction, their spread the uncertainty; the trunk's "
        "pass, the cost, is shared).",
    )
    teacher_readout: bool = Field(
        default=True,
        description="Trunk student with every block: start the readout as the teacher's own, so "
        "the untrained student is the teacher's single point.",
    )
    channels: int = Field(default=32, ge=4, le=512)
    max_L: int = Field(default=0, ge=0, le=3)
    max_ell: int = Field(default=2, ge=1, le=4)
    correlation: int = Field(default=2, ge=1, le=4)
    interactions: int = Field(default=2, ge=1, le=4)
    r_max: float = Field(default=5.0, gt=1, le=10)
    radial_mlp: list[int] = Field(default=[32, 32, 32], min_length=1)
    pair_repulsion: bool = Field(
        default=True,
        description="Relaxing student: ZBL repulsion at short range, so it cannot collapse where "
        "it saw no data.",
    )
    init: str | None = Field(
        default=None,
        description="A direct student file to fine-tune (relative to this file) instead of "
        "training from scratch: its architecture and elements are kept, it trains for "
        "rounds.epochs (default half of training.epochs), and with data.stores the report "
        "compares it (before) with the fine-tuned student (after).",
    )


class Training(Strict):
    """mace-torch training; energy is weighted up because screening ranks by energy."""

    epochs: int = Field(default=100, ge=1, le=100_000)
    patience: int = Field(default=30, ge=1, description="Early stopping on validation loss.")
    batch_size: int = Field(default=8, ge=1, le=4096)
    lr: float = Field(default=0.01, gt=0, le=1)
    energy_weight: float = Field(default=10.0, ge=0)
    forces_weight: float = Field(default=10.0, ge=0)
    stress_weight: float = Field(default=10.0, ge=0)
    stage_two: bool = Field(
        default=True,
        description="mace's second stage (SWA): last ~25%% of epochs with energy weighted 1000, lower lr.",
    )
    ema: bool = Field(default=True, description="Exponential moving average of the weights.")
    e0s: Literal["average", "teacher"] = Field(
        default="average",
        description="Per-element energy baseline: a least-squares fit to the teacher's labels, or the teacher's isolated-atom energies.",
    )
    energy_window: float = Field(
        default=1.0,
        gt=0,
        description="eV/atom: labelled frames further above their relaxed minimum are not used.",
    )
    max_stress_gpa: float = Field(
        default=50.0, gt=0, description="Labelled frames under a larger stress are not used."
    )
    point_weight: float = Field(
        default=1.0,
        ge=0,
        description="Direct student: weight of the single-point labels (unrelaxed candidates, "
        "their own readout) against the relaxed-energy labels.",
    )
    huber_delta: float = Field(
        default=0.05, gt=0, description="Direct student: eV/atom where the Huber loss turns linear."
    )
    atom_weight: float = Field(
        default=1.0,
        ge=0,
        description="Trunk student: weight of the teacher's per-atom energies at its relaxed "
        "structure (labels the same teacher call gives) against the energy per atom.",
    )
    feature_weight: float = Field(
        default=0.0,
        ge=0,
        description="Trunk student: weight of matching the teacher's readout features at its "
        "relaxed structure (through a learned linear map).",
    )
    trunk_lr: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Trunk student: the copied layers' learning rate as a share of lr (the new "
        "readout's).",
    )
    freeze_blocks: int = Field(
        default=0,
        ge=0,
        le=20,
        description="Trunk student: the embedding and this many first blocks stay as the teacher "
        "trained them (no gradient: cheaper steps, nothing forgotten); 0 trains every layer, "
        "as many as the trunk has (or more) freezes it whole: its features are computed once "
        "and only the heads learn, in minutes.",
    )
    frozen_batch_size: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Trunk student with a frozen trunk: frames per step of the heads' training "
        "on cached features (cheap steps, so large ones, with a cosine decay over the epochs).",
    )
    augment: bool = Field(
        default=True,
        description="Direct student: also train on the teacher's relaxed structure, labelled with "
        "the relaxed energy like the unrelaxed start (the prediction then does not hinge on the "
        "exact starting geometry).",
    )
    dtype: Literal["float32", "float64"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(default=2, ge=1, le=256)
    resource: Literal["cpu", "gpu"] = "cpu"
    seed: int = 0


class Evaluation(Strict):
    """What the student is judged by, on the calibration systems."""

    stable_threshold: float | None = Field(
        default=None,
        ge=0,
        description="Teacher e_above_hull (eV/atom) counted as stable; default: the campaign's rescore keep threshold.",
    )
    target_recall: float = Field(
        default=0.95,
        gt=0,
        lt=1,
        description="keep: auto takes the smallest threshold whose one-sided lower confidence "
        "bound (Clopper-Pearson) on recall of teacher-stable candidates reaches this.",
    )
    confidence: float = Field(
        default=0.95, gt=0.5, lt=1, description="Confidence level of that bound."
    )
    target_discard: float = Field(
        default=0.8,
        ge=0,
        lt=1,
        description="Share of candidates the prefilter should discard at that threshold: "
        "rounds stop once both are met.",
    )
    speed_cells: int = Field(default=12, ge=1, le=1000, description="8–32-atom cells timed.")
    speed_repeats: int = Field(default=3, ge=1, le=50)


class Data(Strict):
    """Teacher results a campaign already produced, as extra training data (the flywheel).

    Each store's teacher-scored rows — the rescored survivors and the audited
    rejects (``stages.prefilter.audit``) — become direct-student examples: the
    unrelaxed candidate (regenerated from its source) and the teacher's relaxed
    structure, labelled with the teacher's relaxed energy.  A seeded share of
    them, fixed by each candidate's id, is never trained on: both students are
    judged there, survivors and audited rejects each weighted as the sample of
    the campaign they are.
    """

    stores: list[str] = Field(
        default=[],
        description="Campaign stores (relative to this file) whose rescore stage ran the teacher.",
    )
    holdout: float = Field(
        default=0.3,
        gt=0,
        lt=1,
        description="Share of the stores' teacher rows held out from training (by seed and "
        "candidate id): where the students before and after are compared.",
    )


class DistillConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=100)
    campaign: str = Field(description="Campaign file whose candidates, limits and site are used.")
    teacher: ModelSpec | None = Field(
        default=None, description="Default: the campaign's rescore model."
    )
    sampling: Sampling = Sampling()
    rounds: Rounds = Rounds()
    student: Student = Student()
    training: Training = Training()
    evaluation: Evaluation = Evaluation()
    data: Data = Data()
    output: str = Field(description="Folder for the dataset, training run, student and report.")
    chunk_size: int = Field(
        default=8, ge=1, le=100_000, description="Candidates per labelling task."
    )
    seed: int = 0

    base_dir: str = Field(default=".", exclude=True)

    @model_validator(mode="after")
    def _zero_budgets_need_stores(self) -> DistillConfig:
        if not self.data.stores:
            for name in ("train", "calibration"):
                if not getattr(self.sampling, name):
                    raise ValueError(
                        f"sampling.{name}: 0 needs data.stores to learn and calibrate from"
                    )
        if self.data.stores and self.student.kind == "relax":
            raise ValueError(
                "data.stores: a store holds the teacher's relaxed energies, not the forces a "
                "relaxing student learns: use student.kind: trunk or direct"
            )
        if self.student.init and self.student.kind == "relax":
            raise ValueError("student.init: fine-tuning is for direct (and trunk) students")
        if self.student.blocks is not None and self.student.kind in ("direct", "relax"):
            raise ValueError(f"student.blocks: only for trunk students, not {self.student.kind!r}")
        return self

    def student_kind(self, teacher: ModelSpec, init: Path | None = None) -> str:
        """``student.kind`` with ``auto`` resolved: a trunk where the teacher has one to give.

        With ``student.init`` the file decides (a trunk student, or a MACE one).
        """
        from hts.models.student import is_trunk_student, trunk_of

        kind = self.student.kind
        if kind == "auto" and init is not None:
            return "trunk" if is_trunk_student(init) else "direct"
        if kind == "auto":
            return "trunk" if trunk_of(teacher) is not None else "direct"
        if kind == "trunk" and trunk_of(teacher) is None:
            raise CampaignError(
                f"student.kind: trunk needs a teacher with layers to copy (a SevenNet checkpoint "
                f"or a MACE file), not {teacher.name!r}; use direct (a student from scratch)"
            )
        return kind

    def path(self, p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else Path(self.base_dir) / q

    def load_campaign(self) -> Campaign:
        return load_campaign(self.path(self.campaign))

    def resolved_teacher(self, campaign: Campaign) -> ModelSpec:
        if self.teacher is not None:
            t = self.teacher
            if t.path:
                t = t.model_copy(update={"path": str(self.path(t.path).resolve())})
            return t
        if campaign.stages.rescore is None:
            raise CampaignError(
                f"teacher: not given, and campaign {self.campaign} has no rescore stage to take it from"
            )
        t = campaign.stages.rescore.model
        if t.path:
            t = t.model_copy(update={"path": str(campaign.resolve_input(t.path).resolve())})
        return t

    def dataset_key(self, teacher: ModelSpec) -> str:
        """Labels are reusable while the teacher and what is sampled per candidate stay the same."""
        s = self.sampling.model_dump(mode="json", include=set(_PER_CANDIDATE))
        t = teacher.model_dump(mode="json", include={"name", "path", "dtype"})
        if teacher.name == "ase":  # which calculator, built how (other teachers' keys as before)
            t |= teacher.model_dump(mode="json", include={"calculator", "kwargs", "elements"})
        blob = json.dumps({"teacher": t, "sampling": s, "seed": self.seed}, sort_keys=True)
        return f"{teacher.name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def load_distill(path: str | Path) -> DistillConfig:
    """Read and validate a distillation file; :class:`CampaignError` names the file and every bad field.

    The same reader as campaign and site files (:mod:`hts.config`), so a bad
    distillation file reads like any other; relative paths in it are resolved
    against the file's own folder.
    """
    path = Path(path)
    data = read_mapping(path, "distillation file", CampaignError)
    return validate(
        DistillConfig,
        data,
        str(path),
        "distillation file",
        CampaignError,
        base_dir=str(path.resolve().parent),
    )
