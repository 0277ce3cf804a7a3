"""The student judged as the campaign will use it, on the calibration systems.

It screens the calibration candidates through the campaign's own prefilter
stage (:func:`hts.stages.screen.run_stage`, on the site's student workers), is
scored on its own hull (elemental references fitted on training candidates),
and compared with the teacher's ``e_above_hull`` over whole chemical systems,
where the hull is complete.  The numbers themselves come from
:mod:`hts.distill.evaluate` and :mod:`hts.distill.screening`.

In a space of one chemistry calibration draws compositions, not systems
(:attr:`~hts.distill.context.DistillRun.by`), and no sample holds the
campaign's hull: that is over every composition of the chemistry.  Both sides'
hulls are then over every teacher-labelled candidate the run holds
(calibration and training) with the teacher's elemental references (or the
student's fitted ones) as corners; the references are the lowest of fcc, bcc
and hcp, so the unary orderings would add nothing.  A hull over a sample lies
on or above the hull over the whole space, so ``e_above_hull`` here is
*under*estimated, most where the sample is thin (binaries are a few ‰ of a
quaternary space): candidates a few tens of meV/atom above the campaign's hull
count as teacher-stable here.  The student's hull lies above its campaign hull
alike (it scores the whole space there), so its ``e_above_hull`` is
underestimated too, and a threshold calibrated here tends to keep less in the
campaign than it keeps here: recall measured here errs high, the discarded
share low.  Calibration candidates carry the weights of their draw, so recall
and the discarded share stand for the space, not for the sample.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from hts.campaign.pool import Done
from hts.candidates.record import Candidate
from hts.distill.context import (
    DistillRun,
    num,
    path_frames,
    rescore_threshold,
    run_tasks,
    student_spec,
)
from hts.distill.evaluate import (
    error_decomposition,
    fit_references,
    formation_energies,
    hull_energies,
)
from hts.distill.screening import screening_metrics
from hts.spec import PrefilterStage
from hts.stages.screen import run_stage

__all__ = ["at_minimum", "evaluate_student", "screen"]

log = logging.getLogger("hts.distill")


def screen(run: DistillRun, stage, candidates: list[Candidate]) -> dict[str, float]:
    """The student's screening value per candidate (energy per atom), through the site's workers.

    A candidate the student could not score is NaN, and its reason is counted
    in ``run.failures`` for the report; a lost task leaves its candidates out.
    """
    size = max(run.cfg.chunk_size, 64 if getattr(stage, "direct", False) else 8)
    batches = [candidates[i : i + size] for i in range(0, len(candidates), size)]
    got: dict[str, float] = {}

    def scored(done: Done) -> None:
        if not done.ok:
            log.warning("student task failed: %s", done.error)
            return
        for rec in done.result.records:
            got[rec.id] = rec.energy_per_atom if rec.status == "ok" else float("nan")
            if rec.status != "ok":
                run.failures[rec.reason[:120]] += 1
        run.state.done += len(batches[done.tag])

    run_tasks(
        run.engine,
        run.student_label,
        [(run_stage, i, b, stage, run.campaign.seed) for i, b in enumerate(batches)],
        scored,
        lambda: run.progress(run.state),
    )
    return got


def at_minimum(run: DistillRun, ids: list[str]) -> list[Candidate]:
    """Each candidate at the teacher's relaxed structure (its last path frame)."""
    frames = path_frames(run, set(ids))
    out = []
    for cid in ids:
        if frames.get(cid):
            a = frames[cid][-1]
            c = run.cands[cid]
            out.append(
                Candidate(
                    id=cid,
                    source=c.source,
                    prototype=c.prototype,
                    numbers=np.asarray(a.numbers),
                    positions=np.asarray(a.positions),
                    cell=np.asarray(a.cell[:]),
                    formula=c.formula,
                    chemsys=c.chemsys,
                )
            )
    return out


def judged_sections(
    base, unseen, formulas, t_e, at_e, own_e, t_eh, s_eh, stable, ev, weights=None
) -> tuple[dict, dict]:
    """Screening metrics and the error decomposition on all judged rows, unseen and seen systems.

    ``base`` marks the rows judged, ``unseen`` those of held-out chemical
    systems (or compositions); ``weights`` (optional) are the rows' inverse
    inclusion probabilities (a store's survivors and audited rejects, the
    candidates of drawn compositions).
    """
    screening, errors = {}, {}
    for name, mask in (
        ("calibration", base),
        ("held_out_systems", base & unseen),
        ("seen_systems", base & ~unseen),
    ):
        screening[name] = screening_metrics(
            t_eh[mask],
            s_eh[mask],
            stable,
            ev.target_recall,
            ev.confidence,
            weights=None if weights is None else weights[mask],
        )
        errors[name] = error_decomposition(
            [f for f, m in zip(formulas, mask, strict=True) if m],
            t_e[mask],
            at_e[mask],
            own_e[mask],
            t_eh[mask],
            s_eh[mask],
        )
    return screening, errors


