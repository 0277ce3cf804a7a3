"""The campaign resolved once, at start-up: everything a run reads from outside the campaign file.

A validated :class:`~hts.spec.Campaign` still points at files: model files,
distillation reports (``keep: auto``, fitted references, the student's kind),
reference entries.  :func:`resolve` reads each of them once, checks them, and
returns a frozen :class:`ResolvedCampaign`; the driver, the reference book and
the scorers never open those files again, so a report edited mid-run cannot
change half a campaign.  Every problem is a :class:`~hts.spec.CampaignError`
naming the field, raised before any task is submitted (``hts validate`` runs
the same checks).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from dataclasses import dataclass, field

from hts.candidates import ensure_not_empty
from hts.spec import Campaign, CampaignError, ValidateStage

__all__ = ["ResolvedCampaign", "preflight", "resolve", "results_hash"]


@dataclass(frozen=True)
class ResolvedCampaign:
    """A campaign plus what its files said, read once.

    Attributes
    ----------
    campaign
        The campaign as validated (the basis of its hash and of what the store records).
    stages
        The MLIP stages in funnel order, each with its model file made absolute
        (workers may run in another directory) and ``keep: auto`` replaced by the
        threshold its distillation report calibrates.
    validate
        The DFT stage, or None.
    entries
        The user's reference entries (``hull.reference_entries``).
    fitted
        Per stage with ``references: fitted``: element → reference energy per
        atom from its distillation report (NaN where the report has none).
    hash
        :func:`results_hash`: what a store checks before resuming.
    """

    campaign: Campaign
    stages: dict[str, object]
    validate: ValidateStage | None
    entries: list = field(default_factory=list)
    fitted: dict[str, dict[str, float]] = field(default_factory=dict)
    hash: str = ""

    @property
    def source_elements(self) -> list[str]:
        """Every element the source can place (none for file sources: found per chunk)."""
        spec = self.campaign.candidates
        if spec.kind in ("enumeration", "random"):
            return spec.elements
        if spec.kind != "substitution":
            return []
        els: set[str] = set()
        for table in [spec.elements, *[p.elements or {} for p in spec.prototypes]]:
            for symbols in table.values():
                els.update(symbols)
        return sorted(els)


def _load_user_entries(campaign: Campaign) -> list:
    path = campaign.hull.reference_entries
    if not path:
        return []
    from monty.serialization import loadfn
    from pymatgen.analysis.phase_diagram import PDEntry
    from pymatgen.entries.computed_entries import ComputedEntry

    p = campaign.resolve_input(path)
    try:
        data = loadfn(p)
    except Exception as err:
        raise CampaignError(f"hull.reference_entries: cannot read {p}: {err}") from None
    if not isinstance(data, list) or not all(isinstance(e, ComputedEntry | PDEntry) for e in data):
        raise CampaignError(
            f"hull.reference_entries: {p} must hold a JSON list of pymatgen ComputedEntry/PDEntry objects"
        )
    bad = [e for e in data if not math.isfinite(float(e.energy))]
    if bad:
        raise CampaignError(
            f"hull.reference_entries: {p}: {len(bad)} entr{'y' if len(bad) == 1 else 'ies'} "
            f"without a finite energy (first: {bad[0].composition.reduced_formula})"
        )
    return data


def _stress_needed(campaign: Campaign, name: str, fitted: bool) -> str | None:
    """What relaxes the cell with this stage's model, in the file's words; None if nothing does."""
    stage = campaign.stages.get(name)
    if stage.relax.cell and not getattr(stage, "direct", False):
        return f"stages.{name}.relax.cell is true"
    if campaign.hull.model_references and not fitted:
        return "hull.model_references is true: the elemental references relax their cell"
    return None


def _check_calculator(campaign: Campaign, name: str, fitted: bool) -> None:
    """An ``ase`` model's factory: importable, callable, taking its kwargs, with stress if needed.

    Imports the user's package (perhaps torch with it) here, at ``hts validate``
    and the start of a run, not when the file is parsed: a typo then fails in
    seconds, before a cluster's queue is waited on, while reading a campaign
    (``hts status`` reads the store's) stays light.
    """
    from hts.models.ase_calculator import ModelSpecError, check_calculator

    spec = campaign.stages.get(name).model
    try:
        check_calculator(spec, _stress_needed(campaign, name, fitted))
    except ModelSpecError as err:
        raise CampaignError(err.at(f"stages.{name}.model")) from None


def _resolved_stage(campaign: Campaign, name: str) -> tuple[object, dict[str, float] | None]:
    """One MLIP stage with its files read: (the stage, its fitted references or None)."""
    stage = campaign.stages.get(name)
    update: dict = {}
    fitted = None
    if stage.model.path:
        p = campaign.resolve_input(stage.model.path).resolve()
        if not p.is_file():
            raise CampaignError(f"stages.{name}.model.path: no such model file {p}")
        update["model"] = stage.model.model_copy(update={"path": str(p)})
    link = getattr(stage, "distillation", None)
    if link is not None:
        from hts.distill.evaluate import (
            ReportError,
            auto_keep_rule,
            fitted_references,
            student_kind,
        )

        report = campaign.resolve_input(link.report)
        try:
            kind = student_kind(report)
            direct = kind in ("direct", "trunk")
            if kind is not None and direct != bool(getattr(stage, "direct", False)):
                raise CampaignError(
                    f"stages.{name}.direct: the report's student is "
                    + (
                        "a direct student (it predicts relaxed energies from unrelaxed "
                        "candidates): set direct: true"
                        if direct
                        else "a relaxing student (a force field): set direct: false"
                    )
                )
            if stage.keep == "auto":
                update["keep"] = auto_keep_rule(report, link.target_recall)
            if link.references == "fitted":
                fitted = {
                    el: float("nan") if e is None else float(e)
                    for el, e in fitted_references(report).items()
                }
        except ReportError as err:
            raise CampaignError(f"stages.{name}.distillation.report: {err}") from None
    if stage.model.name == "ase":
        _check_calculator(campaign, name, fitted is not None)
    return (stage.model_copy(update=update) if update else stage), fitted


def results_hash(campaign: Campaign, legacy: bool = False) -> str:
    """The campaign's content hash, extended by the distillation reports it reads.

    ``keep: auto`` and fitted references come from a report file, so a
    retrained student's report changes results just as an edited campaign does.
    ``legacy``: the hash hts 2026.11 and earlier gave it (still accepted by a store).
    """
    base = campaign.legacy_hash() if legacy else campaign.content_hash()
    reports = [
        campaign.resolve_input(link.report)
        for name in campaign.stages.mlip_names()
        if (link := getattr(campaign.stages.get(name), "distillation", None)) is not None
    ]
    if not reports:
        return base
    h = hashlib.sha256(base.encode())
    for p in reports:
        h.update(p.read_bytes() if p.is_file() else b"missing")
    return h.hexdigest()[:16]


def resolve(campaign: Campaign) -> ResolvedCampaign:
    """Read every file the campaign names, once; :class:`CampaignError` on the first bad one."""
    stages: dict[str, object] = {}
    fitted: dict[str, dict[str, float]] = {}
    for name in campaign.stages.mlip_names():
        stages[name], table = _resolved_stage(campaign, name)
        if table is not None:
            fitted[name] = table
    return ResolvedCampaign(
        campaign=campaign,
        stages=stages,
        validate=campaign.stages.validate_,
        entries=_load_user_entries(campaign),
        fitted=fitted,
        hash=results_hash(campaign),
    )


def preflight(campaign: Campaign) -> ResolvedCampaign:
    """Every check that needs no model and no worker (``hts validate`` and the start of a run).

    Returns the resolved campaign, so a run resolves exactly once.
    """
    ensure_not_empty(campaign)
    resolved = resolve(campaign)
    v = campaign.stages.validate_
    if v is not None and v.code == "gpaw" and importlib.util.find_spec("gpaw") is None:
        raise CampaignError(
            "stages.validate.code: gpaw is not installed in this environment "
            "(`make setup` builds it; by hand: apt-get install libxc-dev libopenblas-dev "
            "libfftw3-dev, then GPAW_CONFIG=containers/gpaw/siteconfig.py pip install '.[dft]')"
        )
    _check_references(resolved)
    return resolved


def _check_references(r: ResolvedCampaign) -> None:
    """Refuse a campaign whose hull can never have an elemental reference for some element.

    With ``hull.model_references: false`` the references come only from
    ``hull.reference_entries`` (or a stage's fitted ones); an element without
    one fails every candidate containing it, which a user should hear before
    the run, not from a store full of failures.
    """
    c = r.campaign
    if c.hull.model_references:
        return
    have = {e.composition.elements[0].symbol for e in r.entries if len(e.composition.elements) == 1}
    wanted = set(r.source_elements)
    for name in c.stages.mlip_names():
        fitted = {el for el, e in r.fitted.get(name, {}).items() if e == e}  # not NaN
        covered = have | fitted
        missing = sorted(wanted - covered)
        if missing or not covered:
            what = ", ".join(missing) if missing else "any element"
            where = "hull.reference_entries" if c.hull.reference_entries else "no reference file"
            raise CampaignError(
                f"hull.model_references is false and there is no elemental reference for {what} "
                f"(stage {name}; {where}): every candidate containing it would fail. Set "
                "hull.model_references: true, or add elemental entries to hull.reference_entries"
            )
