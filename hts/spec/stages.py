"""The funnel's stages: the models they load, how they relax, what they keep, and DFT."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import (
    ConfigDict,
    Field,
    JsonValue,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hts.spec.base import HASHED_UNLESS_DEFAULT, NOT_HASHED, NOT_HASHED_SINCE_2026_12, Strict

__all__ = [
    "Distillation",
    "GpawSettings",
    "KeepRule",
    "ModelSpec",
    "PrefilterStage",
    "RelaxSettings",
    "RescoreStage",
    "Stages",
    "ValidateStage",
    "VaspSettings",
]


# "package.module:factory", the factory possibly an attribute path ("pkg.mod:Class.from_name")
_CALCULATOR_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


_FILE_MODELS = {"mace": "a MACE model file", "student": "a student file written by hts distill"}


class ModelSpec(Strict):
    """Which MLIP (or analytic potential) to load, and where it runs.

    ``name: ase`` wraps any ASE calculator: ``calculator`` names a factory
    (``package.module:factory``, a class or a function) that ``kwargs`` are
    passed to, so a model hts does not ship (a foundation model whose package
    offers an ASE calculator) can be a stage's model.  Only the form of the path
    is checked here: importing it may import torch and a model package, which
    parsing a campaign file (``hts status`` reads the one in a store) must not;
    ``hts validate`` and the start of a run import it
    (:func:`hts.models.ase_calculator.check_calculator`).
    """

    name: Literal[
        "sevennet-0", "sevennet-l3i5", "chgnet", "mace", "student", "emt", "lennard-jones", "ase"
    ]
    path: str | None = Field(
        default=None,
        description="Model file; required for mace (a MACE file) and student (a student file "
        "hts distill wrote: a trunk student, or a MACE one).",
    )
    calculator: str | None = Field(
        default=None,
        validate_default=True,
        description="For name ase (required there): 'package.module:factory', a class or "
        "function returning an ASE calculator, called with kwargs.",
        json_schema_extra=HASHED_UNLESS_DEFAULT,
    )
    kwargs: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="For name ase: keyword arguments of the calculator factory.",
        json_schema_extra=HASHED_UNLESS_DEFAULT,
    )
    elements: list[str] | None = Field(
        default=None,
        description="For name ase: the elements the calculator covers (a candidate with another "
        "fails with that reason); default: all.",
        json_schema_extra=HASHED_UNLESS_DEFAULT,
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", json_schema_extra=NOT_HASHED_SINCE_2026_12
    )
    threads: int = Field(
        default=1,
        ge=1,
        le=256,
        description="torch/OMP threads per worker.",
        json_schema_extra=NOT_HASHED_SINCE_2026_12,
    )
    batch_size: int = Field(
        default=16,
        ge=1,
        le=100_000,
        description="Structures per model call where the model batches.",
        json_schema_extra=NOT_HASHED_SINCE_2026_12,
    )
    batch_atoms: int | None = Field(
        default=None,
        ge=1,
        json_schema_extra=NOT_HASHED,
        description="At most this many atoms per model call in a relaxation, whatever "
        "batch_size allows: the limit that keeps a GPU's memory from overflowing on large cells.",
    )
    dtype: Literal["float32", "float64"] = "float64"

    @field_validator("calculator")
    @classmethod
    def _calculator_path(cls, v: str | None, info: ValidationInfo) -> str | None:
        name = info.data.get("name")
        if v is None:
            if name == "ase":
                raise ValueError(
                    "required for name 'ase': the calculator's factory as "
                    "'package.module:factory' (e.g. 'mace.calculators:mace_mp')"
                )
            return v
        if name is not None and name != "ase":
            raise ValueError(f"only used with name 'ase', not {name!r}")
        if not _CALCULATOR_PATH.match(v):
            raise ValueError(
                f"{v!r} is not 'package.module:factory' (a module's dotted path, a colon, then "
                "the name of a class or function in it, e.g. 'ase.calculators.emt:EMT')"
            )
        return v

    @field_validator("kwargs")
    @classmethod
    def _kwargs_only_for_ase(cls, v: dict, info: ValidationInfo) -> dict:
        name = info.data.get("name")
        if v and name is not None and name != "ase":
            raise ValueError(f"only used with name 'ase', not {name!r}")
        if bad := [k for k in v if not k.isidentifier()]:
            raise ValueError(f"{bad[0]!r} is not a keyword argument name")
        return v

    @field_validator("elements")
    @classmethod
    def _elements(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        from ase.data import atomic_numbers

        name = info.data.get("name")
        if v is None:
            return v
        if name is not None and name != "ase":
            raise ValueError(f"only used with name 'ase', not {name!r} (it knows its elements)")
        if not v:
            raise ValueError("empty: list the elements the calculator covers, or leave it out")
        for s in v:
            if s not in atomic_numbers or s == "X":
                raise ValueError(f"{s!r} is not a chemical element")
        if len(set(v)) != len(v):
            raise ValueError(f"repeated elements in {v}")
        return v

    @model_validator(mode="after")
    def _path_rules(self) -> ModelSpec:
        if self.name in _FILE_MODELS and not self.path:
            raise ValueError(f"path: required for name {self.name!r} ({_FILE_MODELS[self.name]})")
        if self.name not in _FILE_MODELS and self.path:
            raise ValueError(f"path: only used with name 'mace' or 'student', not {self.name!r}")
        if self.name == "ase":
            for f in ("device", "dtype"):
                if f in self.model_fields_set:
                    raise ValueError(
                        f"{f}: not used with name 'ase': the calculator's factory decides it "
                        f"(pass it in kwargs if the factory takes one)"
                    )
        return self


class RelaxSettings(Strict):
    """FIRE relaxation of positions (and the cell) for each candidate."""

    fmax: float = Field(default=0.05, gt=0, le=10, description="eV/Å (and eV/Å on the cell DOF).")
    max_steps: int = Field(default=300, ge=0, le=100_000)
    max_step: float = Field(default=0.2, gt=0, le=2.0, description="Largest move per step, Å.")
    cell: bool = Field(default=True, description="Relax the cell too.")
    cell_filter: Literal["frechet", "unit"] = Field(
        default="frechet",
        description="ASE's FrechetCellFilter (robust for large strains) or UnitCellFilter "
        "(same minimum, ~100x cheaper per step: for cheap potentials where the filter dominates).",
    )
    rattle: float = Field(
        default=0.0, ge=0, le=0.5, description="Seeded Gaussian noise (Å) on input positions."
    )
    pressure_tol: float | None = Field(
        default=None,
        gt=0,
        description="GPa: with the cell relaxing, converged also needs |pressure| at most this "
        "(fmax on the cell's degrees of freedom leaves soft solids at a residual pressure); "
        "None: fmax alone.",
        json_schema_extra=HASHED_UNLESS_DEFAULT,
    )

    @model_validator(mode="after")
    def _pressure_needs_cell(self) -> RelaxSettings:
        if self.pressure_tol is not None and not self.cell:
            raise ValueError(
                "pressure_tol: only with cell: true (a fixed cell cannot relieve its pressure)"
            )
        return self


_RULE_FIELDS = {"e_above_hull", "energy_per_atom", "n_atoms"}
_RULE_BOOL_FIELDS = {"converged"}
_RULE_TERM = re.compile(
    r"^\s*(?:(?P<not>not\s+)?(?P<bool>[a-z_]+)|(?P<field>[a-z_]+)\s*(?P<op><=|>=|<|>|==)\s*(?P<value>[-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?))\s*$"
)


class KeepRule(Strict):
    """A conjunction of comparisons, e.g. ``e_above_hull <= 0.1 and converged``."""

    text: str
    terms: tuple[tuple[str, str, float], ...]

    @classmethod
    def parse(cls, text: str) -> KeepRule:
        terms: list[tuple[str, str, float]] = []
        for part in re.split(r"\s+and\s+", text.strip()):
            m = _RULE_TERM.match(part)
            if not m:
                raise ValueError(
                    f"cannot read {part!r}: write comparisons like 'e_above_hull <= 0.1' joined by 'and'"
                )
            if m["bool"]:
                if m["bool"] not in _RULE_BOOL_FIELDS:
                    raise ValueError(f"{m['bool']!r} is not a yes/no field; known: converged")
                terms.append((m["bool"], "==", 0.0 if m["not"] else 1.0))
            else:
                if m["field"] not in _RULE_FIELDS:
                    raise ValueError(
                        f"unknown field {m['field']!r}; known: {', '.join(sorted(_RULE_FIELDS))}"
                    )
                terms.append((m["field"], m["op"], float(m["value"])))
        return cls(text=text, terms=tuple(terms))

    def __call__(self, values: dict[str, float]) -> bool:
        ops = {
            "<=": float.__le__,
            ">=": float.__ge__,
            "<": float.__lt__,
            ">": float.__gt__,
            "==": float.__eq__,
        }
        for field, op, ref in self.terms:
            v = float(values[field])
            if v != v or not ops[op](v, ref):  # NaN never passes
                return False
        return True


class Distillation(Strict):
    """Links a prefilter to the ``hts distill`` report of its student model."""

    report: str = Field(description="report.json written by `hts distill` for this student.")
    target_recall: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="keep: auto keeps this fraction of the teacher-stable held-out candidates.",
    )
    references: Literal["fitted", "relaxed"] = Field(
        default="fitted",
        description="Elemental references: fitted to the teacher's formation energies (the report's), "
        "or relaxed with the student (which never saw elemental phases).",
    )


class _KeepingStage(Strict):
    """A stage with a keep rule, written in the file as its text."""

    keep: KeepRule = KeepRule.parse("e_above_hull <= 0.1")

    @field_validator("keep", mode="before")
    @classmethod
    def _parse_rule(cls, v: object) -> object:
        if v == "auto":
            return v
        return KeepRule.parse(v) if isinstance(v, str) else v


class _RelaxStage(_KeepingStage):
    """A stage that relaxes each candidate with an MLIP and scores it against its own hull."""

    model: ModelSpec
    relax: RelaxSettings = RelaxSettings()
    resource: Literal["cpu", "gpu"] = Field(
        default="gpu",
        json_schema_extra=NOT_HASHED,
        description="Executor label for this stage: gpu goes to the site's GPU workers, or to its "
        "cpu executor on a site without GPUs.",
    )


class PrefilterStage(_RelaxStage):
    """Relax every candidate with a fast MLIP (the student), keep the promising ones.

    With ``distillation`` naming the student's report, its elemental
    references are the report's fitted ones, and ``keep: auto`` sets
    ``e_above_hull <= t`` with the smallest ``t`` that keeps
    ``distillation.target_recall`` of the held-out candidates the teacher
    finds stable.
    """

    keep: KeepRule | Literal["auto"] = KeepRule.parse("e_above_hull <= 0.1")
    distillation: Distillation | None = None
    direct: bool = Field(
        default=False,
        description="The model predicts the teacher's relaxed energy from the unrelaxed candidate "
        "(a direct student from hts distill): one forward pass per candidate, no relaxation.",
    )
    audit: float = Field(
        default=0.0,
        ge=0,
        le=0.5,
        json_schema_extra=HASHED_UNLESS_DEFAULT,
        description="Share of the prefilter's rejects the teacher rescores anyway, a random "
        "sample fixed by the seed and each candidate's id: the run's own measure of what the "
        "student misses (audited rows are not survivors). 0: no audit.",
    )

    @model_validator(mode="after")
    def _auto_needs_report(self) -> PrefilterStage:
        if self.keep == "auto" and self.distillation is None:
            raise ValueError(
                "keep: 'auto' needs distillation.report (the report.json of `hts distill`)"
            )
        if self.direct and "relax" in self.model_fields_set:
            raise ValueError(
                "relax: a direct prefilter does not relax (direct: true); remove relax or set "
                "direct: false"
            )
        return self


class RescoreStage(_RelaxStage):
    """Relax the prefilter's survivors again with the accurate MLIP (the teacher).

    The teacher's hull is built from its own elemental references and every
    rescored candidate; its keep rule decides what goes on to DFT.
    """

    keep: KeepRule = KeepRule.parse("e_above_hull <= 0.05")
    chunk_size: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Survivors per task; default chunk_size."
    )


class GpawSettings(Strict):
    """GPAW plane-wave DFT, run through an atomate2 ASE maker."""

    xc: Literal["PBE", "PBEsol", "LDA"] = "PBE"
    ecut: float = Field(
        default=600.0,
        ge=200,
        le=2000,
        description="Plane-wave cutoff (eV); oxides and fluorides need >= 600 or the stress is useless.",
    )
    kpoint_density: float = Field(
        default=3.5, gt=0, le=20, description="k-points per reciprocal Å (GPAW's kpts density)."
    )
    smearing: float = Field(default=0.05, ge=0, le=1, description="Fermi-Dirac width (eV).")
    spinpol: bool = Field(
        default=False, description="Spin-polarised candidates (the O2 reference always is)."
    )
    maxiter: int = Field(default=300, ge=1, le=10_000, description="SCF iterations per step.")


class VaspSettings(Strict):
    """VASP through atomate2's Materials-Project-compatible makers (the production path)."""

    input_set: Literal["mp-gga", "atomate2"] = Field(
        default="mp-gga",
        description="mp-gga: MPGGARelaxMaker/MPGGAStaticMaker (PBE(+U), comparable with the "
        "Materials Project); atomate2: RelaxMaker/StaticMaker (atomate2's PBEsol defaults).",
    )
    incar_updates: dict[str, str | int | float | bool | list[float]] = Field(
        default_factory=dict, description="INCAR tags set on top of the input set."
    )
    command: str = Field(
        default="vasp_std",
        description="VASP binary; the site's MPI launcher and the ranks are put in front of it.",
    )


