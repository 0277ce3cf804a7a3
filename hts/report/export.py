"""``hts export``: the store's structures, one CSV line per candidate and the funnel's plot.

Reads through :func:`hts.store.open_dataset` (committed rows only), so it is
safe while a run is writing.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from hts.candidates.record import chemist_formula
from hts.store import open_dataset, structure_of

__all__ = ["export_store", "plot_dft_parity", "plot_store"]


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
        eform_all = ds.formation_energy.values
        k = names.index("validate")
        formulas = {
            int(i): chemist_formula(str(ds.formula.values[i]))
            for i in np.flatnonzero(np.isfinite(eform_all[:, k]))
        }
        models = [str(m) for m in ds.stage_model.values]
        plot_dft_parity(axes[-1], eform_all, formulas, names, models)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def plot_dft_parity(
    ax, eform: np.ndarray, formulas: dict[int, str], names: list[str], models: list[str]
) -> None:
    """MLIP formation energy of each MLIP stage against DFT's, validated candidates only.

    ``eform`` is the store's ``formation_energy`` ``[rows, stages]``; ``formulas``
    labels rows by position.
    """
    k = names.index("validate")
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
            label=f"{st} ({models[j]}): MAE {1000 * mae:.0f} meV/atom, n={len(m)}",
        )
        lo.append(min(eform[m, k].min(), eform[m, j].min()))
        hi.append(max(eform[m, k].max(), eform[m, j].max()))
    for i in rows:
        ax.annotate(formulas.get(int(i), ""), (eform[i, k], eform[i, k]), fontsize=7, alpha=0.7)
    if lo:
        a, b = min(lo) - 0.1, max(hi) + 0.1
        ax.plot([a, b], [a, b], "k--", lw=0.8)
    ax.set_xlabel(f"DFT formation energy ({models[k]}), eV/atom")
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
    # the last stage's, as the energies below (NaN for DFT, which records none, and old stores)
    n = ds.sizes["candidate"]
    pressure = ds.pressure.values[:, -1] if "pressure" in ds else np.full(n, np.nan)
    frames = []
    for i in np.flatnonzero(select):
        atoms = structure_of(ds, int(i))
        atoms.info.update(
            {
                "hts_id": str(ds.id.values[i]),
                "formula": chemist_formula(str(ds.formula.values[i])),
                "energy_per_atom": float(ds.energy_per_atom.values[i, -1]),
                "e_above_hull": float(ds.e_above_hull.values[i, -1]),
                "pressure": float(pressure[i]),  # GPa, NaN where unknown
            }
        )
        write(
            out_dir
            / "structures"
            / f"{ds.id.values[i]}_{chemist_formula(str(ds.formula.values[i]))}.cif",
            atoms,
            format="cif",
        )
        frames.append(atoms)
    if frames:
        write(out_dir / "structures.extxyz", frames, format="extxyz")
    csv_path = out_dir / "summary.csv"
    stages = list(ds.stage.values.astype(object))
    cols = ["id", "formula", "chemsys", "prototype", "source", "n_atoms", "status", "reason"]
    cols += [c for c in ("dft_dir", "audit", "audit_missed") if c in ds]
    per_stage = [
        "energy_per_atom",
        "formation_energy",
        "e_above_hull",
        "kept",
        "converged",
        "n_steps",
        "pressure",
        "time_s",
    ]
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols + [f"{s}_{v}" for s in stages for v in per_stage])
        data = {c: ds[c].values for c in cols}
        data["formula"] = np.array([chemist_formula(str(f)) for f in data["formula"]], dtype=object)
        # a store from before a variable existed: its column is there, empty (NaN)
        sdata = {
            v: ds[v].values if v in ds else np.full((n, len(stages)), np.nan) for v in per_stage
        }
        for i in range(ds.sizes["candidate"]):
            w.writerow(
                [data[c][i] for c in cols]
                + [sdata[v][i, k] for k in range(len(stages)) for v in per_stage]
            )
    if (ds.status.values.astype(object) == "ok").any():
        plot_store(ds, out_dir / "funnel.png")
    return len(frames), csv_path
