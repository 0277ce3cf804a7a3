"""How good is the student, as a force field and as a prefilter for its teacher?

Force-field errors are measured on the held-out frames (whole chemical
systems or prototypes the student never saw).  Screening quality compares the
two models where the funnel uses them: each relaxes the sampled candidates and
scores them on its own hull (its own elemental references), and we ask how
well the student's ``e_above_hull`` ranks the teacher's (Spearman) and, for a
prefilter threshold ``t``, which fraction of the teacher-stable held-out
candidates survives (recall) and which fraction of all is discarded.  ``keep:
auto`` in a campaign reads that curve back (:func:`auto_keep_rule`).

This module holds the energies and hulls, the student's fitted references and
the error decomposition; its neighbours hold the rest, re-exported here so
``hts.distill.evaluate`` stays the one place to import from:
:mod:`~hts.distill.screening` (recall curve, confidence bound, threshold),
:mod:`~hts.distill.report` (the report written and read back),
:mod:`~hts.distill.speed` (student against teacher) and
:mod:`~hts.distill.plots` (the figures).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import numpy as np

from hts.distill.plots import plot_report
from hts.distill.report import (
    ReportError,
    auto_keep_rule,
    fitted_references,
    markdown,
    student_kind,
)
from hts.distill.screening import (
    THRESHOLDS,
    at_threshold,
    recall_bound,
    screening_metrics,
    stable_needed,
)
from hts.distill.speed import speed_cells, speed_ratio

__all__ = [
    "THRESHOLDS",
    "ReportError",
    "at_threshold",
    "auto_keep_rule",
    "error_decomposition",
    "fit_references",
    "fitted_references",
    "force_field_errors",
    "formation_energies",
    "hull_energies",
    "markdown",
    "plot_report",
    "recall_bound",
    "screening_metrics",
    "speed_cells",
    "speed_ratio",
    "stable_needed",
    "student_kind",
]


def force_field_errors(model, frames: Sequence) -> dict:
    """MAE of energy (meV/atom), force components (meV/Å) and stress (meV/Å³) against the labels.

    ``frames`` are ASE Atoms with ``REF_energy``/``REF_forces``/``REF_stress``.
    Returns the errors and the per-frame pairs the parity plots need.
    """
    from ase.units import GPa

    from hts.distill.dataset import frame_labels

    if not frames:
        return {"n_frames": 0}
    preds = model.predict(list(frames))
    e_ref, e_pred, f_ref, f_pred, s_err = [], [], [], [], []
    for a, p in zip(frames, preds, strict=True):
        lab = frame_labels(a)
        n = len(a)
        e_ref.append(lab.energy / n)
        e_pred.append(p.energy / n)
        f_ref.append(lab.forces.ravel())
        f_pred.append(np.asarray(p.forces).ravel())
        s_err.append(np.abs(np.asarray(p.stress) - lab.stress))
    e_ref_a, e_pred_a = np.array(e_ref), np.array(e_pred)
    f_ref_a, f_pred_a = np.concatenate(f_ref), np.concatenate(f_pred)
    return {
        "n_frames": len(frames),
        "energy_mae_mev_per_atom": float(1000 * np.mean(np.abs(e_pred_a - e_ref_a))),
        "force_mae_mev_per_A": float(1000 * np.mean(np.abs(f_pred_a - f_ref_a))),
        "stress_mae_mev_per_A3": float(1000 * np.mean(np.concatenate(s_err))),
        "stress_mae_gpa": float(np.mean(np.concatenate(s_err)) / GPa),
        "_parity": {
            "energy": (e_ref_a.tolist(), e_pred_a.tolist()),
            "forces": (f_ref_a.tolist(), f_pred_a.tolist()),
        },
    }


def hull_energies(items: Sequence[tuple[str, float]], references: dict[str, float]) -> np.ndarray:
    """``e_above_hull`` of each (formula, energy per atom) against the references and all the items."""
    from hts.stages.hull import HullTracker, MissingReferenceError

    hull = HullTracker()
    for el, e in references.items():
        if math.isfinite(e):
            hull.add_reference(el, e)
    hull.add((f, e) for f, e in items if math.isfinite(e))
    out = np.full(len(items), np.nan)
    for i, (f, e) in enumerate(items):
        if math.isfinite(e):
            with contextlib.suppress(MissingReferenceError):  # stays NaN: no reference
                out[i] = hull.e_above_hull(f, e)
    return out


def fit_references(
    formulas: Sequence[str],
    student_e: Sequence[float],
    teacher_formation: Sequence[float],
    teacher_refs: dict[str, float],
    ridge: float = 1e-3,
) -> dict[str, float]:
    """Student elemental reference energies fitted so its formation energies match the teacher's.

    A student trained on a campaign's compounds never sees the elemental
    phases, and relaxing them with it gives nonsense (an O2 crystal collapsing
    to -10⁹ eV/atom).  As with fitted elemental-phase reference energies
    (Stevanović et al., PRB 85, 115104 (2012)), we instead solve, over the
    training candidates, ``Σ x_el μ_el = E_student − ΔH_teacher`` for the
    chemical potentials μ, written as the teacher's reference plus an offset
    with a small ridge penalty (elements that only ever occur together are then
    split evenly, not arbitrarily).  Systematic per-element errors of the
    student cancel in its formation energies.  An element no training
    candidate contains keeps the prior, the teacher's own reference.
    """
    from pymatgen.core import Composition

    rows, rhs = [], []
    elements = sorted(teacher_refs)
    col = {el: k for k, el in enumerate(elements)}
    for f, e, h in zip(formulas, student_e, teacher_formation, strict=True):
        if not (math.isfinite(e) and math.isfinite(h)):
            continue
        comp = Composition(f).fractional_composition
        x = np.zeros(len(elements))
        base = 0.0
        try:
            for el, frac in comp.items():
                x[col[el.symbol]] = frac
                base += frac * teacher_refs[el.symbol]
        except KeyError:
            continue
        if not math.isfinite(base):
            continue
        rows.append(x)
        rhs.append(e - h - base)
    out = dict(teacher_refs)
    if not rows:
        return out
    a = np.array(rows)
    b = np.array(rhs)
    seen = a.sum(axis=0) > 0
    a_s = a[:, seen]
    delta = np.linalg.solve(a_s.T @ a_s + ridge * np.eye(a_s.shape[1]), a_s.T @ b)
    for el, d in zip(np.array(elements)[seen], delta, strict=True):
        out[str(el)] = float(teacher_refs[str(el)] + d)
    return out


def formation_energies(items: Sequence[tuple[str, float]], refs: dict[str, float]) -> np.ndarray:
    """Energy per atom relative to the elemental references (NaN where one is missing)."""
    from pymatgen.core import Composition

    out = np.full(len(items), np.nan)
    for i, (f, e) in enumerate(items):
        comp = Composition(f).fractional_composition
        base = sum(frac * refs.get(el.symbol, float("nan")) for el, frac in comp.items())
        out[i] = e - base
    return out


def error_decomposition(
    formulas: Sequence[str],
    teacher: np.ndarray,
    at_teacher: np.ndarray,
    own: np.ndarray,
    teacher_ehull: np.ndarray,
    student_ehull: np.ndarray,
) -> dict:
    """Where the student's error comes from, per candidate (energies in eV/atom).

    ``teacher``: the teacher's relaxed energy; ``at_teacher``: the student's
    energy at the teacher's relaxed structure; ``own``: the student's screening
    value (its own relaxed energy, or a direct student's prediction from the
    unrelaxed candidate).  The split: error where the teacher goes
    (``at_teacher − teacher``), the shift from going elsewhere (``own −
    at_teacher``: negative when a relaxing student falls into minima the
    teacher does not have), energy differences between candidates of one
    composition (polymorphs and site swaps: what the hull decides on), and
    ``e_above_hull`` itself.
    """
    from pymatgen.core import Composition
    from scipy.stats import spearmanr

    teacher, at_teacher, own = (np.asarray(x, dtype=float) for x in (teacher, at_teacher, own))
    ok = np.isfinite(teacher) & np.isfinite(own)
    groups: dict[str, list[int]] = {}
    for i, f in enumerate(formulas):
        if ok[i]:
            groups.setdefault(Composition(f).reduced_formula, []).append(i)
    pairs = np.array(
        [(i, j) for g in groups.values() for k, i in enumerate(g) for j in g[k + 1 :]], dtype=int
    ).reshape(-1, 2)

    def pair_mae(x: np.ndarray) -> float:
        if not len(pairs):
            return float("nan")
        d_s = x[pairs[:, 0]] - x[pairs[:, 1]]
        d_t = teacher[pairs[:, 0]] - teacher[pairs[:, 1]]
        good = np.isfinite(d_s) & np.isfinite(d_t)
        return float(1000 * np.mean(np.abs(d_s - d_t)[good])) if good.any() else float("nan")

    def mae(x: np.ndarray, ref: np.ndarray) -> float:
        good = np.isfinite(x) & np.isfinite(ref)
        return float(1000 * np.mean(np.abs(x - ref)[good])) if good.any() else float("nan")

    shift = (own - at_teacher)[ok & np.isfinite(at_teacher)]
    own_err = np.abs(own - teacher)[ok]
    eh = np.isfinite(teacher_ehull) & np.isfinite(student_ehull)
    return {
        "n_candidates": int(ok.sum()),
        "energy_mae_at_teacher_minimum_mev": mae(at_teacher, teacher),
        "own_minus_at_teacher_mean_mev": float(1000 * shift.mean()) if len(shift) else float("nan"),
        "own_minus_at_teacher_mae_mev": float(1000 * np.abs(shift).mean())
        if len(shift)
        else float("nan"),
        "own_minus_at_teacher_min_mev": float(1000 * shift.min()) if len(shift) else float("nan"),
        "own_energy_mae_mev": mae(own, teacher),
        "own_within_20_mev": float(np.mean(own_err <= 0.020)) if len(own_err) else float("nan"),
        "n_pairs": int(len(pairs)),
        "pair_difference_mae_at_teacher_minimum_mev": pair_mae(at_teacher),
        "pair_difference_mae_own_mev": pair_mae(own),
        "ehull_mae_mev": mae(student_ehull, teacher_ehull),
        "spearman_e_above_hull": float(spearmanr(teacher_ehull[eh], student_ehull[eh]).statistic)
        if eh.sum() > 2
        else float("nan"),
    }
