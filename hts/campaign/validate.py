"""The validate phase: DFT (through atomate2) for the best of the last MLIP stage.

It runs once the last MLIP stage's final hull is known.  Candidates and the
missing elemental references run side by side; each result is committed as it
arrives (a restart redoes only what was not), and the DFT hull — DFT references
plus every validated candidate — is built at the end, scored by the same
:meth:`~hts.campaign.scoring.StageScorer.verdict` as the MLIP stages.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from hts.campaign.pool import TaskPool
from hts.campaign.references import ReferenceBook
from hts.campaign.scoring import StageScorer
from hts.spec import ValidateStage
from hts.stages.hull import elements_of
from hts.stages.validate import DftRecord, DftTask, reference_task, select_rows, validate_one
from hts.store import StageUpdate
from hts.store.schema import STATUS_FAILED, STATUS_OK

log = logging.getLogger("hts.campaign")

__all__ = ["ValidatePhase"]


def _code_version(code: str) -> str:
    try:
        return f"{code} {version(code)}, atomate2 {version('atomate2')}"
    except PackageNotFoundError:
        return f"atomate2 {version('atomate2')}"


class ValidatePhase:
    """DFT validation of a finished MLIP funnel.

    Parameters
    ----------
    stage
        The campaign's validate stage.
    store
        The run's store, final MLIP values written.
    previous
        The last MLIP stage's scorer (its columns choose the candidates).
    book
        The reference book (which phase of each element the MLIP stages found lowest).
    engine, stats, progress
        Where jobs run, and the run's live counts and their display.
    """

    def __init__(
        self,
        stage: ValidateStage,
        store,
        previous: StageScorer,
        book: ReferenceBook,
        engine,
        stats,
        progress: Callable,
    ) -> None:
        self.v = stage
        self.store = store
        self.prev = previous
        self.book = book
        self.engine = engine
        self.stats = stats
        self.progress = progress

    def _chosen(self) -> tuple[list[int], np.ndarray]:
        """The rows DFT validates (the same rows on every restart) and all formulas."""
        store, k = self.store, self.prev.k
        done = self.store.stage_done.get("validate", set())
        cols: dict[str, list[np.ndarray]] = {n: [] for n in ("e", "f", "kept", "ok", "formula")}
        names = ["e_above_hull", "formation_energy", "kept", "status", "formula"]
        for start, b in store.iter_blocks(names):
            rows = np.arange(start, start + len(b["status"]))
            cols["e"].append(b["e_above_hull"][:, k])
            cols["f"].append(b["formation_energy"][:, k])
            cols["kept"].append(b["kept"][:, k])
            # a row DFT already failed stays selected, so a restart picks the same rows
            cols["ok"].append((b["status"] == STATUS_OK) | np.isin(rows, list(done)))
            cols["formula"].append(b["formula"])
        col = {n: np.concatenate(x) for n, x in cols.items()}
        return select_rows(col["e"], col["f"], col["kept"], col["ok"], self.v), col["formula"]

    def run(self) -> None:
        s, store, v = self.stats, self.store, self.v
        if not store.n_rows:
            return
        chosen, formulas = self._chosen()
        done = store.stage_done.get("validate", set())
        todo = [r for r in chosen if r not in done]
        elements = sorted({el for r in chosen for el in elements_of(str(formulas[r]))})
        refs = dict(store.references)
        cached = refs.get("validate", {})
        root = str(Path(str(store.path) + ".dft").resolve())
        launcher = self.engine.launcher(v.resource, v.ranks)
        pool = TaskPool(self.engine)
        missing = [el for el in elements if el not in cached]
        for el in missing:
            task = reference_task(el, self.book.trial_structure(el))
            pool.submit(
                v.resource, ("ref", el), validate_one, task, v, root + "/references", launcher
            )
        ids = store.read(["id"], todo)["id"] if todo else []
        for r, cid, (z, pos, cell) in zip(todo, ids, store.structures(todo), strict=True):
            task = DftTask(str(cid), str(formulas[r]), z, pos, cell)
            pool.submit(
                v.resource, ("row", r), validate_one, task, v, root + "/candidates", launcher
            )
        s.validate_waiting = len(pool)
        s.phase = f"DFT validation ({v.code}): {len(todo)} candidates, {len(missing)} references"
        self.progress(s)
        for d in pool.completed():
            kind, key = d.tag
            s.validate_waiting = len(pool)
            if not d.ok:  # the task died, not the DFT job: no verdict; the next run tries again
                why = d.describe_error()
                log.warning("DFT task of %s %s failed as a whole: %s", kind, key, why)
                s.task_errors.append(f"DFT of {kind} {key}: {why}")
                s.unvalidated += 1
                self.progress(s)
                continue
            rec = d.result
            if kind == "ref":
                cached[key] = {
                    "energy_per_atom": rec.energy_per_atom if rec.status == STATUS_OK else math.nan,
                    "structure": rec.job_dir,
                    "reason": rec.reason,
                }
                refs["validate"] = cached
                store.set_references(refs)
            else:
                self._commit(int(key), rec)
            self.progress(s)
        store.set_stage_model("validate", v.code, _code_version(v.code))
        self._finalize(cached)

    def _commit(self, row: int, rec: DftRecord) -> None:
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
        update = StageUpdate(
            row=row,
            values=values,
            status=STATUS_OK if ok else STATUS_FAILED,
            reason="" if ok else rec.reason,
            stage_reached="validate" if ok else self.prev.name,
            positions=rec.positions if has_values else None,
            cell=rec.cell if has_values else None,
            dft_dir=rec.job_dir,
        )
        self.store.update("validate", [update])
        self.stats.validated += 1
        self.stats.validate_failed += not ok

    def _finalize(self, refs: dict[str, dict]) -> None:
        """DFT formation energies and e_above_hull: DFT references plus every validated candidate."""
        store = self.store
        rows = np.array(sorted(store.stage_done.get("validate", set())), dtype=np.int64)
        if not len(rows):
            return
        t = StageScorer("validate", store.stages.index("validate"), self.v.keep)
        t.add_references(refs)
        b = store.read(["formula", "energy_per_atom", "converged", "n_atoms", "status"], rows)
        e = b["energy_per_atom"][:, t.k]
        t.hull.add(
            (str(f), float(x)) for f, x in zip(b["formula"], e, strict=True) if math.isfinite(x)
        )
        ehull, eform, kept = t.score_rows(
            b["formula"], e, b["n_atoms"], b["converged"][:, t.k], ok=b["status"] == STATUS_OK
        )
        store.write_stage_rows("e_above_hull", "validate", rows, ehull)
        store.write_stage_rows("formation_energy", "validate", rows, eform)
        store.write_stage_rows("kept", "validate", rows, kept)
        store.set_finalized(True)
        store.consolidate()
