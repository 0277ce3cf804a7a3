"""The store in numbers: the funnel, the best candidates and MLIP against DFT.

What ``hts status``, ``hts report`` and the dashboard show.  Everything here
reads the store through :class:`hts.store.StoreReader`, which cuts off
uncommitted rows, so it is safe while a run is writing.  Summaries cost the
ledger (running counters and the writer's ranking) plus the rows they list,
not a pass over the store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hts.audit import funnel_of
from hts.candidates.record import chemist_formula
from hts.store import StoreReader
from hts.store.best import rank, rank_keys
from hts.store.counters import STATE_VARS, RowState
from hts.store.reader import with_reader

__all__ = [
    "BEST_VARS",
    "DFT_ONLY",
    "TEACHER_ONLY",
    "best_entries",
    "dft_parity",
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
