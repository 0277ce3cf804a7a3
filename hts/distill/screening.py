"""Recall of teacher-stable candidates against the share discarded, and the keep threshold it supports.

A prefilter threshold ``t`` on the student's ``e_above_hull`` keeps some of
the candidates the teacher calls stable (recall) and discards a share of all.
A threshold is a statistical claim about candidates not yet seen, so it is
chosen from a one-sided Clopper–Pearson lower bound on recall over held-out
calibration candidates, not from the recall measured there.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "THRESHOLDS",
    "at_threshold",
    "recall_bound",
    "screening_metrics",
    "stable_needed",
    "threshold_for",
]

THRESHOLDS = np.round(np.arange(0.0, 1.0001, 0.005), 3)


def recall_bound(found: float, n: float, confidence: float) -> float:
    """One-sided Clopper–Pearson lower bound on a recall of ``found`` out of ``n``.

    The exact binomial bound (Clopper & Pearson, Biometrika 26, 404 (1934)):
    the smallest recall under which seeing ``found`` or more has probability
    ``1 - confidence``.  Zero when nothing was found or nothing could be.
    Weighted samples pass effective counts (Korn & Graubard, Survey
    Methodology 24, 193 (1998)), which need not be whole numbers.
    """
    from scipy.stats import beta

    if n <= 0 or found <= 0:
        return 0.0
    return float(beta.ppf(1.0 - confidence, found, n - found + 1))


def stable_needed(target: float, confidence: float) -> int:
    """Fewest teacher-stable candidates whose bound can reach ``target`` (with none missed)."""
    return math.ceil(math.log(1.0 - confidence) / math.log(target))


def screening_metrics(
    teacher_ehull: np.ndarray,
    student_ehull: np.ndarray,
    stable_threshold: float,
    target_recall: float,
    confidence: float = 0.95,
    weights: np.ndarray | None = None,
) -> dict:
    """Spearman ρ, recall/discard curves with a recall lower bound, and the calibrated threshold.

    The threshold is the smallest ``t`` whose one-sided ``confidence`` lower
    bound on the recall of teacher-stable candidates (``student e_above_hull <=
    t`` among those with teacher ``e_above_hull <= stable_threshold``) reaches
    ``target_recall``; None (with ``stable_needed``) when the candidates are too
    few for any threshold to show it.

    ``weights``: each candidate stands for that many of the population (a
    stratified sample, such as a campaign's survivors and its audited rejects):
    recall and discarded share are weighted (Horvitz–Thompson), and the bound is
    Clopper–Pearson on Kish's effective number of teacher-stable candidates
    (``n_effective``).  Without weights every count is the plain one.
    """
    from scipy.stats import spearmanr

    ok = np.isfinite(teacher_ehull) & np.isfinite(student_ehull)
    t, s = teacher_ehull[ok], student_ehull[ok]
    w = np.ones(len(t)) if weights is None else np.asarray(weights, dtype=float)[ok]
    stable = t <= stable_threshold + 1e-9
    n_stable = int(stable.sum())
    ws = w[stable]
    n_eff = float(ws.sum() ** 2 / (ws**2).sum()) if n_stable else 0.0
    recall = [
        float(ws[s[stable] <= x + 1e-9].sum() / ws.sum()) if n_stable else float("nan")
        for x in THRESHOLDS
    ]
    lower = [recall_bound(r * n_eff, n_eff, confidence) if n_stable else 0.0 for r in recall]
    discarded = [
        float(w[s > x + 1e-9].sum() / w.sum()) if len(s) else float("nan") for x in THRESHOLDS
    ]
    chosen = threshold_for(THRESHOLDS, lower, target_recall)
    k = int(np.searchsorted(THRESHOLDS, chosen)) if chosen is not None else None
    rho = float(spearmanr(t, s).statistic) if len(t) > 2 else float("nan")
    return {
        "n_candidates": int(ok.sum()),
        "n_teacher_stable": n_stable,
        "n_effective": n_eff,
        "weighted": weights is not None,
        "stable_threshold": stable_threshold,
        "spearman_e_above_hull": rho,
        "ehull_mae_mev_per_atom": float(1000 * np.mean(np.abs(t - s))) if len(t) else float("nan"),
        "curve": {
            "threshold": THRESHOLDS.tolist(),
            "recall": recall,
            "recall_lower_bound": lower,
            "discarded": discarded,
        },
        "target_recall": target_recall,
        "confidence": confidence,
        "stable_needed": stable_needed(target_recall, confidence),
        "threshold": chosen,
        "recall_at_threshold": recall[k] if k is not None else None,
        "recall_lower_bound_at_threshold": lower[k] if k is not None else None,
        "discarded_at_threshold": discarded[k] if k is not None else None,
    }


def at_threshold(m: dict, threshold: float) -> tuple[float, float]:
    """(recall, discarded share) of a :func:`screening_metrics` curve at a given threshold."""
    c = m["curve"]
    k = int(np.argmin(np.abs(np.asarray(c["threshold"]) - threshold)))
    return c["recall"][k], c["discarded"][k]


def threshold_for(thresholds, recall, target: float) -> float | None:
    """The first (smallest) threshold whose recall (or its bound) reaches ``target``; None if none does."""
    for x, r in zip(thresholds, recall, strict=True):
        if r == r and r >= target - 1e-12:
            return float(x)
    return None
