"""The flywheel's data: a campaign's teacher results read back as training examples.

A campaign's store holds what its teacher computed: the rescored survivors
(``kept[:, prefilter]``) and, with ``stages.prefilter.audit``, a seeded random
sample of the prefilter's rejects (``audit``), each with the teacher's relaxed
structure and energy.  :func:`read_stores` turns them into direct-student
examples — the unrelaxed candidate, regenerated from its source (a
substitution label decodes to its structure; a files source is read again;
failing both, the stored structure stands in and is counted), and the
teacher's relaxed structure, both labelled with the teacher's relaxed energy.

A seeded share of the teacher rows (``data.holdout``, by candidate id) is never
trained on: :mod:`hts.distill.flywheel` judges students there.  The store is
read only through :mod:`hts.store`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hts.candidates.record import Candidate
from hts.spec import CampaignError

__all__ = ["StoreRows", "read_stores", "store_elements"]

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
        """Teacher-scored ids trained on: not held out, not in a held-out system (``held(formula,
        chemsys)``, :meth:`~hts.distill.context.DistillRun.held`)."""
        return [
            c
            for c, v in self.teacher.items()
            if not v["held"] and not held(v["formula"], v["chemsys"])
        ]

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


def store_elements(data: StoreRows) -> list[str]:
    """Every element of the stores' screened rows."""
    return sorted({el for c in data.screened.values() for el in c.chemsys.split("-") if el})