class DftRelax(Strict):
    """The DFT relaxation before the static, when ``workflow: relax_static``."""

    fmax: float = Field(default=0.05, gt=0, le=10, description="eV/Å.")
    max_steps: int = Field(default=60, ge=2, le=10_000)
    cell: bool = True


class ValidateStage(_KeepingStage):
    """DFT for the best few: each a per-candidate atomate2 flow on the site's DFT executor.

    The candidates are the previous stage's survivors with the lowest
    ``e_above_hull`` (ties: lowest formation energy).  DFT formation energies
    and ``e_above_hull`` use elemental references computed with the same code
    and settings, once per campaign.
    """

    code: Literal["gpaw", "vasp"] = Field(
        default="gpaw", description="gpaw runs anywhere pip runs; vasp on clusters with a licence."
    )
    workflow: Literal["static", "relax_static"] = "relax_static"
    top: int = Field(default=3, ge=1, le=100_000, description="Validate at most this many.")
    max_e_above_hull: float | None = Field(
        default=None,
        ge=0,
        description="Only candidates at most this far above the previous stage's hull.",
    )
    relax: DftRelax = DftRelax()
    gpaw: GpawSettings = GpawSettings()
    vasp: VaspSettings = VaspSettings()
    ranks: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="MPI ranks per DFT job; default the site's.",
        json_schema_extra=NOT_HASHED_SINCE_2026_12,
    )
    walltime_s: float = Field(
        default=3600,
        gt=0,
        description="A job running longer is killed and failed.",
        json_schema_extra=NOT_HASHED_SINCE_2026_12,
    )
    retries: int = Field(
        default=2,
        ge=0,
        le=5,
        description="Re-runs with adjusted settings after an SCF or relaxation failure.",
    )
    keep: KeepRule = KeepRule.parse("e_above_hull <= 0.05")
    resource: Literal["dft", "cpu"] = Field(
        default="dft",
        description="Executor label the site must supply for this stage.",
        json_schema_extra=NOT_HASHED,
    )

    def code_settings(self) -> GpawSettings | VaspSettings:
        return getattr(self, self.code)


