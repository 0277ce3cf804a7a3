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
from hts.spec import Campaign, CampaignError
from hts.stages.hull import HullTracker, MissingReferenceError
from hts.stages.prefilter import ChunkResult, StageRecord, run_prefilter
from hts.stages.references import relax_references
from hts.store import Row, Store
from hts.store.schema import STATUS_FAILED, STATUS_OK

__all__ = ["RunStats", "run_campaign"]

log = logging.getLogger("hts.campaign")

STAGES = ["prefilter"]


@dataclass
class RunStats:
    """Live counts for progress displays and the closing summary."""

    total_estimate: int | None = None
    done: int = 0  # candidates with a result this run
    resumed: int = 0  # candidates already in the store from an earlier run
    ok: int = 0
    failed: int = 0
    kept: int = 0
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


def _resolved_stage(campaign: Campaign):
    """The prefilter stage with its model file made absolute (workers may run elsewhere)."""
    stage = campaign.stages.prefilter
    if stage.model.path:
        p = campaign.resolve_input(stage.model.path).resolve()
        if not p.is_file():
            raise CampaignError(f"stages.prefilter.model.path: no such model file {p}")
        stage = stage.model_copy(update={"model": stage.model.model_copy(update={"path": str(p)})})
    return stage


def preflight(campaign: Campaign) -> None:
    """Every check that needs no model and no worker: run by ``hts validate`` and before a run."""
    ensure_not_empty(campaign)
    _load_user_entries(campaign)
    _resolved_stage(campaign)


