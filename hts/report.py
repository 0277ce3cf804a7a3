"""Summaries and exports of a store, for ``hts status`` and ``hts export``.

Everything here reads the store through :func:`hts.store.open_dataset`, which
cuts off uncommitted rows, so it is safe while a run is writing.
"""

from __future__ import annotations

import csv
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from hts.store import open_dataset, structure_of

__all__ = ["dft_parity", "export_store", "summarize"]


def _reason_key(reason: str) -> str:
    """Group reasons that differ only in numbers, sites or quoted details."""
    key = re.sub(r"site \d+ \(\w+\) and site \d+ \(\w+\)", "site i and site j", reason)
    key = re.sub(r"[-+]?\d+\.?\d*(e[-+]?\d+)?", "#", key)
    return key[:160]


_SUMMARY_VARS = [
    "id",
    "formula",
    "prototype",
    "source",
    "status",
    "reason",
    "kept",
    "energy_per_atom",
    "formation_energy",
    "e_above_hull",
    "stage_model",
    "converged",
    "time_s",
    "dft_dir",
]


def summarize(path: str | Path, top: int = 10) -> dict:
    ds = open_dataset(path, variables=_SUMMARY_VARS)
    ledger = ds.attrs.get("ledger", {})
    status = ds.status.values.astype(object)
    reasons = ds.reason.values.astype(object)
    ids = ds.id.values.astype(object)
    names = list(ds.stage.values.astype(object))
    ehull_all = ds.e_above_hull.values
    stages = []
    for k, st in enumerate(names):
        scored = np.isfinite(ehull_all[:, k])
        if k == 0:
            n_in = len(status)
        else:  # attempted: a teacher value, or a failure this stage recorded
            tried = np.char.startswith(reasons.astype(str), f"{st}:")
            n_in = int((np.isfinite(ds.energy_per_atom.values[:, k]) | tried).sum())
        stages.append(
            {
                "stage": st,
                "in": n_in,
                "ok": int(scored.sum()),
                "failed": n_in - int(scored.sum()),
                "kept": int(ds.kept.values[:, k].sum()),
                "model": str(ds.stage_model.values[k]),
            }
        )
    groups: dict[str, list[str]] = defaultdict(list)
    examples: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for i in np.flatnonzero(status != "ok"):
        key = _reason_key(reasons[i])
        counts[key] += 1
        examples.setdefault(key, reasons[i])
        if len(groups[key]) < 3:
            groups[key].append(ids[i])
    failures = [
        {"reason": examples[k], "count": c, "ids": groups[k]} for k, c in counts.most_common(15)
    ]
    # rank by the deepest stage a candidate reached: teacher values before student values
    k_last = len(names) - 1
    depth = np.zeros(len(status), dtype=int)
    for k in range(len(names)):
        depth[np.isfinite(ehull_all[:, k])] = k
    ehull = ehull_all[np.arange(len(status)), depth] if len(status) else np.zeros(0)
    eform = ds.formation_energy.values[np.arange(len(status)), depth] if len(status) else ehull
    finite = np.flatnonzero(np.isfinite(ehull))
    order = finite[np.lexsort((eform[finite], np.round(ehull[finite], 4), k_last - depth[finite]))][
        :top
    ]
    best = [
        {
            "id": ids[i],
            "formula": str(ds.formula.values[i]),
            "prototype": str(ds.prototype.values[i]),
            "source": str(ds.source.values[i]),
            "stage": names[depth[i]],
            "energy_per_atom": float(ds.energy_per_atom.values[i, depth[i]]),
            "e_above_hull": float(ehull[i]),
            "formation_energy": float(eform[i]),
            "e_above_hull_by_stage": {st: _num(ehull_all[i, k]) for k, st in enumerate(names)},
            "kept": bool(ds.kept.values[i, depth[i]]),
        }
        for i in order
    ]
    return {
        "dft": dft_parity(ds) if "validate" in names else None,
        "campaign": ds.attrs.get("campaign_name", "?"),
        "rows": int(ds.sizes["candidate"]),
        "stages": stages,
        "failures": failures,
        "best": best,
        "wall_s": float(ledger.get("wall_s", 0.0)),
        "finalized": bool(ledger.get("finalized", False)),
        "model": str(ds.stage_model.values[0]) if ds.sizes["stage"] else "",
        "stage_names": names,
    }


