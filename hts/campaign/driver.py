"""The campaign driver: streams chunks through the stages into the store.

The driver owns the store (the single writer) and the hull.  It enumerates
candidates lazily, keeps at most ``max_in_flight`` chunks submitted
(backpressure: memory stays flat however long the stream), scores each
finished chunk against the running hull, appends it to the store and commits
it in the ledger.  A restarted run rebuilds the same numbered chunks, skips
the committed ones, and rebuilds the hull from the store.  At the end the hull
is recomputed once over everything and the final values written.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hts.candidates import Chunk, chunks, ensure_not_empty, open_source
from hts.candidates.record import Candidate
from hts.spec import Campaign, CampaignError, ValidateStage
from hts.stages.hull import HullTracker, MissingReferenceError
from hts.stages.references import relax_references
from hts.stages.screen import ChunkResult, StageRecord, run_stage
from hts.stages.validate import DftRecord, DftTask
from hts.store import Row, StageUpdate, Store
from hts.store.schema import STATUS_FAILED, STATUS_OK

__all__ = ["RunStats", "run_campaign"]

log = logging.getLogger("hts.campaign")

# what a stored row and a candidate share besides the structure (a survivor is requeued from either)
_IDENTITY = ("id", "source", "prototype", "formula", "chemsys")


@dataclass
class RunStats:
    """Live counts for progress displays and the closing summary."""

    total_estimate: int | None = None
    done: int = 0  # candidates with a prefilter result this run
    resumed: int = 0  # candidates already in the store from an earlier run
    ok: int = 0
    failed: int = 0
    kept: int = 0  # prefilter survivors (running verdicts until the final pass)
    rescored: int = 0  # survivors rescored by the teacher, this run
    rescore_kept: int = 0
    rescore_waiting: int = 0  # survivors queued or in flight for the teacher
    validated: int = 0  # DFT jobs finished this run (candidates)
    validate_failed: int = 0
    validate_kept: int = 0
    validate_waiting: int = 0  # DFT jobs (candidates and references) queued or running
    chunks_done: int = 0
    in_flight: int = 0
    started: float = field(default_factory=time.time)
    worker_s: float = 0.0  # wall time inside tasks
    model_s: float = 0.0  # of which inside model calls
    phase: str = "starting"

    @property
    def rate(self) -> float:
        dt = time.time() - self.started
        return self.done / dt if dt > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        if not self.total_estimate or self.rate <= 0:
            return None
        return max(0.0, (self.total_estimate - self.done - self.resumed) / self.rate)


def _load_user_entries(campaign: Campaign) -> list:
    path = campaign.hull.reference_entries
    if not path:
        return []
    from monty.serialization import loadfn
    from pymatgen.analysis.phase_diagram import PDEntry
    from pymatgen.entries.computed_entries import ComputedEntry

    p = campaign.resolve_input(path)
    try:
        data = loadfn(p)
    except Exception as err:
        raise CampaignError(f"hull.reference_entries: cannot read {p}: {err}") from None
    if not isinstance(data, list) or not all(isinstance(e, ComputedEntry | PDEntry) for e in data):
        raise CampaignError(
            f"hull.reference_entries: {p} must hold a JSON list of pymatgen ComputedEntry/PDEntry objects"
        )
    return data


def _source_elements(campaign: Campaign) -> list[str]:
    spec = campaign.candidates
    if spec.kind != "substitution":
        return []
    els: set[str] = set()
    for table in [spec.elements, *[p.elements or {} for p in spec.prototypes]]:
        for symbols in table.values():
            els.update(symbols)
    return sorted(els)


def _resolved_stage(campaign: Campaign, name: str):
    """A stage with its model file made absolute (workers may run elsewhere) and ``keep: auto`` set."""
    stage = campaign.stages.get(name)
    update: dict = {}
    if stage.model.path:
        p = campaign.resolve_input(stage.model.path).resolve()
        if not p.is_file():
            raise CampaignError(f"stages.{name}.model.path: no such model file {p}")
        update["model"] = stage.model.model_copy(update={"path": str(p)})
    link = getattr(stage, "distillation", None)
    if link is not None:
        from hts.distill.evaluate import (
            ReportError,
            auto_keep_rule,
            fitted_references,
            student_kind,
        )

        report = campaign.resolve_input(link.report)
        try:
            kind = student_kind(report)
            if kind is not None and (kind == "direct") != bool(getattr(stage, "direct", False)):
                raise CampaignError(
                    f"stages.{name}.direct: the report's student is "
                    + (
                        "a direct student (it predicts relaxed energies from unrelaxed "
                        "candidates): set direct: true"
                        if kind == "direct"
                        else "a relaxing student (a force field): set direct: false"
                    )
                )
            if stage.keep == "auto":
                update["keep"] = auto_keep_rule(report, link.target_recall)
            if link.references == "fitted":
                fitted_references(report)  # readable now, not after the first chunk
        except ReportError as err:
            raise CampaignError(f"stages.{name}.distillation.report: {err}") from None
    return stage.model_copy(update=update) if update else stage


def preflight(campaign: Campaign) -> None:
    """Every check that needs no model and no worker: run by ``hts validate`` and before a run."""
    ensure_not_empty(campaign)
    _load_user_entries(campaign)
    for name in campaign.stages.mlip_names():
        _resolved_stage(campaign, name)
    v = campaign.stages.validate_
    if v is not None and v.code == "gpaw":
        import importlib.util

        if importlib.util.find_spec("gpaw") is None:
            raise CampaignError(
                "stages.validate.code: gpaw is not installed in this environment "
                "(`make setup` builds it; by hand: apt-get install libxc-dev libopenblas-dev "
                "libfftw3-dev, then GPAW_CONFIG=containers/gpaw/siteconfig.py pip install '.[dft]')"
            )


@dataclass
class _Track:
    """One MLIP stage's settings and its own hull (its model's energies are not comparable to another's)."""

    name: str
    k: int  # index on the store's stage axis
    spec: object
    hull: HullTracker = field(default_factory=HullTracker)
    ref_reasons: dict[str, str] = field(default_factory=dict)  # element -> why no reference

    def score(self, formula: str, e: float) -> tuple[float, float, str]:
        try:
            return self.hull.e_above_hull(formula, e), self.hull.formation_energy(formula, e), ""
        except MissingReferenceError as err:
            present = set(re.findall(r"[A-Z][a-z]?", formula))
            els = [el for el in self.ref_reasons if el in present]
            why = "; ".join(f"{el}: {self.ref_reasons[el]}" for el in els)
            return float("nan"), float("nan"), f"{err}{' (' + why + ')' if why else ''}"

    def values(self, rec: StageRecord, formula: str, n_atoms: int) -> tuple[dict, str]:
        """The stage's columns for one successful record, and why scoring failed ('' if not)."""
        ehull, eform, why = self.score(formula, rec.energy_per_atom)
        values: dict[str, float | bool | int] = {
            "energy": rec.energy,
            "energy_per_atom": rec.energy_per_atom,
            "e_above_hull": ehull,
            "formation_energy": eform,
            "converged": rec.converged,
            "n_steps": rec.n_steps,
            "time_s": rec.time_s,
        }
        values["kept"] = not why and self.spec.keep(
            {
                "e_above_hull": ehull,
                "energy_per_atom": rec.energy_per_atom,
                "n_atoms": n_atoms,
                "converged": rec.converged,
            }
        )
        return values, why