class _Driver:
    def __init__(
        self, campaign: Campaign, engine, store: Store, progress: Callable[[RunStats], None] | None
    ):
        self.c = campaign
        self.stage = _resolved_stage(campaign)
        self.engine = engine
        self.store = store
        self.progress = progress or (lambda s: None)
        self.stats = RunStats()
        self.hull = HullTracker()
        self.ref_reasons: dict[str, str] = {}  # element -> why it has no reference

    # -- references ------------------------------------------------------------

    def _ensure_references(self, elements: set[str] | list[str]) -> None:
        if not self.c.hull.model_references:
            return
        cached = self.store.references.get("prefilter", {})
        missing = sorted(set(elements) - set(cached))
        if not missing:
            return
        self.stats.phase = f"relaxing elemental references ({', '.join(missing)})"
        self.progress(self.stats)
        n = max(1, min(len(missing), self.engine.workers(self.stage.resource)))
        groups = [missing[i::n] for i in range(n)]
        futs = [
            self.engine.submit(self.stage.resource, relax_references, g, self.stage) for g in groups
        ]
        new = dict(cached)
        for g, f in zip(groups, futs, strict=True):
            try:
                for r in f.result():
                    new[r.element] = {
                        "energy_per_atom": r.energy_per_atom,
                        "structure": r.structure,
                        "reason": r.reason,
                    }
            except Exception as err:  # the candidates of these elements fail with this reason
                why = f"reference task failed: {type(err).__name__}: {err}"[:300]
                log.warning("%s (%s)", why, ", ".join(g))
                for el in g:
                    new[el] = {"energy_per_atom": float("nan"), "structure": "", "reason": why}
        refs = dict(self.store.references)
        refs["prefilter"] = new
        self.store.set_references(refs)
        self._add_references({k: new[k] for k in missing})
        self.stats.phase = "screening"

    def _add_references(self, table: dict[str, dict]) -> None:
        for el, r in table.items():
            e = r.get("energy_per_atom")
            if e is None or not math.isfinite(e):
                self.ref_reasons[el] = r.get("reason") or "reference relaxation failed"
            else:
                self.hull.add_reference(el, float(e))

    # -- resume ----------------------------------------------------------------

    def _rebuild_hull(self) -> None:
        """Put every committed candidate back into the hull (resume)."""
        for _, b in self.store.iter_blocks(["formula", "status", "energy_per_atom"]):
            self.hull.add(
                (str(f), float(e))
                for f, s, e in zip(
                    b["formula"], b["status"], b["energy_per_atom"][:, 0], strict=True
                )
                if s == STATUS_OK and math.isfinite(e)
            )

    # -- scoring a finished chunk ----------------------------------------------

    def _score(self, rec: StageRecord, formula: str) -> tuple[float, float, str]:
        try:
            e = rec.energy_per_atom
            return self.hull.e_above_hull(formula, e), self.hull.formation_energy(formula, e), ""
        except MissingReferenceError as err:
            present = set(re.findall(r"[A-Z][a-z]?", formula))
            els = [el for el in self.ref_reasons if el in present]
            why = "; ".join(f"{el}: {self.ref_reasons[el]}" for el in els)
            return float("nan"), float("nan"), f"{err}{' (' + why + ')' if why else ''}"

    def _rows(self, chunk: Chunk, result: ChunkResult | None, error: str = "") -> list[Row]:
        recs = (
            result.records
            if result is not None
            else [
                StageRecord(c.id, STATUS_FAILED, f"task failed: {error}") for c in chunk.candidates
            ]
        )
        self.hull.add(
            (c.formula, r.energy_per_atom)
            for c, r in zip(chunk.candidates, recs, strict=True)
            if r.status == STATUS_OK
        )
        rows = []
        for c, r in zip(chunk.candidates, recs, strict=True):
            status, reason = r.status, r.reason
            values: dict[str, float | bool | int] = {}
            if status == STATUS_OK:
                ehull, eform, why = self._score(r, c.formula)
                if why:
                    status, reason = STATUS_FAILED, why
                values = {
                    "energy": r.energy,
                    "energy_per_atom": r.energy_per_atom,
                    "e_above_hull": ehull,
                    "formation_energy": eform,
                    "converged": r.converged,
                    "n_steps": r.n_steps,
                    "time_s": r.time_s,
                }
                values["kept"] = status == STATUS_OK and self.stage.keep(
                    {
                        "e_above_hull": ehull,
                        "energy_per_atom": r.energy_per_atom,
                        "n_atoms": c.n_atoms,
                        "converged": r.converged,
                    }
                )
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

    def _collect(self, fut: Future, chunk: Chunk) -> None:
        try:
            result: ChunkResult | None = fut.result()
            error = ""
        except Exception as err:  # the task itself died (after the engine's retries)
            result, error = None, f"{type(err).__name__}: {err}"[:300]
            log.warning("chunk %d failed as a whole: %s", chunk.index, error)
        rows = self._rows(chunk, result, error)
        self.hull.clear_cache()  # diagrams are reused within a chunk, never kept across the run
        if result is not None:
            self.store.set_stage_model("prefilter", result.model_name, result.model_version)
            self.stats.worker_s += result.wall_s
            self.stats.model_s += result.model_s
        self.store.append(rows, chunk.index)
        s = self.stats
        s.done += len(rows)
        s.ok += sum(r.status == STATUS_OK for r in rows)
        s.failed += sum(r.status != STATUS_OK for r in rows)
        s.kept += sum(bool(r.stage["prefilter"].get("kept")) for r in rows)
        s.chunks_done += 1

    # -- the loop --------------------------------------------------------------

    def run(self) -> RunStats:
        c, s = self.c, self.stats
        self.hull.add_entries(_load_user_entries(c))
        self._add_references(self.store.references.get("prefilter", {}))
        self._rebuild_hull()
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

        label = self.stage.resource
        max_in_flight = c.limits.max_in_flight or 2 * self.engine.workers(label)
        pending: dict[Future, Chunk] = {}
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
            while len(pending) >= max_in_flight:
                finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for f in finished:
                    self._collect(f, pending.pop(f))
                s.in_flight = len(pending)
                self.progress(s)
            pending[
                self.engine.submit(
                    label, run_prefilter, chunk.index, chunk.candidates, self.stage, c.seed
                )
            ] = chunk
            s.in_flight = len(pending)
            if time.time() - last_report > 0.5:
                self.progress(s)
                last_report = time.time()
        while pending:
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for f in finished:
                self._collect(f, pending.pop(f))
            s.in_flight = len(pending)
            self.progress(s)
        self._finalize()
        return s

    def _finalize(self) -> None:
        """Score everything once more against the final hull and write the final values."""
        s = self.stats
        if self.store.finalized:
            return
        s.phase = "final hull pass"
        self.progress(s)
        self.hull.clear_cache()
        kept_total = 0
        names = ["formula", "status", "energy_per_atom", "n_atoms", "converged"]
        for start, b in self.store.iter_blocks(names):
            e_col = b["energy_per_atom"][:, 0]
            ehull = np.full(len(e_col), np.nan)
            eform = np.full(len(e_col), np.nan)
            kept = np.zeros(len(e_col), dtype=bool)
            for i, (f, st) in enumerate(zip(b["formula"], b["status"], strict=True)):
                if st != STATUS_OK:
                    continue
                try:
                    ehull[i] = self.hull.e_above_hull(str(f), float(e_col[i]))
                    eform[i] = self.hull.formation_energy(str(f), float(e_col[i]))
                except MissingReferenceError:
                    continue
                kept[i] = self.stage.keep(
                    {
                        "e_above_hull": ehull[i],
                        "energy_per_atom": e_col[i],
                        "n_atoms": int(b["n_atoms"][i]),
                        "converged": bool(b["converged"][i, 0]),
                    }
                )
            self.store.write_stage_column("e_above_hull", "prefilter", start, ehull)
            self.store.write_stage_column("kept", "prefilter", start, kept)
            self.store.write_stage_column("formation_energy", "prefilter", start, eform)
            self.hull.clear_cache()
            kept_total += int(kept.sum())
        s.kept = kept_total
        self.store.set_finalized(True)
        self.store.consolidate()
        s.phase = "done"
        self.progress(s)


def open_store(campaign: Campaign, store_path: str | Path | None = None) -> Store:
    import yaml

    path = Path(store_path or campaign.store)
    return Store.open(
        path,
        campaign_name=campaign.name,
        campaign_hash=campaign.content_hash(),
        campaign_yaml=yaml.safe_dump(
            campaign.model_dump(mode="json", exclude={"base_dir"}), sort_keys=False
        ),
        stages=STAGES,
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
    store = open_store(campaign, store_path)
    return _Driver(campaign, engine, store, progress).run()