def dft_parity(ds) -> dict:
    """MLIP against DFT on the validated candidates: per-candidate values and MAE per MLIP stage.

    Formation energies are compared, not totals: each code's total energies
    have their own zero (GPAW's are relative to its atomic references).
    """
    names = list(ds.stage.values.astype(object))
    k = names.index("validate")
    e_dft = ds.energy_per_atom.values[:, k]
    rows = np.flatnonzero(np.isfinite(e_dft))
    reasons = ds.reason.values.astype(object)
    tried = np.char.startswith(reasons.astype(str), "validate:")
    failed = np.flatnonzero(tried & ~np.isfinite(e_dft))
    eform, ehull = ds.formation_energy.values, ds.e_above_hull.values
    mlip = names[:k]
    mae = {}
    for j, st in enumerate(mlip):
        m = rows[np.isfinite(eform[rows, k]) & np.isfinite(eform[rows, j])]
        mae[st] = {
            "n": int(len(m)),
            "formation_energy": float(np.mean(np.abs(eform[m, j] - eform[m, k])))
            if len(m)
            else None,
            "e_above_hull": float(np.mean(np.abs(ehull[m, j] - ehull[m, k]))) if len(m) else None,
        }
    dft_dir = ds.dft_dir.values.astype(object) if "dft_dir" in ds else np.full(len(reasons), "")
    candidates = [
        {
            "id": str(ds.id.values[i]),
            "formula": str(ds.formula.values[i]),
            "prototype": str(ds.prototype.values[i]),
            "formation_energy": {st: _num(eform[i, j]) for j, st in enumerate(names)},
            "e_above_hull": {st: _num(ehull[i, j]) for j, st in enumerate(names)},
            "converged": bool(ds.converged.values[i, k]),
            "time_s": _num(ds.time_s.values[i, k]),
            "status": str(ds.status.values[i]),
            "reason": str(reasons[i]),
            "job_dir": str(dft_dir[i]),
        }
        for i in [*rows, *failed]
    ]
    return {"code": str(ds.stage_model.values[k]), "mae": mae, "candidates": candidates}


def _num(x) -> float | None:
    return float(x) if np.isfinite(x) else None


def plot_store(ds, png: Path) -> Path:
    """The funnel at a glance: e_above_hull distribution and stability against formation energy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = ds.status.values.astype(object) == "ok"
    ehull = ds.e_above_hull.values[ok, 0]
    eform = ds.formation_energy.values[ok, 0]
    kept = ds.kept.values[ok, 0]
    protos = ds.prototype.values.astype(object)[ok]
    names = list(ds.stage.values.astype(object))
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(5.5 * (len(names) + 1), 4.2))
    a, b = axes[0], axes[1]
    finite = np.isfinite(ehull)
    hi = float(np.nanpercentile(ehull[finite], 98)) if finite.any() else 1.0
    bins = np.linspace(0, max(hi, 0.05), 40)
    a.hist(np.clip(ehull[finite], 0, bins[-1]), bins=bins, color="0.75", label="all scored")
    a.hist(np.clip(ehull[finite & kept], 0, bins[-1]), bins=bins, color="tab:green", label="kept")
    a.set_xlabel("prefilter e_above_hull (eV/atom)")
    a.set_ylabel("candidates")
    a.set_title(f"prefilter: {int(kept.sum())} kept of {int(ok.sum())} scored")
    a.legend()
    for name in sorted(set(protos)):
        m = protos == name
        b.scatter(eform[m], ehull[m], s=12, label=name or "(files)", alpha=0.8)
    b.set_xlabel("formation energy (eV/atom)")
    b.set_ylabel("e_above_hull (eV/atom)")
    b.set_title(f"{ds.attrs.get('campaign_name', '')} — {ds.stage_model.values[0]}")
    b.legend(fontsize=7, markerscale=1.5)
    if "rescore" in names:
        k = names.index("rescore")
        c = axes[2]
        eh = ds.e_above_hull.values
        m = np.isfinite(eh[:, 0]) & np.isfinite(eh[:, k])
        kept_t = ds.kept.values[:, k]
        c.scatter(
            eh[m & ~kept_t, k], eh[m & ~kept_t, 0], s=12, color="0.6", label="teacher: not kept"
        )
        c.scatter(
            eh[m & kept_t, k], eh[m & kept_t, 0], s=12, color="tab:green", label="teacher: kept"
        )
        lim = float(np.nanmax(eh[m][:, [0, k]])) if m.any() else 1.0
        c.plot([0, lim], [0, lim], "k--", lw=0.8)
        c.set_xlabel(f"teacher e_above_hull ({ds.stage_model.values[k]})")
        c.set_ylabel(f"student e_above_hull ({ds.stage_model.values[0]})")
        c.set_title(f"rescore: {int(kept_t.sum())} kept of {int(m.sum())} rescored")
        c.legend(fontsize=7)
    if "validate" in names:
        _plot_dft_parity(axes[-1], ds, names)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def _plot_dft_parity(ax, ds, names: list[str]) -> None:
    """MLIP formation energy of each MLIP stage against DFT's, validated candidates only."""
    k = names.index("validate")
    eform = ds.formation_energy.values
    rows = np.flatnonzero(np.isfinite(eform[:, k]))
    markers = {"prefilter": ("o", "tab:blue"), "rescore": ("s", "tab:orange")}
    lo, hi = [], []
    for j, st in enumerate(names[:k]):
        m = rows[np.isfinite(eform[rows, j])]
        if not len(m):
            continue
        mae = float(np.mean(np.abs(eform[m, j] - eform[m, k])))
        marker, color = markers.get(st, ("^", None))
        ax.scatter(
            eform[m, k],
            eform[m, j],
            marker=marker,
            color=color,
            s=30,
            label=f"{st} ({ds.stage_model.values[j]}): MAE {1000 * mae:.0f} meV/atom",
        )
        lo.append(min(eform[m, k].min(), eform[m, j].min()))
        hi.append(max(eform[m, k].max(), eform[m, j].max()))
    for i in rows:
        ax.annotate(str(ds.formula.values[i]), (eform[i, k], eform[i, k]), fontsize=7, alpha=0.7)
    if lo:
        a, b = min(lo) - 0.1, max(hi) + 0.1
        ax.plot([a, b], [a, b], "k--", lw=0.8)
    ax.set_xlabel(f"DFT formation energy ({ds.stage_model.values[k]}), eV/atom")
    ax.set_ylabel("MLIP formation energy (eV/atom)")
    ax.set_title(f"validate: {len(rows)} candidates with DFT")
    ax.legend(fontsize=7)