class _Driver:
    def __init__(
        self, campaign: Campaign, engine, store: Store, progress: Callable[[RunStats], None] | None
    ):
        self.c = campaign
        self.tracks = {
            name: _Track(name, k, _resolved_stage(campaign, name))
            for k, name in enumerate(campaign.stages.mlip_names())
        }
        self.pre = self.tracks["prefilter"]
        self.re = self.tracks.get("rescore")
        self.engine = engine
        self.store = store
        self.progress = progress or (lambda s: None)
        self.stats = RunStats()
        self.queue: list[tuple[int, Candidate]] = []  # survivors waiting for the teacher
        self.pending: dict[Future, tuple[str, object]] = {}
        self._batches = 0

    # -- references ------------------------------------------------------------

    def _ensure_references(self, elements: set[str] | list[str]) -> None:
        """Relax missing elemental references for every stage's model, all in parallel."""
        if not self.c.hull.model_references:
            return
        refs = dict(self.store.references)
        jobs = []
        for t in self.tracks.values():
            cached = refs.get(t.name, {})
            missing = sorted(set(elements) - set(cached))
            if not missing:
                continue
            fitted = self._fitted(t, missing)
            if fitted is not None:
                refs[t.name] = {**cached, **fitted}
                self._add_references(t, fitted)
                continue
            label = t.spec.resource
            n = max(1, min(len(missing), self.engine.workers(label)))
            for g in (missing[i::n] for i in range(n)):
                jobs.append((t, g, self.engine.submit(label, relax_references, g, t.spec)))
        if not jobs:
            return
        self.stats.phase = "relaxing elemental references"
        self.progress(self.stats)
        new: dict[str, dict] = {t.name: {} for t in self.tracks.values()}
        for t, g, f in jobs:
            try:
                for r in f.result():
                    new[t.name][r.element] = {
                        "energy_per_atom": r.energy_per_atom,
                        "structure": r.structure,
                        "reason": r.reason,
                    }
            except Exception as err:  # the candidates of these elements fail with this reason
                why = f"reference task failed: {type(err).__name__}: {err}"[:300]
                log.warning("%s: %s (%s)", t.name, why, ", ".join(g))
                for el in g:
                    new[t.name][el] = {
                        "energy_per_atom": float("nan"),
                        "structure": "",
                        "reason": why,
                    }
        for t in self.tracks.values():
            if new[t.name]:
                refs[t.name] = {**refs.get(t.name, {}), **new[t.name]}
                self._add_references(t, new[t.name])
        self.store.set_references(refs)
        self.stats.phase = "screening"

    def _fitted(self, t: _Track, elements: list[str]) -> dict[str, dict] | None:
        """A distilled student's references from its report, or None to relax them."""
        link = getattr(t.spec, "distillation", None)
        if link is None or link.references != "fitted":
            return None
        from hts.distill.evaluate import fitted_references

        table = fitted_references(self.c.resolve_input(link.report))
        out = {}
        for el in elements:
            e = table.get(el)
            ok = e is not None and math.isfinite(e)
            out[el] = {
                "energy_per_atom": float(e) if ok else float("nan"),
                "structure": "fitted (distillation report)",
                "reason": ""
                if ok
                else f"{el} is not in the distillation report's fitted references",
            }
        return out

    @staticmethod
    def _add_references(t: _Track, table: dict[str, dict]) -> None:
        for el, r in table.items():
            e = r.get("energy_per_atom")
            if e is None or not math.isfinite(e):
                t.ref_reasons[el] = r.get("reason") or "reference relaxation failed"
            else:
                t.hull.add_reference(el, float(e))

    # -- resume ----------------------------------------------------------------

    def _rebuild(self) -> None:
        """Put every committed result back into its stage's hull; requeue unrescored survivors."""
        waiting: list[int] = []
        rescored = self.store.stage_done.get("rescore", set())
        for start, b in self.store.iter_blocks(["formula", "energy_per_atom", "kept"]):
            for t in self.tracks.values():
                e = b["energy_per_atom"][:, t.k]
                t.hull.add(
                    (str(f), float(v))
                    for f, v in zip(b["formula"], e, strict=True)
                    if math.isfinite(v)
                )
            if self.re is not None:
                for i in np.flatnonzero(b["kept"][:, 0]):
                    if start + int(i) not in rescored:
                        waiting.append(start + int(i))
        if waiting:
            self._queue_rows(waiting)

    def _queue_rows(self, rows: list[int]) -> None:
        """Queue committed rows for the teacher, starting from their stored (prefilter-relaxed) structure."""
        meta = {name: self.store.group[name].oindex[np.asarray(rows)] for name in _IDENTITY}
        for j, (row, (z, pos, cell)) in enumerate(
            zip(rows, self.store.structures(rows), strict=True)
        ):
            ident = {name: str(meta[name][j]) for name in _IDENTITY}
            self.queue.append((row, Candidate(**ident, numbers=z, positions=pos, cell=cell)))
        self.stats.rescore_waiting = len(self.queue) + sum(
            len(p[0]) for kind, p in self.pending.values() if kind == "rescore"
        )

    # -- the prefilter ---------------------------------------------------------

    def _rows(self, chunk: Chunk, result: ChunkResult | None, error: str = "") -> list[Row]:
        recs = (
            result.records
            if result is not None
            else [
                StageRecord(c.id, STATUS_FAILED, f"task failed: {error}") for c in chunk.candidates
            ]
        )
        t = self.pre
        t.hull.add(
            (c.formula, r.energy_per_atom)
            for c, r in zip(chunk.candidates, recs, strict=True)
            if r.status == STATUS_OK
        )
        rows = []
        for c, r in zip(chunk.candidates, recs, strict=True):
            status, reason = r.status, r.reason
            if status == STATUS_OK:
                values, why = t.values(r, c.formula, c.n_atoms)
                if why:
                    status, reason = STATUS_FAILED, why
            else:
                values = {"time_s": r.time_s}
            has_structure = len(r.numbers) > 0
            rows.append(
                Row(
                    id=c.id,
                    formula=c.formula,
                    chemsys=c.chemsys,
                    prototype=c.prototype,
                    source=c.source,
                    chunk=chunk.index,
                    status=status,
                    reason=reason,
                    stage_reached="prefilter" if status == STATUS_OK else "",
                    numbers=r.numbers if has_structure else c.numbers,
                    positions=r.positions if has_structure else c.positions,
                    cell=r.cell if has_structure else c.cell,
                    stage={"prefilter": values},
                )
            )
        return rows

    def _collect_prefilter(self, fut: Future, chunk: Chunk) -> None:
        try:
            result: ChunkResult | None = fut.result()
            error = ""
        except Exception as err:  # the task itself died (after the engine's retries)
            result, error = None, f"{type(err).__name__}: {err}"[:300]
            log.warning("chunk %d failed as a whole: %s", chunk.index, error)
        rows = self._rows(chunk, result, error)
        self.pre.hull.clear_cache()  # diagrams are reused within a chunk, never kept across the run
        if result is not None:
            self.store.set_stage_model("prefilter", result.model_name, result.model_version)
            self.stats.worker_s += result.wall_s
            self.stats.model_s += result.model_s
        first = self.store.n_rows
        self.store.append(rows, chunk.index)
        s = self.stats
        s.done += len(rows)
        s.ok += sum(r.status == STATUS_OK for r in rows)
        s.failed += sum(r.status != STATUS_OK for r in rows)
        survivors = [(first + i, r) for i, r in enumerate(rows) if r.stage["prefilter"].get("kept")]
        s.kept += len(survivors)
        s.chunks_done += 1
        if self.re is not None:
            for row, r in survivors:
                ident = {name: getattr(r, name) for name in _IDENTITY}
                cand = Candidate(**ident, numbers=r.numbers, positions=r.positions, cell=r.cell)
                self.queue.append((row, cand))
            s.rescore_waiting += len(survivors)

    # -- the rescore stage -----------------------------------------------------

    def _submit_rescore(self, flush: bool = False) -> None:
        assert self.re is not None
        size = self.re.spec.chunk_size or self.c.chunk_size
        while self.queue and (flush or len(self.queue) >= size):
            batch, self.queue = self.queue[:size], self.queue[size:]
            rows = [r for r, _ in batch]
            cands = [c for _, c in batch]
            self._batches += 1
            fut = self.engine.submit(
                self.re.spec.resource, run_stage, self._batches, cands, self.re.spec, self.c.seed
            )
            self.pending[fut] = ("rescore", (rows, cands))

    def _collect_rescore(self, fut: Future, rows: list[int], cands: list[Candidate]) -> None:
        t = self.re
        assert t is not None
        try:
            result: ChunkResult | None = fut.result()
            recs = result.records
        except Exception as err:
            result = None
            error = f"{type(err).__name__}: {err}"[:300]
            log.warning("a rescore task failed as a whole: %s", error)
            recs = [StageRecord(c.id, STATUS_FAILED, f"task failed: {error}") for c in cands]
        t.hull.add(
            (c.formula, r.energy_per_atom)
            for c, r in zip(cands, recs, strict=True)
            if r.status == STATUS_OK
        )
        updates = []
        for row, c, r in zip(rows, cands, recs, strict=True):
            if r.status == STATUS_OK:
                values, why = t.values(r, c.formula, c.n_atoms)
            else:
                values, why = {"time_s": r.time_s}, r.reason
            ok = not why
            updates.append(
                StageUpdate(
                    row=row,
                    values=values,
                    status=STATUS_OK if ok else STATUS_FAILED,
                    reason="" if ok else f"rescore: {why}",
                    stage_reached="rescore" if ok else "prefilter",
                    positions=r.positions if ok else None,
                    cell=r.cell if ok else None,
                )
            )
            self.stats.rescored += 1
            self.stats.rescore_kept += bool(values.get("kept"))
        t.hull.clear_cache()
        if result is not None:
            self.store.set_stage_model("rescore", result.model_name, result.model_version)
            self.stats.worker_s += result.wall_s
            self.stats.model_s += result.model_s
        self.store.update("rescore", updates)
        self.stats.rescore_waiting -= len(rows)

    # -- the loop --------------------------------------------------------------

    def _drain(self, until: int) -> None:
        """Collect finished tasks until at most ``until`` are in flight."""
        while len(self.pending) > until:
            finished, _ = wait(list(self.pending), return_when=FIRST_COMPLETED)
            for f in finished:
                kind, payload = self.pending.pop(f)
                if kind == "prefilter":
                    self._collect_prefilter(f, payload)
                else:
                    self._collect_rescore(f, *payload)
            if self.re is not None:
                self._submit_rescore()
            self.stats.in_flight = len(self.pending)
            self.progress(self.stats)

    def run(self) -> RunStats:
        c, s = self.c, self.stats
        entries = _load_user_entries(c)
        for t in self.tracks.values():
            t.hull.add_entries(entries)
            self._add_references(t, self.store.references.get(t.name, {}))
        self._rebuild()
        s.resumed = self.store.n_rows
        source = open_source(c)
        counter = getattr(source, "count", None)
        s.total_estimate = (counter() if counter else None) or source.upper_bound()
        if c.limits.max_candidates and s.total_estimate:
            s.total_estimate = min(s.total_estimate, c.limits.max_candidates)
        self._ensure_references(_source_elements(c))
        s.phase = "screening"
        s.started = time.time()  # rates and ETA count screening only
        self.progress(s)

        label = self.pre.spec.resource
        labels = {t.spec.resource for t in self.tracks.values()}
        max_in_flight = c.limits.max_in_flight or 2 * sum(self.engine.workers(x) for x in labels)
        last_report = 0.0
        for chunk in chunks(
            source,
            c.chunk_size,
            max_candidates=c.limits.max_candidates,
            max_atoms=c.limits.max_atoms,
            min_distance=c.limits.min_distance,
        ):
            if chunk.index in self.store.done:
                continue
            self._ensure_references(chunk.elements)
            if self.re is not None:
                self._submit_rescore()
            self._drain(max_in_flight - 1)
            fut = self.engine.submit(
                label, run_stage, chunk.index, chunk.candidates, self.pre.spec, c.seed
            )
            self.pending[fut] = ("prefilter", chunk)
            s.in_flight = len(self.pending)
            if time.time() - last_report > 0.5:
                self.progress(s)
                last_report = time.time()
        if self.re is not None:
            s.phase = "screening; teacher rescoring the survivors"
        self._drain(0)
        if self.re is not None:
            self._submit_rescore(flush=True)
            self._drain(0)
        self._finalize()
        if self.c.stages.validate_ is not None:
            self._validate(self.c.stages.validate_)
        s.phase = "done"
        self.progress(s)
        return s

    def _finalize(self) -> None:
        """Score everything once more against each stage's final hull and write the final values."""
        s = self.stats
        if self.store.finalized:
            return
        s.phase = "final hull pass"
        self.progress(s)
        names = ["formula", "energy_per_atom", "n_atoms", "converged"]
        for t in self.tracks.values():
            t.hull.clear_cache()
            kept_total = 0
            for start, b in self.store.iter_blocks(names):
                e_col = b["energy_per_atom"][:, t.k]
                ehull = np.full(len(e_col), np.nan)
                eform = np.full(len(e_col), np.nan)
                kept = np.zeros(len(e_col), dtype=bool)
                for i in np.flatnonzero(np.isfinite(e_col)):
                    f, e = str(b["formula"][i]), float(e_col[i])
                    try:
                        ehull[i] = t.hull.e_above_hull(f, e)
                        eform[i] = t.hull.formation_energy(f, e)
                    except MissingReferenceError:
                        continue
                    kept[i] = t.spec.keep(
                        {
                            "e_above_hull": ehull[i],
                            "energy_per_atom": e,
                            "n_atoms": int(b["n_atoms"][i]),
                            "converged": bool(b["converged"][i, t.k]),
                        }
                    )
                self.store.write_stage_column("e_above_hull", t.name, start, ehull)
                self.store.write_stage_column("kept", t.name, start, kept)
                self.store.write_stage_column("formation_energy", t.name, start, eform)
                t.hull.clear_cache()
                kept_total += int(kept.sum())
            if t is self.pre:
                s.kept = kept_total
            else:
                s.rescore_kept = kept_total
        self.store.set_finalized(True)
        self.store.consolidate()

    # -- the validate stage (DFT) ----------------------------------------------

    def _validate(self, v: ValidateStage) -> None:
        """DFT for the best of the last MLIP stage, once its final hull is known.

        Candidates and missing elemental references run side by side; each
        result is committed as it arrives (a restart redoes only what was not),
        and the DFT hull is rebuilt from everything validated at the end.
        """
        from hts.stages.validate import reference_task, select_rows, validate_one

        s, store = self.stats, self.store
        prev = list(self.tracks.values())[-1]
        done = store.stage_done.get("validate", set())
        cols: dict[str, list[np.ndarray]] = {n: [] for n in ("e", "f", "kept", "ok", "formula")}
        for start, b in store.iter_blocks(
            ["e_above_hull", "formation_energy", "kept", "status", "formula"]
        ):
            rows = np.arange(start, start + len(b["status"]))
            cols["e"].append(b["e_above_hull"][:, prev.k])
            cols["f"].append(b["formation_energy"][:, prev.k])
            cols["kept"].append(b["kept"][:, prev.k])
            # a row DFT already failed stays selected, so a restart picks the same rows
            cols["ok"].append((b["status"] == STATUS_OK) | np.isin(rows, list(done)))
            cols["formula"].append(b["formula"])
        if not store.n_rows:
            return
        col = {n: np.concatenate(x) for n, x in cols.items()}
        chosen = select_rows(col["e"], col["f"], col["kept"], col["ok"], v)
        todo = [r for r in chosen if r not in done]
        elements = sorted(
            {el for r in chosen for el in re.findall(r"[A-Z][a-z]?", col["formula"][r])}
        )
        refs = dict(store.references)
        cached = refs.get("validate", {})
        missing = [el for el in elements if el not in cached]
        root = str(Path(str(store.path) + ".dft").resolve())
        launcher = self.engine.launcher(v.resource, v.ranks)
        pending: dict[Future, tuple[str, object]] = {}
        for el in missing:
            task = reference_task(el, self._reference_phase(el, refs))
            pending[
                self.engine.submit(
                    v.resource, validate_one, task, v, root + "/references", launcher
                )
            ] = ("ref", el)
        ids = store.group["id"].oindex[np.asarray(todo, dtype=np.int64)] if todo else []
        for r, cid, (z, pos, cell) in zip(todo, ids, store.structures(todo), strict=True):
            task = DftTask(str(cid), str(col["formula"][r]), z, pos, cell)
            pending[
                self.engine.submit(
                    v.resource, validate_one, task, v, root + "/candidates", launcher
                )
            ] = ("row", r)
        s.validate_waiting = len(pending)
        s.phase = f"DFT validation ({v.code}): {len(todo)} candidates, {len(missing)} references"
        self.progress(s)
        while pending:
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for f in finished:
                kind, key = pending.pop(f)
                try:
                    rec = f.result()
                except Exception as err:  # the task itself died, not the DFT job
                    rec = DftRecord(
                        str(key), STATUS_FAILED, f"task failed: {type(err).__name__}: {err}"[:300]
                    )
                if kind == "ref":
                    cached[key] = {
                        "energy_per_atom": rec.energy_per_atom
                        if rec.status == STATUS_OK
                        else float("nan"),
                        "structure": rec.job_dir,
                        "reason": rec.reason,
                    }
                    refs["validate"] = cached
                    store.set_references(refs)
                else:
                    self._commit_dft(int(key), rec)
                s.validate_waiting = len(pending)
                self.progress(s)
        store.set_stage_model("validate", v.code, _code_version(v.code))
        self._finalize_validate(v, cached)

    def _reference_phase(self, element: str, refs: dict) -> str:
        """The trial structure an MLIP stage found lowest for an element ('' if none relaxed it)."""
        for t in reversed(list(self.tracks.values())):
            name = refs.get(t.name, {}).get(element, {}).get("structure", "")
            if name and not name.startswith("fitted"):
                return name
        return ""

    def _commit_dft(self, row: int, rec: DftRecord) -> None:
        s = self.stats
        has_values = math.isfinite(rec.energy)
        values: dict[str, float | bool | int] = {"time_s": rec.time_s}
        if has_values:
            values.update(
                energy=rec.energy,
                energy_per_atom=rec.energy_per_atom,
                converged=rec.converged,
                n_steps=rec.n_steps,
            )
        ok = rec.status == STATUS_OK
        prev = list(self.tracks)[-1]
        self.store.update(
            "validate",
            [
                StageUpdate(
                    row=row,
                    values=values,
                    status=STATUS_OK if ok else STATUS_FAILED,
                    reason="" if ok else f"validate: {rec.reason}",
                    stage_reached="validate" if ok else prev,
                    positions=rec.positions if has_values else None,
                    cell=rec.cell if has_values else None,
                    dft_dir=rec.job_dir,
                )
            ],
        )
        s.validated += 1
        s.validate_failed += not ok

    def _finalize_validate(self, v: ValidateStage, refs: dict[str, dict]) -> None:
        """DFT formation energies and e_above_hull: DFT references plus every validated candidate."""
        store = self.store
        k = store.stages.index("validate")
        rows = np.array(sorted(store.stage_done.get("validate", set())), dtype=np.int64)
        if not len(rows):
            return
        t = _Track("validate", k, v)
        self._add_references(t, refs)
        formulas = store.group["formula"].oindex[rows]
        e = store.group["energy_per_atom"].oindex[rows, k]
        conv = store.group["converged"].oindex[rows, k]
        n_atoms = store.group["n_atoms"].oindex[rows]
        ok = store.group["status"].oindex[rows] == STATUS_OK
        t.hull.add((str(f), float(x)) for f, x in zip(formulas, e, strict=True) if math.isfinite(x))
        ehull = np.full(len(rows), np.nan)
        eform = np.full(len(rows), np.nan)
        kept = np.zeros(len(rows), dtype=bool)
        for i in np.flatnonzero(np.isfinite(e)):
            ehull[i], eform[i], why = t.score(str(formulas[i]), float(e[i]))
            kept[i] = (
                not why
                and bool(ok[i])
                and v.keep(
                    {
                        "e_above_hull": ehull[i],
                        "energy_per_atom": float(e[i]),
                        "n_atoms": int(n_atoms[i]),
                        "converged": bool(conv[i]),
                    }
                )
            )
        store.write_stage_rows("e_above_hull", "validate", rows, ehull)
        store.write_stage_rows("formation_energy", "validate", rows, eform)
        store.write_stage_rows("kept", "validate", rows, kept)
        self.stats.validate_kept = int(kept.sum())
        store.set_finalized(True)
        store.consolidate()


