"""Campaign file → validated settings.

A campaign is parsed once, up front, into frozen pydantic models with
``extra="forbid"``; every problem is reported with its path in the file
(``stages.prefilter.relax.fmax: must be > 0``) before any work starts.  The
resulting :class:`Campaign` is the one settings object passed to every part of
the engine; nothing reads global configuration.

The models live by topic: :mod:`hts.spec.sources` (candidates),
:mod:`hts.spec.stages` (models, relaxation, keep rules, DFT) and, here, the
campaign itself, its hash and the loaders.  Everything is importable from
``hts.spec``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import Field, model_validator

from hts.config import read_mapping, validate
from hts.spec.base import NOT_HASHED, NOT_HASHED_SINCE_2026_12, CampaignError, Strict, unhashed
from hts.spec.sources import (
    CandidateSource,
    EnumerationSource,
    FileSource,
    PrototypeChoice,
    RandomSource,
    StructureSource,
    SubstitutionSource,
)
from hts.spec.stages import (
    Distillation,
    GpawSettings,
    KeepRule,
    ModelSpec,
    PrefilterStage,
    RelaxSettings,
    RescoreStage,
    Stages,
    ValidateStage,
    VaspSettings,
)

__all__ = [
    "NOT_HASHED",
    "NOT_HASHED_SINCE_2026_12",
    "Campaign",
    "CampaignError",
    "CandidateSource",
    "Distillation",
    "EnumerationSource",
    "FileSource",
    "GpawSettings",
    "HullSettings",
    "KeepRule",
    "Limits",
    "ModelSpec",
    "PrefilterStage",
    "PrototypeChoice",
    "RandomSource",
    "RelaxSettings",
    "RescoreStage",
    "Stages",
    "Strict",
    "StructureSource",
    "SubstitutionSource",
    "ValidateStage",
    "VaspSettings",
    "load_campaign",
    "parse_campaign",
]


class HullSettings(Strict):
    """What the convex hull is built from, besides every candidate scored so far."""

    model_references: bool = Field(
        default=True, description="Relax elemental reference phases with the stage's model."
    )
    reference_entries: str | None = Field(
        default=None, description="JSON file of pymatgen ComputedEntry/PDEntry objects."
    )


class Limits(Strict):
    max_candidates: int | None = Field(default=None, ge=1, description="Stop after this many.")
    max_atoms: int = Field(default=64, ge=1, le=10_000, description="Larger inputs are failed.")
    min_distance: float = Field(
        default=0.5, gt=0, lt=5, description="Closer atom pairs (Å) mark an input as overlapping."
    )
    max_in_flight: int | None = Field(
        default=None,
        ge=1,
        description="Chunks submitted but not done; default 2 × workers.",
        json_schema_extra=NOT_HASHED,
    )
    task_retries: int = Field(default=1, ge=0, le=10, json_schema_extra=NOT_HASHED)


class Campaign(Strict):
    """One screening campaign: where candidates come from, how they are judged, where results go."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=100)
    description: str = Field(default="", json_schema_extra=NOT_HASHED)
    candidates: CandidateSource
    stages: Stages
    hull: HullSettings = HullSettings()
    store: str = Field(
        description="Path of the Zarr store (relative to the working directory).",
        json_schema_extra=NOT_HASHED,
    )
    site: str = Field(
        default="local",
        description="Name of a sites/*.yaml file or a path to one.",
        json_schema_extra=NOT_HASHED,
    )
    chunk_size: int = Field(default=64, ge=1, le=1_000_000)
    limits: Limits = Limits()
    seed: int = Field(default=0, ge=0)

    # Where the file was read from, so relative input paths resolve next to it.
    base_dir: str = Field(default=".", exclude=True)

    @model_validator(mode="after")
    def _cells_fit(self) -> Campaign:
        spec = self.candidates
        if spec.kind == "enumeration" and spec.max_atoms > self.limits.max_atoms:
            raise ValueError(
                f"candidates.max_atoms = {spec.max_atoms} exceeds limits.max_atoms = "
                f"{self.limits.max_atoms}: every larger cell would fail"
            )
        return self

    def resolve_input(self, path: str) -> Path:
        """Input files are relative to the campaign file, not to where ``hts`` runs."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    def content_hash(self) -> str:
        """Hash of everything that changes results; fields marked :data:`NOT_HASHED` are left out.

        A store remembers the hash of the campaign that wrote it, so resuming with
        a changed campaign is refused instead of silently mixing results, while
        where it runs (site, store path, executor labels, batching limits) may change.
        """
        return self._hash(legacy=False)

    def legacy_hash(self) -> str:
        """The hash hts 2026.11 and earlier gave this campaign (it also covered where the work
        ran: devices, threads, batch sizes, DFT ranks and walltime); stores they created carry it."""
        return self._hash(legacy=True)

    def _hash(self, legacy: bool) -> str:
        data = self.model_dump(mode="json", exclude=unhashed(self, legacy))
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parse_campaign(data: object, source: str = "<campaign>", base_dir: str = ".") -> Campaign:
    """Validate a campaign mapping; raise :class:`CampaignError` naming every bad field."""
    return validate(Campaign, data, source, "campaign file", CampaignError, base_dir=base_dir)


def load_campaign(path: str | Path) -> Campaign:
    """Read and validate a campaign YAML file."""
    path = Path(path)
    data = read_mapping(path, "campaign file", CampaignError)
    return parse_campaign(data, source=str(path), base_dir=str(path.resolve().parent))
