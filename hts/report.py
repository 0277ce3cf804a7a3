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

__all__ = ["export_store", "summarize"]


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
]


def summarize(path: str | Path, top: int = 10) -> dict:
    ds = open_dataset(path, variables=_SUMMARY_VARS)
    ledger = ds.attrs.get("ledger", {})
    status = ds.status.values.astype(object)
    reasons = ds.reason.values.astype(object)
    ids = ds.id.values.astype(object)
    stages = []
    for k, st in enumerate(ds.stage.values.astype(object)):
        n_in = len(status) if k == 0 else int(ds.kept.values[:, k - 1].sum())
        ok = status == "ok"
        stages.append(
            {
                "stage": st,
                "in": n_in,
                "ok": int(ok.sum()),
                "failed": int((~ok).sum()),
                "kept": int(ds.kept.values[:, k].sum()),
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
    ehull = ds.e_above_hull.values[:, 0]
    eform = ds.formation_energy.values[:, 0]
    finite = np.flatnonzero(np.isfinite(ehull))
    # most stable: on (or nearest) the hull first, then the most negative formation energy
    order = finite[np.lexsort((eform[finite], np.round(ehull[finite], 4)))][:top]
    best = [
        {
            "id": ids[i],
            "formula": str(ds.formula.values[i]),
            "prototype": str(ds.prototype.values[i]),
            "source": str(ds.source.values[i]),
            "energy_per_atom": float(ds.energy_per_atom.values[i, 0]),
            "e_above_hull": float(ehull[i]),
            "formation_energy": float(eform[i]),
            "kept": bool(ds.kept.values[i, 0]),
        }
        for i in order
    ]
    return {
        "campaign": ds.attrs.get("campaign_name", "?"),
        "rows": int(ds.sizes["candidate"]),
        "stages": stages,
        "failures": failures,
        "best": best,
        "wall_s": float(ledger.get("wall_s", 0.0)),
        "finalized": bool(ledger.get("finalized", False)),
        "model": str(ds.stage_model.values[0]) if ds.sizes["stage"] else "",
    }


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
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    finite = np.isfinite(ehull)
    hi = float(np.nanpercentile(ehull[finite], 98)) if finite.any() else 1.0
    bins = np.linspace(0, max(hi, 0.05), 40)
    a.hist(np.clip(ehull[finite], 0, bins[-1]), bins=bins, color="0.75", label="all scored")
    a.hist(np.clip(ehull[finite & kept], 0, bins[-1]), bins=bins, color="tab:green", label="kept")
    a.set_xlabel("e_above_hull (eV/atom)")
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
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


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
