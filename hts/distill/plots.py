"""The report's figures: parity of energies and ``e_above_hull``, the recall curve, the rounds.

matplotlib is imported (with the Agg backend) only when a report is drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_report"]


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
    by = report.get("dataset", {}).get("calibration_by")
    unit_name = "compositions" if by == "composition" else "systems"
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
            (False, "tab:blue", f"seen {unit_name}"),
            (True, "tab:red", f"held-out {unit_name}"),
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
