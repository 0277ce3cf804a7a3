"""``hts distill``: sample → label with the teacher → train → evaluate → more labels → report.

1. **Sample** the campaign's space without walking it
   (:mod:`hts.candidates.sampling`): training candidates uniformly, stratified
   by prototype (a share of chemical systems held out), and calibration
   candidates as whole chemical systems with their subsystems — in a space of
   one chemistry, compositions (held out alike).
2. **Label**: the teacher relaxes every sampled candidate (frames along its
   path, perturbed copies at its minimum); a task per chunk on the site.
3. **Train** the student: a direct student (teacher's relaxed energy from the
   unrelaxed candidate, :mod:`hts.distill.direct`) or a relaxing one (a MACE
   force field, :mod:`hts.distill.train`).
4. **Evaluate** on the calibration systems, as the campaign will use it: the
   error decomposition, ``e_above_hull`` against the teacher's, and the
   threshold whose lower confidence bound on recall reaches the target.
5. **Rounds**: more teacher labels where they matter — where a relaxing
   student goes (on-policy), or near a direct student's threshold — and
   retraining, until the calibration target is met or the rounds are spent.

Labelling, training and the student's predictions are tasks on the
campaign's site, through the same engine as ``hts run``; this module runs the
phases in order and writes the student and the report.  Each phase is its own
module, a function of the run's shared :class:`~hts.distill.context.DistillRun`:
:mod:`~hts.distill.labelling` (steps 1–2), :mod:`~hts.distill.training` (3),
:mod:`~hts.distill.calibration` (4), :mod:`~hts.distill.rounds` (5) and
:mod:`~hts.distill.report`.  Every step reuses what a previous run left
(labelled candidates, mace's checkpoints, cached references).

Output folder::

    dataset/<teacher>-<hash>/   labels-*.extxyz + index.json (reusable, extendable)
    train/round-N-<hash>/       the training run of each round (per training set)
    student.model               the student (a trunk student's file or mace's module), named by
                                a campaign's prefilter (``name: student``)
    student_compiled.model      a MACE student as TorchScript (other e3nn versions, LAMMPS)
    LICENSE, NOTICE.md          beside a student whose weights derive from SevenNet (GPL-3.0)
    report.json, report.md, parity.png, screening.png, rounds.png
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from hts.distill.calibration import evaluate_student
from hts.distill.config import DistillConfig
from hts.distill.context import DistillProgress, DistillRun, run_tasks
from hts.distill.dataset import LabelStore
from hts.distill.flywheel import evaluate_on_stores, flywheel_section
from hts.distill.labelling import label, sample, single_points, teacher_references, training_set
from hts.distill.report import build_report, markdown
from hts.distill.rounds import acquire, round_record
from hts.distill.stores import read_stores
from hts.distill.training import store_training, train_round
from hts.spec import CampaignError

__all__ = ["DistillProgress", "run_distill", "run_tasks"]

log = logging.getLogger("hts.distill")


def _check_teacher(cfg: DistillConfig, teacher) -> None:
    """An ``ase`` teacher imports, takes its kwargs and gives stress, before any labelling.

    Distillation always needs the teacher's stress: it labels stresses for the
    student and relaxes cells (candidates and elemental references).
    """
    from hts.models.ase_calculator import ModelSpecError, check_calculator

    where = "teacher" if cfg.teacher is not None else "the campaign's stages.rescore.model"
    try:
        check_calculator(teacher, "the student is trained on the teacher's stress")
    except ModelSpecError as err:
        raise CampaignError(err.at(where)) from None


def _init(cfg: DistillConfig) -> Path | None:
    """``student.init``, the student to fine-tune, checked before any work."""
    if not cfg.student.init:
        return None
    path = cfg.path(cfg.student.init).resolve()
    if not path.is_file():
        raise CampaignError(f"student.init: no such student file {path}")
    return path


def run_distill(
    cfg: DistillConfig, engine, progress: Callable[[DistillProgress], None] | None = None
) -> dict:
    """Run (or resume) a distillation; returns the report (also written to the output folder).

    Rounds stop early once the calibrated threshold discards at least
    ``evaluation.target_discard``: more labels would cost teacher time for a
    screen that already does what the campaign asks.
    """
    t_start = time.time()
    campaign = cfg.load_campaign()
    teacher = cfg.resolved_teacher(campaign)
    _check_teacher(cfg, teacher)
    kind = cfg.student_kind(teacher, _init(cfg))
    cfg = cfg.model_copy(update={"student": cfg.student.model_copy(update={"kind": kind})})
    if cfg.sampling.relax is None:  # the teacher relaxes as it will in the campaign's rescore stage
        stage = campaign.stages.rescore or campaign.stages.prefilter
        cfg = cfg.model_copy(
            update={"sampling": cfg.sampling.model_copy(update={"relax": stage.relax})}
        )
    out = cfg.path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    labels = LabelStore(
        out / "dataset" / cfg.dataset_key(teacher),
        {
            "teacher": teacher.model_dump(mode="json"),
            "sampling": cfg.sampling.model_dump(mode="json"),
        },
    )
    run = DistillRun(cfg, campaign, teacher, engine, labels, out, progress or (lambda p: None))
    init = _init(cfg)
    t0 = time.time()
    if cfg.data.stores:  # the flywheel: checked and read before any teacher work
        run.phase("reading the stores")
        run.stores = read_stores(cfg, campaign, teacher)
        for cid, c in run.stores.screened.items():
            run.cands.setdefault(cid, c)
    sample(run)
    run.timing["sampling_s"] += time.time() - t0
    label(run, [run.cands[c] for c in [*run.primary, *run.closure, *run.train]], "labelling")
    if run.direct and cfg.sampling.points:
        single_points(run)
    training_set(run)
    n_train = len(run.train) + len(store_training(run))
    if n_train < 4:
        raise ValueError(
            f"only {n_train} training candidates were labelled; every teacher task failed?"
        )
    if run.primary:
        teacher_references(run)

    def evaluate(student: Path) -> dict:
        if run.primary:
            return evaluate_student(run, student)
        assert run.stores is not None  # no calibration systems: the stores' held-out rows
        return evaluate_on_stores(run, student, run.stores)

    rounds: list[dict] = []
    student_file, result = init, None
    for r in range(cfg.rounds.max + 1):
        if r > 0:
            t0 = time.time()
            acquire(run, r, rounds[-1]["threshold"], student_file)
            run.timing["acquisition_s"] += time.time() - t0
        t0 = time.time()
        student_file, trained = train_round(run, r, student_file)
        run.timing["training_s"] += time.time() - t0
        t0 = time.time()
        result = evaluate(student_file)
        run.timing["evaluation_s"] += time.time() - t0
        rounds.append(round_record(run, r, trained, result))
        log.info("round %d: %s", r, rounds[-1])
        cal = result["screening"]["calibration"]
        met = cal["threshold"] is not None and (
            cal["discarded_at_threshold"] >= cfg.evaluation.target_discard
        )
        if met:
            break
    assert student_file is not None and result is not None
    shutil.copyfile(student_file, out / "student.model")
    # mace's TorchScript copy where training made one; a trunk student has none (no stale copy)
    compiled = student_file.parent / "student_compiled.model"
    if compiled.exists():
        shutil.copyfile(compiled, out / "student_compiled.model")
    else:
        (out / "student_compiled.model").unlink(missing_ok=True)
    if (
        cfg.student.kind == "trunk"
    ):  # its weights carry the teacher's licence (GPL-3.0 for SevenNet)
        from hts.models.student import write_license

        write_license(out, out / "student.model")

    run.phase("timing student and teacher")
    report = build_report(run, result, rounds)
    if run.stores is not None:
        report["flywheel"] = flywheel_section(run, report, init, student_file, result)
    report["wall_s"] = time.time() - t_start
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown(report))
    run.phase("done")
    return report
