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
    "auto_keep_rule",
    "fitted_references",
    "fit_references",
    "force_field_errors",
    "formation_energies",
    "hull_energies",
    "screening_metrics",
    "speed_ratio",
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


def screening_metrics(
    teacher_ehull: np.ndarray,
    student_ehull: np.ndarray,
    stable_threshold: float,
    target_recall: float,
) -> dict:
    """Spearman ρ of the two ``e_above_hull``s, recall/discard curves, and the auto threshold."""
    from scipy.stats import spearmanr

    ok = np.isfinite(teacher_ehull) & np.isfinite(student_ehull)
    t, s = teacher_ehull[ok], student_ehull[ok]
    stable = t <= stable_threshold + 1e-9
    n_stable = int(stable.sum())
    recall = [
        float((s[stable] <= x + 1e-9).mean()) if n_stable else float("nan") for x in THRESHOLDS
    ]
    discarded = [float((s > x + 1e-9).mean()) if len(s) else float("nan") for x in THRESHOLDS]
    chosen = _threshold_for(THRESHOLDS, recall, target_recall)
    k = int(np.searchsorted(THRESHOLDS, chosen)) if chosen is not None else None
    rho = float(spearmanr(t, s).statistic) if len(t) > 2 else float("nan")
    return {
        "n_candidates": int(ok.sum()),
        "n_teacher_stable": n_stable,
        "stable_threshold": stable_threshold,
        "spearman_e_above_hull": rho,
        "ehull_mae_mev_per_atom": float(1000 * np.mean(np.abs(t - s))) if len(t) else float("nan"),
        "curve": {"threshold": THRESHOLDS.tolist(), "recall": recall, "discarded": discarded},
        "target_recall": target_recall,
        "threshold": chosen,
        "recall_at_threshold": recall[k] if k is not None else None,
        "discarded_at_threshold": discarded[k] if k is not None else None,
    }


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
    """``e_above_hull <= t`` with the smallest ``t`` whose held-out recall reaches the target."""
    from hts.spec import KeepRule

    path = Path(report)
    curve = _report_section(path, "screening", "held_out", "curve")
    t = _threshold_for(curve["threshold"], curve["recall"], target_recall)
    if t is None:
        raise ReportError(
            f"{path}: no threshold up to {curve['threshold'][-1]} eV/atom reaches recall {target_recall}"
        )
    return KeepRule.parse(f"e_above_hull <= {t:g}")


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


