"""Summaries and exports of a store, for ``hts status``, ``hts export`` and the dashboard.

Everything here reads the store through :class:`hts.store.StoreReader` or
:func:`hts.store.open_dataset`, which cut off uncommitted rows, so it is safe
while a run is writing.  Summaries cost the ledger (running counters and the
writer's ranking) plus the rows they list, not a pass over the store.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from hts.audit import funnel_of
from hts.candidates.record import chemist_formula
from hts.store import StoreReader, open_dataset, structure_of
from hts.store.best import rank, rank_keys
from hts.store.counters import STATE_VARS, RowState
from hts.store.reader import with_reader

__all__ = [
    "BEST_VARS",
    "best_entries",
    "dft_parity",
    "export_store",
    "export_xrd",
    "keep_threshold",
    "stability_disagreements",
    "stage_table",
    "summarize",
]


BEST_VARS = ["id", "formula", "prototype", "source", "energy_per_atom", "e_above_hull"]
BEST_VARS += ["formation_energy", "kept"]


def best_entries(names: list[str], depth: np.ndarray, cols: dict[str, np.ndarray]) -> list[dict]:
    """The best-candidates table; ``cols`` holds :data:`BEST_VARS` of the ranked rows, in order."""
    eh, ef = cols["e_above_hull"], cols["formation_energy"]
    return [
        {
            "id": cols["id"][j],
            "formula": chemist_formula(str(cols["formula"][j])),
            "prototype": str(cols["prototype"][j]),
            "source": str(cols["source"][j]),
            "stage": names[d],
            "energy_per_atom": float(cols["energy_per_atom"][j, d]),
            "e_above_hull": float(eh[j, d]),
            "formation_energy": float(ef[j, d]),
            "e_above_hull_by_stage": {st: _num(eh[j, k]) for k, st in enumerate(names)},
            "kept": bool(cols["kept"][j, d]),
        }
        for j, d in enumerate(depth)
    ]


def stage_table(counters, models: list[str]) -> list[dict]:
    """The funnel: tried (``in``), scored (``ok``), failed and kept per stage, with its model."""
    return [{**s, "model": models[k]} for k, s in enumerate(counters.stage_counts())]


def summarize(path: str | Path, top: int = 10) -> dict:
    """What ``hts status`` shows, at the cost of the ledger plus the listed rows.

    Funnel counts and failures come from the writer's running counters, the
    best candidates from its ranking (:mod:`hts.store.best`); only the listed
    rows are read.  Stores from before counters or rankings are counted and
    ranked from their rows.
    """
    return with_reader(path, lambda r: _summarize(r, top))


def _summarize(r: StoreReader, top: int) -> dict:
    names, models = r.stages, r.stage_models()
    rows = r.best_rows(top)
    if rows is None:  # a store from before the writer ranked, or a longer list: rank the rows
        cols = r.read_range(["e_above_hull", "formation_energy"])
        rows, _ = rank(cols["e_above_hull"], cols["formation_energy"], top)
    cols = r.read(BEST_VARS, rows)
    _, depth = rank_keys(cols["e_above_hull"], cols["formation_energy"])
    return {
        "dft": dft_parity(r) if "validate" in names else None,
        "campaign": r.attrs.get("campaign_name", "?"),
        "rows": r.n_rows,
        "stages": stage_table(r.counters(), models),
        "failures": r.counters().failures(15),
        "best": best_entries(names, depth, cols),
        "wall_s": float(r.ledger.get("wall_s", 0.0)),
        "finalized": r.finalized,
        "model": models[0] if names else "",
        "stage_names": names,
        "funnel": funnel_of(r),
    }


_DFT_VARS = [*STATE_VARS, "id", "formula", "prototype", "formation_energy"]
_DFT_VARS += ["converged", "time_s", "dft_dir"]


def dft_parity(r: StoreReader) -> dict:
    """MLIP against DFT on the validated candidates: per-candidate values, MAE per MLIP stage,
    and the candidates where the teacher and DFT disagree on stability.

    Formation energies are compared, not totals: each code's total energies
    have their own zero (GPAW's are relative to its atomic references).
    ``mae[stage]`` holds the mean absolute error of formation energy and of
    ``e_above_hull`` against DFT and ``n``, the candidates it is over (those
    with both values).  ``disagreements`` lists the validated candidates the
    teacher (the last MLIP stage) kept but whose DFT ``e_above_hull`` is above
    the validate stage's keep threshold, or the reverse (see
    :func:`stability_disagreements`); they come first in ``candidates``, the
    cases a user looks at first.  Reads only the rows the ledger says DFT ran on.
    """
    names = r.stages
    k = names.index("validate")
    where = r.stage_rows("validate")
    where = np.arange(r.n_rows) if where is None else where
    c = r.read(_DFT_VARS, where)
    state = RowState.of(names, c)
    e_dft = c["energy_per_atom"][:, k]
    rows = np.flatnonzero(np.isfinite(e_dft))
    failed = np.array(
        [j for j, (st, _) in sorted(state.failures.items()) if st == "validate"], dtype=np.int64
    )
    failed = failed[~np.isfinite(e_dft[failed])] if len(failed) else failed
    eform, ehull = c["formation_energy"], c["e_above_hull"]
    mae = {}
    for j, st in enumerate(names[:k]):
        m = rows[np.isfinite(eform[rows, k]) & np.isfinite(eform[rows, j])]
        mae[st] = {
            "n": int(len(m)),
            "formation_energy": float(np.mean(np.abs(eform[m, j] - eform[m, k])))
            if len(m)
            else None,
            "e_above_hull": float(np.mean(np.abs(ehull[m, j] - ehull[m, k]))) if len(m) else None,
        }
    threshold = keep_threshold(r.attrs.get("campaign", ""), "validate")
    teacher = names[k - 1] if k else None
    flags = (
        stability_disagreements(
            c["kept"][rows, k - 1], ehull[rows, k], c["kept"][rows, k], threshold
        )
        if teacher
        else [None] * len(rows)
    )
    flag_of = {int(i): f for i, f in zip(rows, flags, strict=True)}
    dft_dir = c.get("dft_dir", np.full(len(where), "", dtype=object))
    # the disagreements first, the largest DFT-vs-teacher gap on top; then the rest in row order
    gap = {int(i): abs(ehull[i, k] - ehull[i, k - 1]) if teacher else 0.0 for i in rows}
    flagged = sorted(
        (i for i in rows if flag_of[int(i)]), key=lambda i: -np.nan_to_num(gap[int(i)])
    )
    order = [*flagged, *(i for i in rows if not flag_of[int(i)]), *failed]
    candidates = [
        {
            "id": str(c["id"][i]),
            "row": int(where[i]),
            "formula": chemist_formula(str(c["formula"][i])),
            "prototype": str(c["prototype"][i]),
            "formation_energy": {st: _num(eform[i, j]) for j, st in enumerate(names)},
            "e_above_hull": {st: _num(ehull[i, j]) for j, st in enumerate(names)},
            "converged": bool(c["converged"][i, k]),
            "time_s": _num(c["time_s"][i, k]),
            "status": str(c["status"][i]),
            "reason": state.failures[i][1] if i in state.failures else str(c["reason"][i]),
            "job_dir": str(dft_dir[i]),
            "disagreement": flag_of.get(int(i)),
        }
        for i in order
    ]
    disagreements = [
        {
            "id": d["id"],
            "row": d["row"],
            "formula": d["formula"],
            "kind": d["disagreement"],
            "teacher_e_above_hull": d["e_above_hull"][teacher],
            "dft_e_above_hull": d["e_above_hull"]["validate"],
        }
        for d in candidates
        if d["disagreement"]
    ]
    return {
        "code": r.stage_models()[k],
        "mae": mae,
        "teacher": teacher,
        "threshold": threshold,
        "disagreements": disagreements,
        "candidates": candidates,
    }


TEACHER_ONLY = "teacher stable, DFT not"
DFT_ONLY = "DFT stable, teacher not"


def stability_disagreements(
    teacher_kept: np.ndarray,
    dft_e_above_hull: np.ndarray,
    dft_kept: np.ndarray,
    threshold: float | None,
) -> list[str | None]:
    """Per validated candidate: where the teacher and DFT disagree on stability, or None.

    The teacher's verdict is its own keep rule (``kept`` at the last MLIP
    stage, what sent the candidate to DFT); DFT's is its ``e_above_hull``
    against the validate stage's keep threshold (``threshold``; where the rule
    has no ``e_above_hull`` bound, the stage's ``kept``).  "Teacher stable, DFT
    not" is a false positive of the MLIPs — a synthesis not worth attempting
    on their word alone; "DFT stable, teacher not" a candidate the teacher
    would have thrown away (possible once the final hull pass has moved the
    teacher's hull after the candidate was sent to DFT).
    """
    if threshold is None:
        dft_stable = np.asarray(dft_kept, dtype=bool)
    else:
        dft_stable = np.asarray(dft_e_above_hull, dtype=float) <= threshold
    out: list[str | None] = []
    for t, d, e in zip(
        np.asarray(teacher_kept, dtype=bool), dft_stable, dft_e_above_hull, strict=True
    ):
        if not np.isfinite(e):
            out.append(None)  # no DFT verdict (its hull was not computed)
        elif t and not d:
            out.append(TEACHER_ONLY)
        elif d and not t:
            out.append(DFT_ONLY)
        else:
            out.append(None)
    return out


def keep_threshold(campaign_yaml: str, stage: str) -> float | None:
    """The ``e_above_hull`` bound (eV/atom) of a stage's keep rule, from the store's campaign text.

    None when the stage or its rule is not there, or the rule bounds no
    ``e_above_hull`` from above.
    """
    import yaml

    from hts.spec.stages import KeepRule

    try:
        keep = ((yaml.safe_load(campaign_yaml) or {}).get("stages") or {}).get(stage, {})["keep"]
        rule = KeepRule.parse(keep["text"] if isinstance(keep, dict) else str(keep))
    except (yaml.YAMLError, KeyError, TypeError, AttributeError, ValueError):
        return None
    bounds = [v for f, op, v in rule.terms if f == "e_above_hull" and op in ("<=", "<")]
    return min(bounds) if bounds else None


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


# -- for the people who will make the material: XRD, space group, conventional cell ----------


def final_candidates(r: StoreReader, cols: dict[str, np.ndarray] | None = None):
    """The rows an experimentalist gets a pattern for, most stable first, and their stage.

    With a validate stage: the DFT-validated candidates (its ``stage_status``
    ``ok``); without one: the final survivors (kept at the last stage, status
    ``ok``).  Ranked by that stage's ``e_above_hull``, then formation energy.
    ``cols`` may hold ``e_above_hull``, ``formation_energy`` and ``kept`` of
    every committed row already in memory (the dashboard's cache); otherwise
    they are read in blocks.
    """
    names = r.stages
    if cols is None:
        parts = [c for _, c in r.iter_blocks(["e_above_hull", "formation_energy", "kept"])]
        cols = {n: np.concatenate([p[n] for p in parts]) for n in parts[0]} if parts else None
    if not names or cols is None or not len(cols["e_above_hull"]):
        return np.zeros(0, dtype=np.int64), names[-1] if names else ""
    k = names.index("validate") if "validate" in names else len(names) - 1
    n = min(r.n_rows, len(cols["e_above_hull"]))
    eh, ef = cols["e_above_hull"][:n, k], cols["formation_energy"][:n, k]
    if names[k] == "validate":
        cand = r.stage_rows("validate")
        cand = np.arange(n) if cand is None else cand[cand < n]
        ok = r.read(["stage_status"], cand)["stage_status"][:, k].astype(str) == "ok"
    else:
        cand = np.flatnonzero(cols["kept"][:n, k])
        ok = r.read(["status"], cand)["status"].astype(str) == "ok"
    cand = cand[ok]
    order = np.lexsort((np.nan_to_num(ef[cand], nan=np.inf), np.nan_to_num(eh[cand], nan=np.inf)))
    return cand[order].astype(np.int64), names[k]


def characterise_row(r: StoreReader, row: int, symprec: float | None = None):
    """:func:`hts.analysis.xrd.characterise` of one stored (relaxed) structure."""
    from hts.analysis.xrd import SYMPREC, characterise, to_structure

    numbers, positions, cell = r.structure(int(row))
    s = to_structure(numbers=numbers, positions=positions, cell=cell)
    return characterise(s, symprec=SYMPREC if symprec is None else symprec)


def characterisation_entry(c, cid: str, formula: str, stage: str, e_above_hull) -> dict:
    """One candidate's line of the index: space group, conventional cell, strongest peaks."""
    lat = c.symmetry.conventional.lattice
    return {
        "id": cid,
        "formula": formula,
        "stage": stage,
        "e_above_hull": _num(float(e_above_hull)),
        "space_group": c.symmetry.symbol,
        "space_group_number": c.symmetry.number,
        "crystal_system": c.symmetry.crystal_system,
        "symprec": c.symmetry.symprec,
        "n_atoms_conventional": len(c.symmetry.conventional),
        "a": lat.a,
        "b": lat.b,
        "c": lat.c,
        "alpha": lat.alpha,
        "beta": lat.beta,
        "gamma": lat.gamma,
        "strongest_peaks": "; ".join(
            f"{p.two_theta:.2f} {p.hkl.split(' (')[0]} {p.intensity:.0f}" for p in c.strongest(3)
        ),
    }


XRD_INDEX_COLUMNS = [
    "id",
    "formula",
    "stage",
    "e_above_hull",
    "space_group",
    "space_group_number",
    "crystal_system",
    "symprec",
    "n_atoms_conventional",
    "a",
    "b",
    "c",
    "alpha",
    "beta",
    "gamma",
    "strongest_peaks",
    "peaks_csv",
    "pattern_png",
    "conventional_cif",
    "error",
]


def export_xrd(
    path: str | Path, out_dir: str | Path, limit: int = 100, symprec: float | None = None
) -> tuple[int, int, Path | None]:
    """What an experimentalist checks a synthesis against, for the validated (or final) candidates.

    For each of the :func:`final_candidates`, at most ``limit`` of them (most
    stable first), writes into ``<out_dir>/xrd/``: ``<formula>_<id>.csv`` (the
    powder pattern's peaks, Cu Kα), ``<formula>_<id>.png`` (its plot) and
    ``<formula>_<id>_conventional.cif`` (the conventional cell), plus
    ``index.csv``: one line per candidate with its space group, conventional
    lattice, strongest peaks and the files.  A structure whose analysis fails
    gets its line with the error; the others go on.

    Returns (patterns written, candidates eligible, the index's path or None
    when none were eligible or ``limit`` is 0).
    """
    from hts.analysis.xrd import SYMPREC

    if limit <= 0:
        return 0, 0, None
    symprec = SYMPREC if symprec is None else symprec

    def run(r: StoreReader) -> tuple[int, int, Path | None]:
        rows, stage = final_candidates(r)
        if not len(rows):
            return 0, 0, None
        written, index = _write_xrd(r, rows[:limit], stage, Path(out_dir) / "xrd", symprec)
        return written, len(rows), index

    return with_reader(path, run)


def _write_xrd(
    r: StoreReader, rows: np.ndarray, stage: str, folder: Path, symprec: float
) -> tuple[int, Path]:
    from hts.analysis.xrd import plot_pattern, write_peaks_csv

    folder.mkdir(parents=True, exist_ok=True)
    c = r.read(["id", "formula", "e_above_hull"], rows)
    k = r.stages.index(stage)
    lines, written = [], 0
    for j, row in enumerate(rows):
        cid, formula = str(c["id"][j]), chemist_formula(str(c["formula"][j]))
        stem = f"{formula}_{cid}"
        try:
            ch = characterise_row(r, int(row), symprec)
        except Exception as err:  # one odd structure does not stop the export
            lines.append({"id": cid, "formula": formula, "stage": stage, "error": repr(err)})
            continue
        write_peaks_csv(ch.peaks, folder / f"{stem}.csv")
        title = f"{formula} ({cid}): {ch.symmetry.symbol} ({ch.symmetry.number}), Cu Kα"
        plot_pattern(ch.peaks, folder / f"{stem}.png", title=title)
        (folder / f"{stem}_conventional.cif").write_text(ch.symmetry.cif())
        entry = characterisation_entry(ch, cid, formula, stage, c["e_above_hull"][j, k])
        entry.update(
            peaks_csv=f"{stem}.csv",
            pattern_png=f"{stem}.png",
            conventional_cif=f"{stem}_conventional.cif",
            error="",
        )
        lines.append(entry)
        written += 1
    index = folder / "index.csv"
    with index.open("w", newline="") as fh:
        w = csv.DictWriter(fh, XRD_INDEX_COLUMNS, restval="")
        w.writeheader()
        for line in lines:
            w.writerow({key: _cell(v) for key, v in line.items()})
    return written, index


def _cell(v):
    if isinstance(v, float):
        return "" if not np.isfinite(v) else f"{v:.6g}"
    return "" if v is None else v