class Stages(Strict):
    # ``validate`` would shadow BaseModel.validate: the field is validate_, spelled validate in files
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=True, serialize_by_alias=True
    )

    prefilter: PrefilterStage
    rescore: RescoreStage | None = None
    validate_: ValidateStage | None = Field(default=None, alias="validate")

    @model_validator(mode="after")
    def _auto_needs_rescore(self) -> Stages:
        if self.prefilter.audit and self.rescore is None:
            raise ValueError(
                "prefilter.audit: the audit sends rejects to the teacher, and there is no "
                "rescore stage: add one or set audit: 0"
            )
        if self.prefilter.keep == "auto" and self.rescore is None:
            raise ValueError(
                "prefilter.keep: 'auto' picks a threshold for the teacher's stable candidates; "
                "add a rescore stage with the teacher"
            )
        return self

    def names(self) -> list[str]:
        """The stages this campaign runs, in funnel order (the store's stage coordinate)."""
        return [*self.mlip_names(), *(["validate"] if self.validate_ is not None else [])]

    def get(self, name: str):
        """A stage by its name in the file (``validate`` is stored as ``validate_``)."""
        return self.validate_ if name == "validate" else getattr(self, name)

    def mlip_names(self) -> list[str]:
        """The stages that relax with an MLIP and keep their own hull."""
        return [n for n in ("prefilter", "rescore") if getattr(self, n) is not None]
