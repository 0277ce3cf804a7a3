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

import yaml
from pydantic import Field, ValidationError, model_validator

from hts.spec import (
    Campaign,
    CampaignError,
    ModelSpec,
    RelaxSettings,
    _format_errors,
    _Strict,
    load_campaign,
)

__all__ = ["DistillConfig", "load_distill"]


class Sampling(_Strict):
    """Which structures the teacher labels: the relaxation path of sampled candidates, plus perturbations."""

    candidates: int = Field(
        default=200, ge=4, le=1_000_000, description="Candidates sampled (stratified)."
    )
    pool: int = Field(
        default=20_000,
        ge=4,
        description="Candidates enumerated from the source to sample from (large sources are not walked to the end).",
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


class Split(_Strict):
    """Held-out candidates are whole groups, so test scores measure transfer to unseen chemistry."""

    by: Literal["chemsys", "prototype"] = "chemsys"
    valid: float = Field(default=0.1, ge=0, lt=0.5)
    test: float = Field(default=0.25, gt=0, lt=0.6)


class Student(_Strict):
    """A small MACE: invariant messages (max_L 0) are several times cheaper than the teacher."""

    channels: int = Field(default=32, ge=4, le=512)
    max_L: int = Field(default=0, ge=0, le=3)
    max_ell: int = Field(default=3, ge=1, le=4)
    correlation: int = Field(default=3, ge=1, le=4)
    interactions: int = Field(default=2, ge=1, le=4)
    r_max: float = Field(default=5.0, gt=1, le=10)
    radial_mlp: list[int] = Field(default=[32, 32, 32], min_length=1)
    pair_repulsion: bool = Field(
        default=True,
        description="ZBL repulsion at short range, so the student cannot collapse where it saw no data.",
    )


class Training(_Strict):
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
    dtype: Literal["float32", "float64"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(default=2, ge=1, le=256)
    resource: Literal["cpu", "gpu"] = "cpu"
    seed: int = 0


class Evaluation(_Strict):
    stable_threshold: float | None = Field(
        default=None,
        ge=0,
        description="Teacher e_above_hull (eV/atom) counted as stable; default: the campaign's rescore keep threshold.",
    )
    target_recall: float = Field(default=0.95, gt=0, le=1)
    speed_cells: int = Field(default=12, ge=1, le=1000, description="8–32-atom cells timed.")
    speed_repeats: int = Field(default=3, ge=1, le=50)


class DistillConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=100)
    campaign: str = Field(description="Campaign file whose candidates, limits and site are used.")
    teacher: ModelSpec | None = Field(
        default=None, description="Default: the campaign's rescore model."
    )
    sampling: Sampling = Sampling()
    split: Split = Split()
    student: Student = Student()
    training: Training = Training()
    evaluation: Evaluation = Evaluation()
    output: str = Field(description="Folder for the dataset, training run, student and report.")
    chunk_size: int = Field(
        default=8, ge=1, le=100_000, description="Candidates per labelling task."
    )
    seed: int = 0

    base_dir: str = Field(default=".", exclude=True)

    @model_validator(mode="after")
    def _split_leaves_training(self) -> DistillConfig:
        if self.split.valid + self.split.test >= 0.8:
            raise ValueError("split: valid + test must leave at least 20 % for training")
        return self

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
        s = self.sampling.model_dump(mode="json", exclude={"candidates", "pool"})
        t = teacher.model_dump(mode="json", include={"name", "path", "dtype"})
        blob = json.dumps({"teacher": t, "sampling": s, "seed": self.seed}, sort_keys=True)
        return f"{teacher.name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def load_distill(path: str | Path) -> DistillConfig:
    """Read and validate a distillation file; :class:`CampaignError` names every bad field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise CampaignError(f"{path}: cannot read distillation file ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise CampaignError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise CampaignError(f"{path}: a distillation file must be a mapping of fields")
    try:
        return DistillConfig.model_validate({**data, "base_dir": str(path.resolve().parent)})
    except ValidationError as err:
        raise CampaignError(
            _format_errors(err, str(path)).replace("campaign file", "distillation file")
        ) from None
