"""How good is the student, as a force field and as a prefilter for its teacher?

Force-field errors are measured on the held-out frames (whole chemical
systems or prototypes the student never saw).  Screening quality compares the
two models where the funnel uses them: each relaxes the sampled candidates and
scores them on its own hull (its own elemental references), and we ask how
well the student's ``e_above_hull`` ranks the teacher's (Spearman) and, for a
prefilter threshold ``t``, which fraction of the teacher-stable held-out
candidates survives (recall) and which fraction of all is discarded.  ``keep:
auto`` in a campaign reads that curve back (:func:`auto_keep_rule`).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "ReportError",
    "at_threshold",
    "error_decomposition",
    "recall_bound",
    "stable_needed",
    "auto_keep_rule",
    "fitted_references",
    "fit_references",
    "force_field_errors",
    "formation_energies",
    "hull_energies",
    "screening_metrics",
    "speed_ratio",
    "student_kind",
]

THRESHOLDS = np.round(np.arange(0.0, 1.0001, 0.005), 3)


class ReportError(ValueError):
    """A distillation report that is missing or cannot answer the question asked."""


def force_field_errors(model, frames: Sequence) -> dict:
    """MAE of energy (meV/atom), force components (meV/Å) and stress (meV/Å³) against the labels.

    ``frames`` are ASE Atoms with ``REF_energy``/``REF_forces``/``REF_stress``.
    Returns the errors and the per-frame pairs the parity plots need.
    """
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
        "stress_mae_gpa": float(160.21766 * np.mean(np.concatenate(s_err))),
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


def recall_bound(found: int, n: int, confidence: float) -> float:
    """One-sided Clopper–Pearson lower bound on a recall of ``found`` out of ``n``.

    The exact binomial bound (Clopper & Pearson, Biometrika 26, 404 (1934)):
    the smallest recall under which seeing ``found`` or more has probability
    ``1 - confidence``.  Zero when nothing was found or nothing could be.
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
) -> dict:
    """Spearman ρ, recall/discard curves with a recall lower bound, and the calibrated threshold.

    The threshold is the smallest ``t`` whose one-sided ``confidence`` lower
    bound on the recall of teacher-stable candidates (``student e_above_hull <=
    t`` among those with teacher ``e_above_hull <= stable_threshold``) reaches
    ``target_recall``; None (with ``stable_needed``) when the candidates are too
    few for any threshold to show it.
    """
    from scipy.stats import spearmanr

    ok = np.isfinite(teacher_ehull) & np.isfinite(student_ehull)
    t, s = teacher_ehull[ok], student_ehull[ok]
    stable = t <= stable_threshold + 1e-9
    n_stable = int(stable.sum())
    found = [int((s[stable] <= x + 1e-9).sum()) for x in THRESHOLDS]
    recall = [f / n_stable if n_stable else float("nan") for f in found]
    lower = [recall_bound(f, n_stable, confidence) for f in found]
    discarded = [float((s > x + 1e-9).mean()) if len(s) else float("nan") for x in THRESHOLDS]
    chosen = _threshold_for(THRESHOLDS, lower, target_recall)
    k = int(np.searchsorted(THRESHOLDS, chosen)) if chosen is not None else None
    rho = float(spearmanr(t, s).statistic) if len(t) > 2 else float("nan")
    return {
        "n_candidates": int(ok.sum()),
        "n_teacher_stable": n_stable,
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


def _threshold_for(thresholds, recall, target: float) -> float | None:
    for x, r in zip(thresholds, recall, strict=True):
        if r == r and r >= target - 1e-12:
            return float(x)
    return None


def _report_section(path: Path, *keys: str):
    """One section of a distillation report, or a :class:`ReportError` naming the file."""
    try:
        data = json.loads(path.read_text())
        for k in keys:
            data = data[k]
    except FileNotFoundError:
        raise ReportError(
            f"{path}: no such distillation report (run `hts distill` first)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ReportError(f"{path}: not a readable hts distillation report ({err})") from None
    return data


def auto_keep_rule(report: str | Path, target_recall: float):
    """``e_above_hull <= t``: the smallest ``t`` whose calibrated recall bound reaches the target.

    The bound is the report's one-sided Clopper–Pearson lower bound on recall
    of teacher-stable calibration candidates (held out from training).  Too few
    of them for any threshold to show the target is an error naming the fix.
    """
    from hts.spec import KeepRule

    path = Path(report)
    cal = _report_section(path, "screening", "calibration")
    curve = cal["curve"]
    t = _threshold_for(curve["threshold"], curve["recall_lower_bound"], target_recall)
    if t is None:
        n, conf = cal["n_teacher_stable"], cal.get("confidence", 0.95)
        need = stable_needed(target_recall, conf)
        if n < need:
            raise ReportError(
                f"{path}: its calibration set holds {n} teacher-stable candidates, and a "
                f"{conf:.0%} lower bound of {target_recall} on recall needs at least {need} "
                "(with none missed): raise sampling.calibration in the distillation file and "
                "run hts distill again, or lower distillation.target_recall"
            )
        raise ReportError(
            f"{path}: no threshold up to {curve['threshold'][-1]} eV/atom shows recall "
            f"{target_recall} at {conf:.0%} confidence on its {n} teacher-stable calibration "
            "candidates; lower distillation.target_recall or improve the student"
        )
    return KeepRule.parse(f"e_above_hull <= {t:g}")


def student_kind(report: str | Path) -> str | None:
    """``direct`` or ``relax`` from a distillation report (None: a report from before kinds)."""
    try:
        return str(_report_section(Path(report), "student", "kind"))
    except ReportError:
        _report_section(Path(report))  # a missing or unreadable file still says so
        return None


def fitted_references(report: str | Path) -> dict[str, float]:
    """The student's fitted elemental references from a distillation report (eV/atom)."""
    table = _report_section(Path(report), "references", "student_fitted")
    return {el: float("nan") if e is None else float(e) for el, e in table.items()}


def speed_ratio(teacher, student, cells: Sequence, repeats: int = 3) -> dict:
    """Seconds per structure of each model on the same cells, measured alternately in one process.

    The student is timed as the prefilter calls it (its batch size) and one
    structure per call; the teacher as the rescore stage calls it.
    """
    cells = list(cells)
    teacher.predict(cells[:1])  # warm-up: lazy initialisation, first-call allocation
    student.predict(cells[:1])
    times: dict[str, list[float]] = {"teacher": [], "student_batched": [], "student_single": []}
    for _ in range(repeats):
        for name, fn in (
            ("teacher", lambda: teacher.predict(cells)),
            ("student_batched", lambda: student.predict(cells)),
            ("student_single", lambda: [student.predict([c]) for c in cells]),
        ):
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / len(cells))
    med = {k: float(np.median(v)) for k, v in times.items()}
    n = [len(c) for c in cells]
    return {
        "n_cells": len(cells),
        "atoms_min": int(min(n)),
        "atoms_max": int(max(n)),
        "teacher_s_per_structure": med["teacher"],
        "student_s_per_structure_batched": med["student_batched"],
        "student_s_per_structure_single": med["student_single"],
        "ratio_batched": med["teacher"] / med["student_batched"],
        "ratio_single": med["teacher"] / med["student_single"],
    }


def speed_cells(
    structures: Sequence, lo: int = 8, hi: int = 32, n: int = 12, seed: int = 0
) -> list:
    """Supercells of the given structures with ``lo``–``hi`` atoms, spread over that range."""
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.permutation(len(structures)):
        a = structures[int(i)]
        reps = [(1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2), (3, 2, 2), (3, 3, 2), (3, 3, 3)]
        fits = [r for r in reps if lo <= len(a) * r[0] * r[1] * r[2] <= hi]
        if fits:
            out.append(a.repeat(fits[len(out) % len(fits)]))
        if len(out) >= n:
            break
    return out


def plot_report(report: dict, out_dir: Path) -> list[str]:
    """parity.png (energies, e_above_hull), screening.png (recall and its bound), rounds.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [c for c in report["candidates"] if c["system"] == "primary" and not c["trained"]]

    def col(key: str, held: bool | None = None) -> np.ndarray:
        return np.array(
            [
                np.nan if c[key] is None else c[key]
                for c in rows
                if held is None or c["held_out_system"] == held
            ],
            dtype=float,
        )

    files = []
    errs = report["errors"]["calibration"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    for ax, (tk, sk, unit, title) in zip(
        axes,
        (
            (
                "teacher_energy_per_atom",
                "student_energy_per_atom",
                "eV/atom",
                f"relaxed energy: MAE {errs['own_energy_mae_mev']:.0f} meV/atom",
            ),
            (
                "teacher_e_above_hull",
                "student_e_above_hull",
                "eV/atom",
                f"e_above_hull: Spearman ρ {errs['spearman_e_above_hull']:.2f}",
            ),
        ),
        strict=True,
    ):
        for held, color, label in (
            (False, "tab:blue", "seen systems"),
            (True, "tab:red", "held-out systems"),
        ):
            ax.scatter(col(tk, held), col(sk, held), s=6, alpha=0.5, c=color, label=label)
        t, st = col(tk), col(sk)
        ok = np.isfinite(t) & np.isfinite(st)
        if ok.any():
            lo, hi = float(min(t[ok].min(), st[ok].min())), float(max(t[ok].max(), st[ok].max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"teacher ({unit})")
        ax.set_ylabel(f"student ({unit})")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle("calibration candidates (never trained on)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "parity.png", dpi=120)
    plt.close(fig)
    files.append("parity.png")

    sc = report["screening"]["calibration"]
    c = sc["curve"]
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    ax.plot(c["threshold"], c["recall"], label="recall of teacher-stable")
    ax.plot(
        c["threshold"],
        c["recall_lower_bound"],
        ls="--",
        label=f"its {sc['confidence']:.0%} lower bound (Clopper-Pearson)",
    )
    ax.plot(c["threshold"], c["discarded"], label="share discarded")
    if sc.get("threshold") is not None:
        ax.axvline(
            sc["threshold"], color="tab:green", lw=1, label=f"keep: auto, t = {sc['threshold']:.3f}"
        )
    ax.axhline(sc["target_recall"], color="k", lw=0.8, ls=":")
    ax.set_xlim(0, min(1.0, max(0.3, 2 * (sc.get("threshold") or 0.3))))
    ax.set_xlabel("prefilter threshold on student e_above_hull (eV/atom)")
    ax.set_title(
        f"calibration: {sc['n_teacher_stable']} teacher-stable of {sc['n_candidates']}", fontsize=10
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "screening.png", dpi=120)
    plt.close(fig)
    files.append("screening.png")

    rounds = report.get("rounds", [])
    if rounds:
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        x = [r["teacher_relaxations"] for r in rounds]
        for key, label in (
            ("recall", "recall at t"),
            ("discarded", "discarded at t"),
            ("spearman", "Spearman ρ"),
        ):
            a.plot(x, [np.nan if r[key] is None else r[key] for r in rounds], "o-", label=label)
        a.set_xlabel("teacher relaxations (labels)")
        a.legend(fontsize=8)
        a.set_title("screening per round", fontsize=10)
        b.plot(x, [r["own_energy_mae_mev"] for r in rounds], "o-", label="relaxed energy MAE")
        b.plot(x, [r["ehull_mae_mev"] for r in rounds], "o-", label="e_above_hull MAE")
        b.set_xlabel("teacher relaxations (labels)")
        b.set_ylabel("meV/atom")
        b.legend(fontsize=8)
        b.set_title("error per round", fontsize=10)
        fig.tight_layout()
        fig.savefig(out_dir / "rounds.png", dpi=120)
        plt.close(fig)
        files.append("rounds.png")
    return files


def _f(x, fmt: str = ".1f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


_SPLITS = (
    ("calibration", "calibration"),
    ("seen systems", "seen_systems"),
    ("held-out systems", "held_out_systems"),
)


def markdown(report: dict) -> str:
    sp, ds = report["speed"], report["dataset"]
    st = report["student"]
    lines = [
        f"# Distillation report — {report['name']}",
        "",
        f"Teacher **{report['teacher']}** → {st['kind']} student **{st['file']}** "
        f"({st['n_parameters']} parameters).  Space: {report['space']['candidates']} candidates; "
        f"{ds['teacher_relaxations']} teacher relaxations: {ds['training_candidates']} for "
        f"training, {ds['calibration_candidates']} in {ds['calibration_systems']} calibration "
        f"systems (+ {ds['subsystem_candidates']} subsystem candidates for their hulls); "
        f"{ds.get('single_points', 0)} teacher single points of unrelaxed candidates; "
        f"{ds['held_out_share']:.0%} of chemical systems never trained on.",
        "",
        "## Rounds",
        "",
        "| round | teacher relaxations | training candidates | threshold | recall | lower bound | "
        "discarded | Spearman ρ | energy MAE (meV/atom) | train (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rounds"]:
        lines.append(
            f"| {r['round']} | {r['teacher_relaxations']} | {r['training_candidates']} | "
            f"{_f(r['threshold'], '.3f')} | {_f(r['recall'], '.3f')} | "
            f"{_f(r['recall_lower_bound'], '.3f')} | {_f(r['discarded'], '.3f')} | "
            f"{_f(r['spearman'], '.3f')} | {_f(r['own_energy_mae_mev'])} | {_f(r['train_wall_s'], '.0f')} |"
        )
    lines += [
        "",
        "## Screening (calibration systems, candidates never trained on)",
        "",
        "| candidates | n | teacher-stable | Spearman ρ | threshold | recall | lower bound | discarded |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, key in _SPLITS:
        m = report["screening"][key]
        lines.append(
            f"| {label} | {m['n_candidates']} | {m['n_teacher_stable']} | "
            f"{_f(m['spearman_e_above_hull'], '.3f')} | {_f(m['threshold'], '.3f')} | "
            f"{_f(m['recall_at_threshold'], '.3f')} | {_f(m['recall_lower_bound_at_threshold'], '.3f')} | "
            f"{_f(m['discarded_at_threshold'], '.3f')} |"
        )
    cal = report["screening"]["calibration"]
    lines += [
        "",
        f"Teacher-stable: teacher e_above_hull ≤ {cal['stable_threshold']} eV/atom.  `keep: auto` "
        f"takes the smallest threshold whose one-sided {cal['confidence']:.0%} Clopper-Pearson "
        f"lower bound on recall reaches {cal['target_recall']} "
        f"(needs ≥ {cal['stable_needed']} teacher-stable calibration candidates): "
        f"`e_above_hull <= {_f(cal['threshold'], '.3f')}`.",
        "",
        "## Where the error is (meV/atom)",
        "",
        "| candidates | at teacher's minimum | own − at teacher's (mean) | own vs teacher | "
        "own within 20 meV | polymorph Δ at teacher's | polymorph Δ own | e_above_hull |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, key in _SPLITS:
        e = report["errors"][key]
        lines.append(
            f"| {label} | {_f(e['energy_mae_at_teacher_minimum_mev'])} | "
            f"{_f(e['own_minus_at_teacher_mean_mev'])} | {_f(e['own_energy_mae_mev'])} | "
            f"{_f(e['own_within_20_mev'], '.2f')} | {_f(e['pair_difference_mae_at_teacher_minimum_mev'])} | "
            f"{_f(e['pair_difference_mae_own_mev'])} | {_f(e['ehull_mae_mev'])} |"
        )
    lines += [
        "",
        '"Own" is what the prefilter uses: a relaxing student\'s own relaxed energy, a direct '
        "student's prediction from the unrelaxed candidate.",
        "",
        "## Speed (same process, alternating)",
        "",
        f"{sp['n_cells']} cells of {sp['atoms_min']}–{sp['atoms_max']} atoms on {report['device']}: "
        f"teacher {1000 * sp['teacher_s_per_structure']:.1f} ms/structure, student "
        f"{1000 * sp['student_s_per_structure_batched']:.1f} ms batched "
        f"(**{sp['ratio_batched']:.1f}×**), {1000 * sp['student_s_per_structure_single']:.1f} ms one at a time "
        f"({sp['ratio_single']:.1f}×).",
        "",
        "Time: "
        + ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in report["timing"].items())
        + f"; {_f(report.get('wall_s'), '.0f')} s in all.",
        "",
        "![parity](parity.png)",
        "",
        "![screening](screening.png)",
        "",
        "![rounds](rounds.png)",
        "",
    ]
    return "\n".join(lines)