def _code_version(code: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{code} {version(code)}, atomate2 {version('atomate2')}"
    except PackageNotFoundError:
        return f"atomate2 {version('atomate2')}"


def results_hash(campaign: Campaign) -> str:
    """The campaign's content hash, extended by the distillation reports it reads.

    ``keep: auto`` and fitted references come from a report file, so a
    retrained student's report changes results just as an edited campaign does.
    """
    import hashlib

    base = campaign.content_hash()
    reports = [
        campaign.resolve_input(link.report)
        for name in campaign.stages.mlip_names()
        if (link := getattr(campaign.stages.get(name), "distillation", None)) is not None
    ]
    if not reports:
        return base
    h = hashlib.sha256(base.encode())
    for p in reports:
        h.update(p.read_bytes() if p.is_file() else b"missing")
    return h.hexdigest()[:16]


def open_store(campaign: Campaign, store_path: str | Path | None = None) -> Store:
    import yaml

    path = Path(store_path or campaign.store)
    return Store.open(
        path,
        campaign_name=campaign.name,
        campaign_hash=results_hash(campaign),
        campaign_yaml=yaml.safe_dump(
            campaign.model_dump(mode="json", exclude={"base_dir"}), sort_keys=False
        ),
        stages=campaign.stages.names(),
    )


def run_campaign(
    campaign: Campaign,
    engine,
    *,
    store_path: str | Path | None = None,
    progress: Callable[[RunStats], None] | None = None,
) -> RunStats:
    """Run (or resume) a campaign on an engine; returns the run's counts.

    Problems with the campaign itself (an empty source, an unreadable
    reference file, a store of another campaign) are raised before any task is
    submitted.
    """
    preflight(campaign)
    v = campaign.stages.validate_
    if v is not None:  # a site that cannot launch the DFT code fails now, not hours later
        engine.launcher(v.resource, v.ranks)
    store = open_store(campaign, store_path)
    return _Driver(campaign, engine, store, progress).run()