def evaluate_student(run: DistillRun, student_file: Path) -> dict:
    """The student as the campaign will use it, on the calibration systems.

    Returns the screening metrics and the error decomposition for the whole
    calibration set and its seen and held-out systems, both sides' references,
    one row per calibration candidate, and the student's model spec (for the
    report's timing; the caller pops it).
    """
    cfg, labels = run.cfg, run.labels
    spec = student_spec(run, student_file)
    pre_relax = run.campaign.stages.prefilter.relax
    own_stage = (
        PrefilterStage(model=spec, direct=True)
        if run.direct
        else PrefilterStage(model=spec, relax=pre_relax)
    )
    run.failures.clear()
    cal_ids = [c for c in dict.fromkeys([*run.primary, *run.closure]) if run.ok(c)]
    fit_ids = [c for c in run.train if c not in set(cal_ids)]
    run.phase("evaluating the student", len(cal_ids) + len(fit_ids) + len(cal_ids))
    own = screen(run, own_stage, [run.cands[c] for c in [*cal_ids, *fit_ids]])
    # the student's energy where the teacher ends: a single point at the teacher's minimum
    at_t = screen(run, PrefilterStage(model=spec, direct=True), at_minimum(run, cal_ids))

    t_refs = labels.references["teacher"]
    formulas = {c: labels.candidates[c]["formula"] for c in [*cal_ids, *fit_ids]}
    t_e = {c: labels.candidates[c]["energy_per_atom"] for c in formulas}
    # the student's elemental references, fitted on training candidates (see fit_references)
    fit_items = [(formulas[c], t_e[c]) for c in fit_ids]
    s_refs = fit_references(
        [formulas[c] for c in fit_ids],
        [own.get(c, float("nan")) for c in fit_ids],
        formation_energies(fit_items, t_refs),
        {el: t_refs.get(el, float("nan")) for el in run.elements},
    )
    run.student_refs = s_refs
    # whole systems with their subsystems hold their own hull; compositions do not (module doc)
    hull_ids = [*cal_ids, *fit_ids] if run.by == "formula" else cal_ids
    t_items = [(formulas[c], t_e[c]) for c in hull_ids]
    s_items = [(formulas[c], own.get(c, float("nan"))) for c in hull_ids]
    t_eh = hull_energies(t_items, t_refs)[: len(cal_ids)]
    s_eh = hull_energies(s_items, s_refs)[: len(cal_ids)]
    trained = set(run.train)
    primary = set(run.primary)
    held = np.array([c in primary and c not in trained for c in cal_ids])
    unseen = np.array([run.held(formulas[c], run.cands[c].chemsys) for c in cal_ids])
    weight = np.array([run.weights.get(c, 1.0) for c in cal_ids])
    stable = cfg.evaluation.stable_threshold
    if stable is None:
        stable = rescore_threshold(run.campaign)
    ev = cfg.evaluation
    t_arr = np.array([t_e[c] for c in cal_ids])
    own_arr = np.array([own.get(c, float("nan")) for c in cal_ids])
    at_arr = np.array([at_t.get(c, float("nan")) for c in cal_ids])
    f_list = [formulas[c] for c in cal_ids]
    # the hull is over every calibration candidate; the figures over the held-out ones
    screening, errors = judged_sections(
        held,
        unseen,
        f_list,
        t_arr,
        at_arr,
        own_arr,
        t_eh,
        s_eh,
        stable,
        ev,
        weights=weight if run.weights else None,
    )
    return {
        "screening": screening,
        "errors": errors,
        "references": {"teacher": t_refs, "student_fitted": s_refs},
        "candidates": [
            {
                "id": c,
                "formula": formulas[c],
                "system": "primary" if c in primary else "closure",
                "trained": c in trained,
                "held_out_system": bool(u),
                "weight": float(w),
                "teacher_energy_per_atom": num(t_e[c]),
                "student_energy_per_atom": num(own.get(c, float("nan"))),
                "student_at_teacher_minimum": num(at_t.get(c, float("nan"))),
                "teacher_e_above_hull": num(t),
                "student_e_above_hull": num(s),
            }
            for c, u, w, t, s in zip(cal_ids, unseen, weight, t_eh, s_eh, strict=True)
        ],
        "student_spec": spec,
    }
