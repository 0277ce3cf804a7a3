"""For the people who will make the material: powder XRD, space group, conventional cell.

The validated (or final) candidates, characterised one by one
(:mod:`hts.analysis.xrd`), for ``hts export --xrd`` and the dashboard's lab
table.  A structure whose analysis fails gets its line with the error; the
others go on.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from hts.candidates.record import chemist_formula
from hts.report.summary import _num
from hts.store import StoreReader
from hts.store.reader import with_reader

__all__ = [
    "XRD_INDEX_COLUMNS",
    "characterisation_entry",
    "characterise_row",
    "export_xrd",
    "final_candidates",
]


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
