"""The flywheel: a campaign's teacher results as training data, and where two students are judged.

A campaign's store holds what its teacher computed: the rescored survivors
(``kept[:, prefilter]``) and, with ``stages.prefilter.audit``, a seeded random
sample of the prefilter's rejects (``audit``), each with the teacher's relaxed
structure and energy.  :func:`read_stores` turns them into direct-student
examples — the unrelaxed candidate, regenerated from its source (a
substitution label decodes to its structure; a files source is read again;
failing both, the stored structure stands in and is counted), and the
teacher's relaxed structure, both labelled with the teacher's relaxed energy.

A seeded share of the teacher rows (``data.holdout``, by candidate id) is never
trained on.  :func:`evaluate_on_stores` judges a student there as the campaign
would use it: it screens every row of the stores (its hull is over all of
them, with elemental references fitted on the training rows), and compares
its ``e_above_hull`` with the teacher's.  The held-out rows are a stratified
sample of the campaign — every survivor had its teacher result, an audited
reject stands for ``rejects / audited`` rejects — so recall and discarded
share are weighted by those inverse inclusion probabilities, and the
Clopper–Pearson bound uses the effective number of teacher-stable candidates
(:func:`hts.distill.screening.screening_metrics`).  Without an audit the
rejects are unseen and the figures cover the survivors only (the report says
which).  The store is read only through :mod:`hts.store`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hts.candidates.record import Candidate
from hts.spec import CampaignError

__all__ = ["StoreRows", "evaluate_on_stores", "read_stores"]

log = logging.getLogger("hts.distill")

_COLUMNS = [
    "id",
    "formula",
    "chemsys",
    "prototype",
    "source",
    "stage_status",
    "energy_per_atom",
    "e_above_hull",
    "formation_energy",
    "kept",
    "audit",
    "audit_missed",
]


@dataclass
class StoreRows:
    """Every screened row of the stores (for the student's hull) and the teacher-scored ones.

    ``teacher`` maps a teacher-scored id to its ``kind`` (``survivor``,
    ``audit``, or ``rescored``: an early survivor the final hull dropped),
    the teacher's relaxed energy per atom, ``e_above_hull`` and formation
    energy, its relaxed structure (a :class:`Candidate`), whether it is held
    out, and its population weight when held out (0: not in the evaluation).
    """

    screened: dict[str, Candidate] = field(default_factory=dict)  # id -> unrelaxed candidate
    teacher: dict[str, dict] = field(default_factory=dict)
    references: dict[str, float] = field(default_factory=dict)  # the teacher's, from the stores
    summary: list[dict] = field(default_factory=list)

    def training(self, held) -> list[str]:
        """Teacher-scored ids trained on: not held out, not in a held-out chemical system."""
        return [c for c, v in self.teacher.items() if not v["held"] and not held(v["chemsys"])]

    def evaluated(self) -> list[str]:
        return [c for c, v in self.teacher.items() if v["weight"] > 0]


def _held_out(seed: int, cid: str, share: float) -> bool:
    h = int(hashlib.sha1(f"{seed}:flywheel:{cid}".encode()).hexdigest()[:8], 16) / 16**8
    return h < share


def _store_teacher(reader) -> dict:
    """The rescore model of the campaign a store was written by."""
    import yaml

    campaign = yaml.safe_load(reader.attrs.get("campaign") or "{}") or {}
    return ((campaign.get("stages") or {}).get("rescore") or {}).get("model") or {}


def _check(i: int, path: Path, teacher) -> object:
    """The store's reader, or a :class:`CampaignError` naming ``data.stores[i]``."""
    from hts.store import StoreReader

    where = f"data.stores[{i}]: {path}"
    try:
        reader = StoreReader(path)
    except FileNotFoundError:
        raise CampaignError(f"{where}: no hts store here") from None
    except Exception as err:  # unreadable metadata
        raise CampaignError(f"{where}: not a readable hts store ({err})") from None
    if "rescore" not in reader.stages:
        raise CampaignError(
            f"{where}: its campaign has no rescore stage, so it holds no teacher results"
        )
    theirs = _store_teacher(reader)
    mine = teacher.model_dump(mode="json", include={"name", "calculator", "kwargs"})
    same = theirs.get("name") == mine["name"] and all(
        theirs.get(k) == mine.get(k) for k in ("calculator", "kwargs") if mine.get(k)
    )
    if theirs and not same:
        raise CampaignError(
            f"{where}: its teacher (stages.rescore.model) is {theirs.get('name')}, the "
            f"distillation's is {mine['name']}: their energies are not comparable"
        )
    return reader


def _regenerate(rows: dict[str, str], campaign) -> dict[str, Candidate]:
    """Unrelaxed candidates by id: substitution labels decoded, a files source read once."""
    from hts.candidates.substitution import Assignment, SubstitutionGenerator

    gen = SubstitutionGenerator(None)
    out: dict[str, Candidate] = {}
    for cid, source in rows.items():
        if not source.startswith("substitution:"):
            continue
        try:
            proto, rest = source.removeprefix("substitution:").split(":", 1)
            roles = tuple(tuple(kv.split("=", 1)) for kv in rest.split(","))
            c = gen.candidate(Assignment(proto, roles))  # type: ignore[arg-type]
        except (ValueError, KeyError):
            continue
        if c.id == cid:
            out[cid] = c
    missing = set(rows) - set(out)
    if missing and campaign.candidates.kind == "files":
        from hts.candidates import open_source

        for c in open_source(campaign):
            if c.id in missing and not c.error:
                out[c.id] = c
    return out


def read_stores(cfg, campaign, teacher) -> StoreRows:
    """Every store of ``data.stores``: its screened rows and teacher results (checked first)."""
    data = StoreRows()
    paths = [cfg.path(p) for p in cfg.data.stores]
    readers = [_check(i, p, teacher) for i, p in enumerate(paths)]
    for path, reader in zip(paths, readers, strict=True):
        k_pre, k_res = reader.stages.index("prefilter"), reader.stages.index("rescore")
        names = [n for n in _COLUMNS if reader.has(n)]  # audit: stores from before it have none
        cols: dict[str, list] = {n: [] for n in _COLUMNS}
        for _, b in reader.iter_blocks(names):
            for n in _COLUMNS:
                cols[n].append(b.get(n, np.zeros(len(b["id"]), bool)))
        c = {n: np.concatenate(v) if v else np.zeros(0) for n, v in cols.items()}
        # the prefilter scored it: its energy (its stage_status reads 'o' in stores written so far)
        screened = (
            np.isfinite(c["energy_per_atom"][:, k_pre]) if len(c["id"]) else np.zeros(0, bool)
        )
        teacher_ok = screened & (c["stage_status"][:, k_res] == "ok")
        teacher_ok &= np.isfinite(c["energy_per_atom"][:, k_res])
        survivor = screened & c["kept"][:, k_pre]
        audit = screened & c["audit"].astype(bool) & ~survivor
        fresh = [i for i in np.flatnonzero(screened) if c["id"][i] not in data.screened]
        regen = _regenerate({c["id"][i]: c["source"][i] for i in fresh}, campaign)
        lost = [i for i in fresh if c["id"][i] not in regen]
        for i, (numbers, positions, cell) in zip(lost, reader.structures(lost), strict=True):
            regen[c["id"][i]] = _candidate(c, i, numbers, positions, cell)
        for i in fresh:
            data.screened[c["id"][i]] = regen[c["id"][i]]
        rows = [i for i in np.flatnonzero(teacher_ok) if c["id"][i] not in data.teacher]
        relaxed = reader.structures(rows)
        held = {i: _held_out(cfg.seed, c["id"][i], cfg.data.holdout) for i in rows}
        n_rejects = int((screened & ~survivor).sum())
        for i, (numbers, positions, cell) in zip(rows, relaxed, strict=True):
            kind = "survivor" if survivor[i] else "audit" if audit[i] else "rescored"
            data.teacher[c["id"][i]] = {
                "store": str(path),
                "kind": kind,
                "formula": str(c["formula"][i]),
                "chemsys": str(c["chemsys"][i]),
                "energy_per_atom": float(c["energy_per_atom"][i, k_res]),
                "e_above_hull": float(c["e_above_hull"][i, k_res]),
                "formation_energy": float(c["formation_energy"][i, k_res]),
                "relaxed": _candidate(c, i, numbers, positions, cell),
                "held": held[i],
                "weight": 0.0,
                "_strata": (len(data.summary), kind, n_rejects),
            }
        refs = reader.attrs.get("references", {}).get("rescore", {})
        for el, r in refs.items():
            e = r.get("energy_per_atom") if isinstance(r, dict) else r
            if e is not None and el not in data.references:
                data.references[el] = float(e)
        data.summary.append(
            {
                "path": str(path),
                "rows": int(reader.n_rows),
                "screened": int(screened.sum()),
                "teacher_rows": len(rows),
                "survivors": sum(1 for i in rows if survivor[i]),
                "audited": sum(1 for i in rows if audit[i] and not survivor[i]),
                "rescored_other": sum(1 for i in rows if not survivor[i] and not audit[i]),
                "audit_missed": sum(1 for i in rows if audit[i] and c["audit_missed"][i]),
                "rejects": n_rejects,
                "held_out": sum(held.values()),
                "from_store_structure": len(lost),
            }
        )
        log.info("store %s: %s", path, data.summary[-1])
    return data


def _candidate(c: dict, i: int, numbers, positions, cell) -> Candidate:
    return Candidate(
        id=str(c["id"][i]),
        source=str(c["source"][i]),
        prototype=str(c["prototype"][i]),
        numbers=np.asarray(numbers),
        positions=np.asarray(positions),
        cell=np.asarray(cell),
        formula=str(c["formula"][i]),
        chemsys=str(c["chemsys"][i]),
    )


def weigh(data: StoreRows, exclude: set[str]) -> None:
    """Population weights of the held-out teacher rows (rows in ``exclude`` were trained on).

    Per store, a held-out survivor stands for ``survivors / held-out
    survivors`` and a held-out audited reject for ``rejects / held-out audited
    rejects``; rescored rows the final hull dropped are no random sample and
    are left out of the evaluation.
    """
    counts: dict[tuple, int] = {}
    totals: dict[tuple, int] = {}
    for cid, v in data.teacher.items():
        store, kind, n_rejects = v["_strata"]
        key = (store, kind)
        if kind == "survivor":
            totals[key] = totals.get(key, 0) + 1
        else:
            totals[key] = n_rejects
        if v["held"] and cid not in exclude:
            counts[key] = counts.get(key, 0) + 1
    for cid, v in data.teacher.items():
        store, kind, _ = v["_strata"]
        key = (store, kind)
        ok = v["held"] and cid not in exclude and kind != "rescored"
        v["weight"] = totals[key] / counts[key] if ok else 0.0


def evaluate_on_stores(run, student_file: Path, data: StoreRows) -> dict:
    """A student on the stores' held-out teacher rows, weighted: the shape of ``evaluate_student``.

    The student screens every row of the stores (one forward pass each), its
    references are fitted on the training rows, its hull is over all of them;
    ``screening`` and ``errors`` cover the held-out rows (``calibration``) and
    those of seen and held-out chemical systems.
    """
    from hts.distill.calibration import judged_sections, screen
    from hts.distill.context import num, rescore_threshold, student_spec
    from hts.distill.evaluate import fit_references, hull_energies
    from hts.spec import PrefilterStage

    cfg = run.cfg
    weigh(data, set(run.train))  # what the dataset trained on is no test
    spec = student_spec(run, student_file)
    stage = PrefilterStage(model=spec, direct=True)
    run.failures.clear()
    run.phase("evaluating on the stores", 2 * len(data.screened))
    own = screen(run, stage, list(data.screened.values()))
    ev_ids = data.evaluated()
    at_t = screen(run, stage, [data.teacher[c]["relaxed"] for c in ev_ids])
    fit_ids = data.training(run.held)
    refs = {el: data.references.get(el, float("nan")) for el in _elements(data)}
    s_refs = fit_references(
        [data.teacher[c]["formula"] for c in fit_ids],
        [own.get(c, float("nan")) for c in fit_ids],
        [data.teacher[c]["formation_energy"] for c in fit_ids],
        refs,
    )
    run.student_refs = s_refs
    ids = list(data.screened)
    s_all = hull_energies(
        [(data.screened[c].formula, own.get(c, float("nan"))) for c in ids], s_refs
    )
    s_eh = dict(zip(ids, s_all, strict=True))
    t = data.teacher
    stable = cfg.evaluation.stable_threshold
    if stable is None:
        stable = rescore_threshold(run.campaign)
    ev = cfg.evaluation
    t_eh = np.array([t[c]["e_above_hull"] for c in ev_ids])
    st_eh = np.array([s_eh.get(c, np.nan) for c in ev_ids])
    w = np.array([t[c]["weight"] for c in ev_ids])
    t_e = np.array([t[c]["energy_per_atom"] for c in ev_ids])
    own_e = np.array([own.get(c, np.nan) for c in ev_ids])
    at_e = np.array([at_t.get(c, np.nan) for c in ev_ids])
    unseen = np.array([run.held(t[c]["chemsys"]) for c in ev_ids], dtype=bool)
    everything = np.ones(len(ev_ids), bool)
    screening, errors = judged_sections(
        everything,
        unseen,
        [t[c]["formula"] for c in ev_ids],
        t_e,
        at_e,
        own_e,
        t_eh,
        st_eh,
        stable,
        ev,
        weights=w,
    )
    return {
        "screening": screening,
        "errors": errors,
        "references": {"teacher": refs, "student_fitted": s_refs},
        "candidates": [
            {
                "id": c,
                "formula": t[c]["formula"],
                "system": t[c]["kind"],
                "trained": False,
                "held_out_system": bool(u),
                "weight": float(wi),
                "teacher_energy_per_atom": num(te),
                "student_energy_per_atom": num(oe),
                "student_at_teacher_minimum": num(ae),
                "teacher_e_above_hull": num(a),
                "student_e_above_hull": num(b),
            }
            for c, u, wi, te, oe, ae, a, b in zip(
                ev_ids, unseen, w, t_e, own_e, at_e, t_eh, st_eh, strict=True
            )
        ],
        "student_spec": spec,
    }


def compare(results: dict[str, tuple[str, dict, dict[str, float | None]]]) -> dict:
    """The report's ``flywheel`` section: each student on the held-out store rows.

    ``results``: name → (student file, :func:`evaluate_on_stores`'s answer,
    more thresholds by label: its own report's, the first student's).  Per
    student: the weighted screen at the threshold calibrated on these rows and
    at each of those, and the held-out audited rejects the teacher keeps (what
    the campaign's prefilter missed) that it would keep.
    """
    from hts.distill.screening import THRESHOLDS

    out: dict = {}
    for name, (path, res, more) in results.items():
        m = res["screening"]["calibration"]
        rows = res["candidates"]
        stable = m["stable_threshold"] + 1e-9
        missed = [
            r for r in rows if r["system"] == "audit" and _le(r["teacher_e_above_hull"], stable)
        ]
        entry = {
            "student": path,
            "n_candidates": m["n_candidates"],
            "n_teacher_stable": m["n_teacher_stable"],
            "n_effective": m["n_effective"],
            "spearman_e_above_hull": m["spearman_e_above_hull"],
            "ehull_mae_mev_per_atom": m["ehull_mae_mev_per_atom"],
            "own_energy_mae_mev": res["errors"]["calibration"]["own_energy_mae_mev"],
            "audit_missed": len(missed),
        }
        for key, thr in {"calibrated": m["threshold"], **more}.items():
            if thr is None:
                entry[key] = None
                continue
            k = int(np.argmin(np.abs(THRESHOLDS - thr)))
            c = m["curve"]
            entry[key] = {
                "threshold": float(thr),
                "recall": c["recall"][k],
                "recall_lower_bound": c["recall_lower_bound"][k],
                "discarded": c["discarded"][k],
                "audit_missed_found": sum(
                    1 for r in missed if _le(r["student_e_above_hull"], thr + 1e-9)
                ),
            }
        out[name] = entry
    return out


def _le(x, limit: float) -> bool:
    return x is not None and x <= limit


def _elements(data: StoreRows) -> list[str]:
    return sorted({el for c in data.screened.values() for el in c.chemsys.split("-") if el})
