"""The teacher's labels: which candidates are drawn, what the teacher computes for them, what is trained on.

Sampling draws from the campaign's space without walking it
(:mod:`hts.candidates.sampling`); labelling fans chunks out on the site's
teacher workers (:func:`hts.distill.sample.label_chunk`) and stores what comes
back in the run's :class:`~hts.distill.dataset.LabelStore`, so a rerun labels
only what is new.  A failed chunk is logged and skipped: its candidates are
simply not trained on.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from hts.campaign.pool import Done, TaskPool
from hts.candidates.record import Candidate
from hts.candidates.sampling import (
    SystemSample,
    fraction_label,
    smallest_cells,
    space_size,
    systems,
    uniform,
)
from hts.distill.context import DistillRun, path_frames, run_tasks
from hts.distill.sample import isolated_atom_energies, label_chunk, point_chunk
from hts.spec import RescoreStage
from hts.stages.references import relax_references

__all__ = ["label", "sample", "single_points", "teacher_references", "training_set"]

log = logging.getLogger("hts.distill")


def sample(run: DistillRun) -> None:
    """Draw the training candidates and the calibration systems (with their subsystems).

    In a space of one chemistry the calibration draws compositions, and holdout
    is by composition (:attr:`~hts.distill.context.DistillRun.by`).
    """
    cfg, campaign = run.cfg, run.campaign
    run.phase("sampling candidates")
    size = space_size(campaign, cfg.seed)
    # a budget of 0 (with data.stores): the stores' teacher rows train or calibrate instead
    train, cal = [], SystemSample()
    if cfg.sampling.train:
        n_train = fraction_label(cfg.sampling.train, size)
        train = uniform(
            campaign, n_train, cfg.seed, keep=lambda c: not run.held(c.formula, c.chemsys)
        )
        # an enumeration's smallest cells (its corners, L1_0 ...), which uniform draws miss
        have = {c.id for c in train}
        train += [
            c
            for c in smallest_cells(
                campaign, max(4, n_train // 20), keep=lambda c: not run.held(c.formula, c.chemsys)
            )
            if c.id not in have
        ]
        if len(train) < 4:
            raise ValueError(f"{cfg.campaign}: only {len(train)} valid candidates to train on")
    if cfg.sampling.calibration:
        cal = systems(campaign, fraction_label(cfg.sampling.calibration, size), cfg.seed + 1)
        if not cal.primary:
            what = "composition" if cal.by == "formula" else "chemical system"
            raise ValueError(f"{cfg.campaign}: no {what} could be drawn for calibration")
    for c in [*train, *cal.primary, *cal.closure]:
        run.cands.setdefault(c.id, c)
    run.train = [c.id for c in train]
    run.primary = [c.id for c in cal.primary]
    run.closure = [c.id for c in cal.closure]
    run.systems = cal.systems
    run.weights = cal.weights
    run.timing["space_size"] = size
    log.info(
        "sampled %d training candidates and %d calibration %s (%d + %d candidates) of %d",
        len(train),
        len(cal.systems),
        "compositions" if cal.by == "formula" else "systems",
        len(cal.primary),
        len(cal.closure),
        size,
    )


def label(run: DistillRun, candidates: list[Candidate], what: str) -> None:
    """The teacher relaxes every candidate not yet in the dataset (chunks on the site)."""
    todo, seen = [], set()
    for c in candidates:
        if c.id not in run.labels.candidates and c.id not in seen:
            seen.add(c.id)
            todo.append(c)
    st = run.state
    run.phase(f"teacher {what}", len(candidates))
    st.done = len(candidates) - len(todo)
    st.detail = f"{st.done} reused from {run.labels.root}" if st.done else ""
    run.progress(st)
    size = run.cfg.chunk_size
    batches = [todo[i : i + size] for i in range(0, len(todo), size)]
    t0 = time.time()

    def labelled(done: Done) -> None:
        if not done.ok:
            log.warning("labelling task failed: %s", done.error)
            return
        batch = batches[done.tag]
        run.labels.add(
            done.result,
            {
                c.id: {
                    "formula": c.formula,
                    "chemsys": c.chemsys,
                    "prototype": c.prototype,
                    "source": c.source,
                }
                for c in batch
            },
        )
        st.done += len(batch)
        st.detail = f"{len(done.result.frames)} frames in the last task"

    run_tasks(
        run.engine,
        run.teacher_label,
        [(label_chunk, b, run.teacher, run.cfg.sampling, run.cfg.seed) for b in batches],
        labelled,
        lambda: run.progress(st),
    )
    run.timing["labelling_s"] += time.time() - t0
    run.timing["labelled_now"] += len(todo)


def single_points(run: DistillRun) -> None:
    """Teacher single points of unrelaxed candidates drawn uniformly outside calibration.

    A direct student learns them on a second readout: ~40× cheaper than a
    relaxation each, they spread its view of the space far beyond the relaxed
    labels.
    """
    cfg = run.cfg
    size = int(run.timing.get("space_size", 0)) or space_size(run.campaign, cfg.seed)
    n = fraction_label(cfg.sampling.points, size)
    taken = set(run.primary) | set(run.closure)
    draw = uniform(
        run.campaign,
        n,
        cfg.seed + 2,
        exclude=taken,
        keep=lambda c: not run.held(c.formula, c.chemsys),
    )
    todo = [c for c in draw if c.id not in run.labels.points and c.id not in run.labels.candidates]
    run.phase("teacher single points", len(draw))
    run.state.done = len(draw) - len(todo)
    chunk = max(8 * cfg.chunk_size, 64)
    batches = [todo[i : i + chunk] for i in range(0, len(todo), chunk)]
    t0 = time.time()

    def stored(done: Done) -> None:
        if not done.ok:
            log.warning("single-point task failed: %s", done.error)
            return
        batch = batches[done.tag]
        run.labels.add_points(
            done.result,
            {
                c.id: {"formula": c.formula, "chemsys": c.chemsys, "prototype": c.prototype}
                for c in batch
            },
        )
        run.state.done += len(batch)

    run_tasks(
        run.engine,
        run.teacher_label,
        [(point_chunk, b, run.teacher) for b in batches],
        stored,
        lambda: run.progress(run.state),
    )
    run.timing["points_s"] += time.time() - t0


def training_set(run: DistillRun) -> None:
    """Every labelled candidate outside the calibration and held-out systems (or compositions).

    The sample's training candidates, and whatever else the dataset holds from
    earlier runs and rounds (labels are never wasted; a rerun trains on what the
    last one acquired from its first round on).
    """
    calibration = set(run.primary) | set(run.closure)
    ids = dict.fromkeys(c for c in run.train if run.ok(c) and c not in calibration)
    space = _space_elements(run.campaign)
    for cid, v in run.labels.candidates.items():
        if cid in ids or cid in calibration or not run.ok(cid):
            continue
        system = v.get("chemsys", "")
        if (
            system
            and not run.held(v.get("formula", ""), system)
            and (space is None or set(system.split("-")) <= space)
        ):
            ids[cid] = None
    run.train = list(ids)
    frames = path_frames(run, {c for c in run.train if c not in run.cands})
    for cid, fr in frames.items():
        v, a = run.labels.candidates[cid], fr[0]
        run.cands[cid] = Candidate(
            id=cid,
            source=v.get("source", ""),
            prototype=v.get("prototype", ""),
            numbers=np.asarray(a.numbers),
            positions=np.asarray(a.positions),
            cell=np.asarray(a.cell[:]),
            formula=v.get("formula", ""),
            chemsys=v.get("chemsys", ""),
        )
    run.train = [c for c in run.train if c in run.cands]
    # single points: every eligible point-only candidate, and every training candidate's start
    points = [c for c in run.labels.points if c not in calibration]
    info = run.labels.points
    run.points = [
        c
        for c in points
        if not run.held(info[c].get("formula", ""), info[c].get("chemsys", ""))
        and (space is None or set(info[c].get("chemsys", "").split("-")) <= space)
    ]


def _space_elements(campaign) -> set[str] | None:
    """Elements a substitution space can hold (None for files: any)."""
    spec = campaign.candidates
    if spec.kind != "substitution":
        return None
    tables = [spec.elements, *[p.elements or {} for p in spec.prototypes]]
    return {el for t in tables for symbols in t.values() for el in symbols}


def teacher_references(run: DistillRun) -> None:
    """The teacher's elemental references (and isolated atoms, when they set the student's E0s).

    Relaxed as the campaign's rescore stage relaxes them, so the teacher's
    hull here is the one the campaign will build; cached in the dataset.
    """
    elements = run.elements
    missing = [el for el in elements if el not in run.labels.isolated]
    if missing and run.cfg.student.kind == "relax" and run.cfg.training.e0s == "teacher":
        run.labels.set_isolated(
            run.engine.submit(
                run.teacher_label, isolated_atom_energies, missing, run.teacher
            ).result()
        )
    refs = dict(run.labels.references.get("teacher", {}))
    need = [el for el in elements if el not in refs]
    if need:
        run.phase("teacher elemental references", len(need))
        rescore = run.campaign.stages.rescore
        stage = RescoreStage(
            model=run.teacher, relax=rescore.relax if rescore else run.cfg.sampling.relax
        )
        refs.update(_references(run.engine, run.teacher_label, stage, need))
        run.labels.set_references({"teacher": refs})


def _references(engine, label: str, stage, elements: list[str]) -> dict[str, float]:
    """Relax the elements' reference phases, one group per worker; a failed group is fatal.

    Without a teacher reference no hull can be built for its element, so an
    error here is raised rather than logged.
    """
    n = max(1, min(len(elements), engine.workers(label)))
    pool = TaskPool(engine)
    for i in range(n):
        pool.submit(label, i, relax_references, elements[i::n], stage)
    groups: dict[int, list] = {}
    for done in pool.completed():
        if not done.ok:
            raise done.error
        groups[done.tag] = done.result
    # merged in group order, not finishing order: the cached references read the same every run
    return {r.element: r.energy_per_atom for i in sorted(groups) for r in groups[i]}
