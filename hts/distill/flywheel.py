"""The flywheel: where a student before and after fine-tuning on a campaign's stores is judged.

A seeded share of the stores' teacher rows (``data.holdout``, by candidate id)
is never trained on.  :func:`evaluate_on_stores` judges a student there as
the campaign would use it: it screens every row of the stores (its hull is
over all of them, with elemental references fitted on the training rows), and
compares its ``e_above_hull`` with the teacher's.  The held-out rows are a
stratified sample of the campaign — every survivor had its teacher result, an
audited reject stands for ``rejects / audited`` rejects — so recall and
discarded share are weighted by those inverse inclusion probabilities, and
the Clopper–Pearson bound uses the effective number of teacher-stable
candidates (:func:`hts.distill.screening.screening_metrics`).  Without an
audit the rejects are unseen and the figures cover the survivors only (the
report says which).  :func:`flywheel_section` is the report's comparison.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from hts.distill.calibration import judged_sections, screen
from hts.distill.context import DistillRun, num, rescore_threshold, student_spec
from hts.distill.evaluate import fit_references, hull_energies
from hts.distill.report import ReportError, auto_keep_rule
from hts.distill.screening import THRESHOLDS
from hts.distill.stores import StoreRows, store_elements
from hts.distill.training import store_training
from hts.spec import PrefilterStage

__all__ = ["compare", "evaluate_on_stores", "flywheel_section", "weigh"]


def weigh(data: StoreRows, exclude: set[str]) -> None:
    """Population weights of the held-out teacher rows (rows in ``exclude`` were trained on).

    Per store, a held-out survivor stands for ``survivors / held-out
    survivors`` and a held-out audited reject for ``rejects / held-out audited
    rejects``; rescored rows the final hull dropped are no random sample and
    are left out of the evaluation.
    """
    counts: dict[tuple, int] = {}
    totals: dict[tuple, int] = {}
    for cid, v in data.teacher.items():
        store, kind, n_rejects = v["_strata"]
        key = (store, kind)
        if kind == "survivor":
            totals[key] = totals.get(key, 0) + 1
        else:
            totals[key] = n_rejects
        if v["held"] and cid not in exclude:
            counts[key] = counts.get(key, 0) + 1
    for cid, v in data.teacher.items():
        store, kind, _ = v["_strata"]
        key = (store, kind)
        ok = v["held"] and cid not in exclude and kind != "rescored"
        v["weight"] = totals[key] / counts[key] if ok else 0.0


def evaluate_on_stores(run, student_file: Path, data: StoreRows) -> dict:
    """A student on the stores' held-out teacher rows, weighted: the shape of ``evaluate_student``.

    The student screens every row of the stores (one forward pass each), its
    references are fitted on the training rows, its hull is over all of them;
    ``screening`` and ``errors`` cover the held-out rows (``calibration``) and
    those of seen and held-out chemical systems.
    """
    cfg = run.cfg
    weigh(data, set(run.train))  # what the dataset trained on is no test
    spec = student_spec(run, student_file)
    stage = PrefilterStage(model=spec, direct=True)
    run.failures.clear()
    run.phase("evaluating on the stores", 2 * len(data.screened))
    own = screen(run, stage, list(data.screened.values()))
    ev_ids = data.evaluated()
    at_t = screen(run, stage, [data.teacher[c]["relaxed"] for c in ev_ids])
    fit_ids = data.training(run.held)
    refs = {el: data.references.get(el, float("nan")) for el in store_elements(data)}
    s_refs = fit_references(
        [data.teacher[c]["formula"] for c in fit_ids],
        [own.get(c, float("nan")) for c in fit_ids],
        [data.teacher[c]["formation_energy"] for c in fit_ids],
        refs,
    )
    run.student_refs = s_refs
    ids = list(data.screened)
    s_all = hull_energies(
        [(data.screened[c].formula, own.get(c, float("nan"))) for c in ids], s_refs
    )
    s_eh = dict(zip(ids, s_all, strict=True))
    t = data.teacher
    stable = cfg.evaluation.stable_threshold
    if stable is None:
        stable = rescore_threshold(run.campaign)
    ev = cfg.evaluation
    t_eh = np.array([t[c]["e_above_hull"] for c in ev_ids])
    st_eh = np.array([s_eh.get(c, np.nan) for c in ev_ids])
    w = np.array([t[c]["weight"] for c in ev_ids])
    t_e = np.array([t[c]["energy_per_atom"] for c in ev_ids])
    own_e = np.array([own.get(c, np.nan) for c in ev_ids])
    at_e = np.array([at_t.get(c, np.nan) for c in ev_ids])
    unseen = np.array([run.held(t[c]["formula"], t[c]["chemsys"]) for c in ev_ids], dtype=bool)
    everything = np.ones(len(ev_ids), bool)
    screening, errors = judged_sections(
        everything,
        unseen,
        [t[c]["formula"] for c in ev_ids],
        t_e,
        at_e,
        own_e,
        t_eh,
        st_eh,
        stable,
        ev,
        weights=w,
    )
    return {
        "screening": screening,
        "errors": errors,
        "references": {"teacher": refs, "student_fitted": s_refs},
        "candidates": [
            {
                "id": c,
                "formula": t[c]["formula"],
                "system": t[c]["kind"],
                "trained": False,
                "held_out_system": bool(u),
                "weight": float(wi),
                "teacher_energy_per_atom": num(te),
                "student_energy_per_atom": num(oe),
                "student_at_teacher_minimum": num(ae),
                "teacher_e_above_hull": num(a),
                "student_e_above_hull": num(b),
            }
            for c, u, wi, te, oe, ae, a, b in zip(
                ev_ids, unseen, w, t_e, own_e, at_e, t_eh, st_eh, strict=True
            )
        ],
        "student_spec": spec,
    }


def compare(results: dict[str, tuple[str, dict, dict[str, float | None]]]) -> dict:
    """The report's ``flywheel`` section: each student on the held-out store rows.

    ``results``: name → (student file, :func:`evaluate_on_stores`'s answer,
    more thresholds by label: its own report's, the first student's).  Per
    student: the weighted screen at the threshold calibrated on these rows and
    at each of those, and the held-out audited rejects the teacher keeps (what
    the campaign's prefilter missed) that it would keep.
    """
    out: dict = {}
    for name, (path, res, more) in results.items():
        m = res["screening"]["calibration"]
        rows = res["candidates"]
        stable = m["stable_threshold"] + 1e-9
        missed = [
            r for r in rows if r["system"] == "audit" and _le(r["teacher_e_above_hull"], stable)
        ]
        entry = {
            "student": path,
            "n_candidates": m["n_candidates"],
            "n_teacher_stable": m["n_teacher_stable"],
            "n_effective": m["n_effective"],
            "spearman_e_above_hull": m["spearman_e_above_hull"],
            "ehull_mae_mev_per_atom": m["ehull_mae_mev_per_atom"],
            "own_energy_mae_mev": res["errors"]["calibration"]["own_energy_mae_mev"],
            "audit_missed": len(missed),
        }
        for key, thr in {"calibrated": m["threshold"], **more}.items():
            if thr is None:
                entry[key] = None
                continue
            k = int(np.argmin(np.abs(THRESHOLDS - thr)))
            c = m["curve"]
            entry[key] = {
                "threshold": float(thr),
                "recall": c["recall"][k],
                "recall_lower_bound": c["recall_lower_bound"][k],
                "discarded": c["discarded"][k],
                "audit_missed_found": sum(
                    1 for r in missed if _le(r["student_e_above_hull"], thr + 1e-9)
                ),
            }
        out[name] = entry
    return out


def _le(x, limit: float) -> bool:
    return x is not None and x <= limit


def flywheel_section(
    run: DistillRun, report: dict, init: Path | None, final: Path, result: dict
) -> dict:
    """Before (``student.init``) and after, on the stores' held-out teacher rows."""
    assert run.stores is not None
    target = run.cfg.evaluation.target_recall
    after = result if not run.primary else evaluate_on_stores(run, final, run.stores)
    after.pop("student_spec", None)
    mine = {"own_report": report["screening"]["calibration"]["threshold"]}
    results = {"after": ("student.model", after, mine)}
    if init is not None:
        before = evaluate_on_stores(run, init, run.stores)
        own = None
        # the threshold the first student's own report calibrated, when it has one: both
        # students are also compared there, at one threshold
        with contextlib.suppress(ReportError, IndexError):
            own = auto_keep_rule(init.parent / "report.json", target).terms[0][2]
        results = {
            "before": (str(init), before, {"own_report": own, "init_threshold": own}),
            "after": ("student.model", after, {**mine, "init_threshold": own}),
        }
    return {
        "stores": run.stores.summary,
        "held_out_share": run.cfg.data.holdout,
        "trained_on": len(store_training(run)),
        "population": "held-out survivors and audited rejects, weighted"
        if any(s["audited"] for s in run.stores.summary)
        else "held-out survivors only (the stores have no audit: rejects unseen)",
        **compare(results),
    }