def export_store(
    path: str | Path, out_dir: str | Path, survivors_only: bool = True
) -> tuple[int, Path]:
    """Write structures (CIF each, one extxyz), ``summary.csv`` and ``funnel.png``.

    Returns the number of structures written and the CSV path.
    """
    from ase.io import write

    ds = open_dataset(path)
    out_dir = Path(out_dir)
    (out_dir / "structures").mkdir(parents=True, exist_ok=True)
    status = ds.status.values.astype(object)
    kept = ds.kept.values[:, -1]
    select = (status == "ok") & (kept if survivors_only else True)
    frames = []
    for i in np.flatnonzero(select):
        atoms = structure_of(ds, int(i))
        atoms.info.update(
            {
                "hts_id": str(ds.id.values[i]),
                "formula": str(ds.formula.values[i]),
                "energy_per_atom": float(ds.energy_per_atom.values[i, -1]),
                "e_above_hull": float(ds.e_above_hull.values[i, -1]),
            }
        )
        write(
            out_dir / "structures" / f"{ds.id.values[i]}_{ds.formula.values[i]}.cif",
            atoms,
            format="cif",
        )
        frames.append(atoms)
    if frames:
        write(out_dir / "structures.extxyz", frames, format="extxyz")
    csv_path = out_dir / "summary.csv"
    stages = list(ds.stage.values.astype(object))
    cols = ["id", "formula", "chemsys", "prototype", "source", "n_atoms", "status", "reason"]
    cols += ["dft_dir"] if "dft_dir" in ds else []
    per_stage = [
        "energy_per_atom",
        "formation_energy",
        "e_above_hull",
        "kept",
        "converged",
        "n_steps",
        "time_s",
    ]
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols + [f"{s}_{v}" for s in stages for v in per_stage])
        data = {c: ds[c].values for c in cols}
        sdata = {v: ds[v].values for v in per_stage}
        for i in range(ds.sizes["candidate"]):
            w.writerow(
                [data[c][i] for c in cols]
                + [sdata[v][i, k] for k in range(len(stages)) for v in per_stage]
            )
    if (ds.status.values.astype(object) == "ok").any():
        plot_store(ds, out_dir / "funnel.png")
    return len(frames), csv_path
