"""A round's extra teacher labels, placed where the last student's decisions were weakest.

A relaxing student goes where the teacher never went (its own minima), so the
teacher labels the structures the student visits (on-policy, DAgger-style).  A
direct student makes one decision per candidate, at the keep threshold, so
the teacher relaxes fresh candidates whose predicted ``e_above_hull`` lies
nearest it.  What was acquired joins the dataset and the next round trains on
it (:func:`hts.distill.training.train_round`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from hts.campaign.pool import Done
from hts.candidates.sampling import uniform
from hts.distill.calibration import screen
from hts.distill.context import DistillRun, rescore_threshold, run_tasks, student_spec
from hts.distill.evaluate import hull_energies
from hts.distill.labelling import label
from hts.distill.sample import on_policy_chunk
from hts.spec import PrefilterStage

__all__ = ["acquire", "round_record"]

log = logging.getLogger("hts.distill")


def acquire(run: DistillRun, r: int, threshold: float | None, student_file: Path) -> None:
    """Round ``r``'s extra teacher labels: near the threshold (direct) or where the student goes."""
    if run.direct:
        _near_threshold(run, r, threshold, student_file)
    else:
        _on_policy(run, r, student_file)


def _on_policy(run: DistillRun, r: int, student_file: Path) -> None:
    """The student relaxes training candidates; the teacher labels the frames it visits."""
    cfg = run.cfg
    rng = np.random.default_rng(cfg.seed + 7919 * r)
    picks = [run.train[int(i)] for i in rng.permutation(len(run.train))[: cfg.rounds.labels]]
    spec = student_spec(run, student_file)
    relax = run.campaign.stages.prefilter.relax
    size = cfg.chunk_size
    batches = [picks[i : i + size] for i in range(0, len(picks), size)]
    run.phase(f"on-policy labels (round {r})", len(picks))

    def labelled(done: Done) -> None:
        if not done.ok:
            log.warning("on-policy task failed: %s", done.error)
            return
        run.labels.add_frames(done.result.frames)
        run.state.done += len(batches[done.tag])

    run_tasks(
        run.engine,
        run.teacher_label,
        [
            (
                on_policy_chunk,
                [run.cands[c] for c in b],
                spec,
                relax,
                run.teacher,
                cfg.rounds.snapshots,
            )
            for b in batches
        ],
        labelled,
        lambda: run.progress(run.state),
    )


def _near_threshold(run: DistillRun, r: int, threshold: float | None, student_file: Path) -> None:
    """Score a fresh pool with the student; the teacher relaxes those nearest the threshold.

    Without a calibrated threshold yet, twice the rescore stage's keep
    threshold stands in: still the region where prefilter decisions fall.
    """
    cfg = run.cfg
    taken = set(run.labels.candidates) | set(run.primary) | set(run.closure)
    pool = uniform(
        run.campaign,
        cfg.rounds.pool,
        cfg.seed + 7919 * r,
        exclude=taken,
        keep=lambda c: not run.held(c.formula, c.chemsys),
    )
    if not pool:
        return
    spec = student_spec(run, student_file)
    run.phase(f"scoring a pool for round {r}", len(pool))
    pred = screen(run, PrefilterStage(model=spec, direct=True), pool)
    items = [(c.formula, pred.get(c.id, float("nan"))) for c in pool]
    eh = hull_energies(items, run.student_refs)
    t = threshold
    if t is None:
        t = 2 * rescore_threshold(run.campaign)
    order = np.argsort(np.where(np.isfinite(eh), np.abs(eh - t), np.inf))
    picks = [pool[int(i)] for i in order[: cfg.rounds.labels] if np.isfinite(eh[int(i)])]
    for c in picks:
        run.cands.setdefault(c.id, c)
    label(run, picks, f"labels near the threshold (round {r})")
    run.train.extend(c.id for c in picks if run.ok(c.id))


def round_record(run: DistillRun, r: int, trained: dict, result: dict) -> dict:
    """One row of the report's rounds table: the labels so far and the calibrated screen."""
    cal = result["screening"]["calibration"]
    return {
        "round": r,
        "teacher_relaxations": sum(1 for c in run.labels.candidates.values() if c["file"]),
        "training_candidates": len(run.train),
        "single_points": len(run.points),
        "training_frames": trained["frames"],
        "epochs": trained["epochs"],
        "train_wall_s": trained["wall_s"],
        "threshold": cal["threshold"],
        "recall": cal["recall_at_threshold"],
        "recall_lower_bound": cal["recall_lower_bound_at_threshold"],
        "discarded": cal["discarded_at_threshold"],
        "spearman": cal["spearman_e_above_hull"],
        "own_energy_mae_mev": result["errors"]["calibration"]["own_energy_mae_mev"],
        "ehull_mae_mev": cal["ehull_mae_mev_per_atom"],
    }