def plot_report(report: dict, parity: dict, ehull: dict, out_dir: Path) -> list[str]:
    """parity.png (energy, forces on held-out frames) and screening.png (e_above_hull, recall)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    for ax, key, unit in zip(axes, ("energy", "forces"), ("eV/atom", "eV/Å"), strict=True):
        if key in parity:
            ref, pred = (np.asarray(v) for v in parity[key])
            ax.scatter(ref, pred, s=4 if key == "forces" else 10, alpha=0.5)
            lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"teacher {key} ({unit})")
        ax.set_ylabel(f"student {key} ({unit})")
    ff = report["force_field"]["test"]
    axes[0].set_title(
        f"held-out energy MAE {ff.get('energy_mae_mev_per_atom', float('nan')):.1f} meV/atom"
    )
    axes[1].set_title(f"held-out force MAE {ff.get('force_mae_mev_per_A', float('nan')):.0f} meV/Å")
    fig.tight_layout()
    fig.savefig(out_dir / "parity.png", dpi=120)
    plt.close(fig)
    files.append("parity.png")

    sc = report["screening"]["held_out"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.4))
    for split, color in (("train", "0.7"), ("valid", "tab:blue"), ("test", "tab:red")):
        m = np.asarray(ehull["split"]) == split
        a.scatter(
            np.asarray(ehull["teacher"])[m],
            np.asarray(ehull["student"])[m],
            s=10,
            c=color,
            label="held-out" if split == "test" else split,
            alpha=0.8,
        )
    if sc.get("threshold") is not None:
        a.axhline(
            sc["threshold"], color="tab:green", lw=1, label=f"prefilter t = {sc['threshold']:.3f}"
        )
    a.axvline(sc["stable_threshold"], color="k", lw=0.8, ls=":", label="teacher-stable")
    a.set_xlabel("teacher e_above_hull (eV/atom)")
    a.set_ylabel("student e_above_hull (eV/atom)")
    a.set_title(f"held-out Spearman ρ = {sc['spearman_e_above_hull']:.2f}")
    a.legend(fontsize=7)
    c = sc["curve"]
    b.plot(c["threshold"], c["recall"], label="recall of teacher-stable")
    b.plot(c["threshold"], c["discarded"], label="fraction discarded")
    if sc.get("threshold") is not None:
        b.axvline(sc["threshold"], color="tab:green", lw=1)
    b.axhline(sc["target_recall"], color="k", lw=0.8, ls=":")
    b.set_xlim(0, min(1.0, max(0.3, 2 * (sc.get("threshold") or 0.3))))
    b.set_xlabel("prefilter threshold on student e_above_hull (eV/atom)")
    b.set_title(f"held-out: {sc['n_teacher_stable']} teacher-stable of {sc['n_candidates']}")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "screening.png", dpi=120)
    plt.close(fig)
    files.append("screening.png")
    return files


def markdown(report: dict) -> str:
    ff, sp = report["force_field"], report["speed"]
    ho, al = report["screening"]["held_out"], report["screening"]["all"]

    def f(x, fmt=".1f"):
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)

    lines = [
        f"# Distillation report — {report['name']}",
        "",
        f"Teacher **{report['teacher']}** → student **{report['student_file']}** "
        f"({report['training']['n_parameters']} parameters, {report['training']['epochs']} epochs, "
        f"{f(report['training']['wall_s'], '.0f')} s).",
        "",
        f"Dataset: {report['dataset']['n_candidates']} candidates, {report['dataset']['frames']} frames "
        f"(train {report['dataset']['split_frames']['train']}, valid {report['dataset']['split_frames']['valid']}, "
        f"test {report['dataset']['split_frames']['test']}), split by {report['dataset']['split_by']}.",
        "",
        "## Force field (held-out frames)",
        "",
        "| split | frames | energy MAE (meV/atom) | force MAE (meV/Å) | stress MAE (GPa) |",
        "|---|---|---|---|---|",
    ]
    for split in ("test", "valid"):
        e = ff.get(split, {})
        lines.append(
            f"| {split} | {e.get('n_frames', 0)} | {f(e.get('energy_mae_mev_per_atom'))} | "
            f"{f(e.get('force_mae_mev_per_A'), '.0f')} | {f(e.get('stress_mae_gpa'), '.2f')} |"
        )
    lines += [
        "",
        "## Screening against the teacher",
        "",
        f"Teacher-stable: teacher e_above_hull ≤ {ho['stable_threshold']} eV/atom.",
        "",
        "| candidates | n | teacher-stable | Spearman ρ (e_above_hull) | threshold | recall | discarded |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, m in (("held-out", ho), ("all sampled", al)):
        lines.append(
            f"| {label} | {m['n_candidates']} | {m['n_teacher_stable']} | {f(m['spearman_e_above_hull'], '.3f')} | "
            f"{f(m['threshold'], '.3f')} | {f(m['recall_at_threshold'], '.3f')} | {f(m['discarded_at_threshold'], '.3f')} |"
        )
    lines += [
        "",
        f"`keep: auto` with target recall {ho['target_recall']} gives `e_above_hull <= {f(ho['threshold'], '.3f')}`.",
        "",
        "## Speed (same process, alternating)",
        "",
        f"{sp['n_cells']} cells of {sp['atoms_min']}–{sp['atoms_max']} atoms on {report['device']}: "
        f"teacher {1000 * sp['teacher_s_per_structure']:.1f} ms/structure, student "
        f"{1000 * sp['student_s_per_structure_batched']:.1f} ms batched "
        f"(**{sp['ratio_batched']:.1f}×**), {1000 * sp['student_s_per_structure_single']:.1f} ms one at a time "
        f"({sp['ratio_single']:.1f}×).",
        "",
        "![parity](parity.png)",
        "",
        "![screening](screening.png)",
        "",
    ]
    return "\n".join(lines)
