"""``hts distill``: sample → label with the teacher → train the student → evaluate → report.

Labelling, reference relaxations, training and the student's screening
relaxations are tasks on the campaign's site, through the same engine as
``hts run``; this module only orchestrates and writes files.  Every step
reuses what a previous run left: labelled candidates (the dataset), mace's
checkpoints, cached references.

Output folder::

    dataset/<teacher>-<hash>/   labels-*.extxyz + index.json (reusable, extendable)
    train/                      train/valid/test.extxyz, mace's run (logs, checkpoints)
    student.model               the student (mace module), named by a campaign's prefilter
    student_compiled.model      the same student as TorchScript (other e3nn versions, LAMMPS)
    report.json, report.md, parity.png, screening.png
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hts.candidates import chunks, open_source
from hts.distill.config import DistillConfig
from hts.distill.dataset import LabelStore
from hts.distill.evaluate import (
    fit_references,
    force_field_errors,
    formation_energies,
    hull_energies,
    markdown,
    plot_report,
    screening_metrics,
    speed_cells,
    speed_ratio,
)
from hts.distill.sample import (
    isolated_atom_energies,
    label_chunk,
    split_of,
    stratified,
)
from hts.distill.train import epochs_logged, train_student
from hts.spec import ModelSpec, PrefilterStage, RescoreStage
from hts.stages.references import relax_references
from hts.stages.screen import run_stage

__all__ = ["DistillProgress", "run_distill"]

log = logging.getLogger("hts.distill")


@dataclass
class DistillProgress:
    phase: str = "starting"
    done: int = 0
    total: int = 0
    detail: str = ""


@dataclass
class _Run:
    """What every phase of one distillation needs."""

    cfg: DistillConfig
    campaign: object
    teacher: ModelSpec
    engine: object
    labels: LabelStore
    split: dict[str, str]  # candidate id -> train | valid | test
    by_id: dict[str, object]  # the sampled candidates

    @property
    def teacher_label(self) -> str:
        rescore = self.campaign.stages.rescore
        return rescore.resource if rescore else "cpu"

    @property
    def student_label(self) -> str:
        return self.campaign.stages.prefilter.resource

    @property
    def elements(self) -> list[str]:
        return sorted({el for c in self.by_id.values() for el in c.chemsys.split("-")})


def _run_tasks(
    engine, label: str, jobs: list[tuple], on_done: Callable, progress: Callable
) -> None:
    """Submit (fn, *args) jobs with backpressure; ``on_done(job_index, result_or_exception)``."""
    limit = 2 * engine.workers(label)
    pending: dict[Future, int] = {}
    for i, job in enumerate(jobs):
        while len(pending) >= limit:
            _collect(pending, on_done, progress)
        pending[engine.submit(label, *job)] = i
    while pending:
        _collect(pending, on_done, progress)


def _collect(pending: dict, on_done: Callable, progress: Callable) -> None:
    finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
    for f in finished:
        i = pending.pop(f)
        try:
            on_done(i, f.result())
        except Exception as err:  # a task that died after retries: reported, the rest go on
            on_done(i, err)
        progress()


def _references(engine, label, stage, elements: list[str]) -> dict[str, float]:
    n = max(1, min(len(elements), engine.workers(label)))
    groups = [elements[i::n] for i in range(n)]
    futs = [engine.submit(label, relax_references, g, stage) for g in groups]
    out = {}
    for f in futs:
        for r in f.result():
            out[r.element] = r.energy_per_atom
    return out


def run_distill(
    cfg: DistillConfig, engine, progress: Callable[[DistillProgress], None] | None = None
) -> dict:
    """Run (or resume) a distillation; returns the report (also written to the output folder)."""
    progress = progress or (lambda p: None)
    st = DistillProgress()
    t_start = time.time()
    campaign = cfg.load_campaign()
    teacher = cfg.resolved_teacher(campaign)
    if cfg.sampling.relax is None:  # the teacher relaxes as it will in the campaign's rescore stage
        stage = campaign.stages.rescore or campaign.stages.prefilter
        cfg = cfg.model_copy(
            update={"sampling": cfg.sampling.model_copy(update={"relax": stage.relax})}
        )
    out = cfg.path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)

    # -- sample ------------------------------------------------------------------
    st.phase = "sampling candidates"
    progress(st)
    limits = campaign.limits
    pool_n = min(cfg.sampling.pool, limits.max_candidates or cfg.sampling.pool)
    pool = [
        c
        for ch in chunks(
            open_source(campaign),
            1024,
            max_candidates=pool_n,
            max_atoms=limits.max_atoms,
            min_distance=limits.min_distance,
        )
        for c in ch.candidates
        if not c.error
    ]
    picked = stratified(pool, cfg.sampling.candidates, cfg.seed)
    if len(picked) < 4:
        raise ValueError(f"{cfg.campaign}: only {len(picked)} valid candidates to sample from")
    sp = cfg.split
    split = {c.id: split_of(c, sp.by, sp.valid, sp.test, cfg.seed) for c in picked}
    if not {"train", "test"} <= set(split.values()):
        raise ValueError(
            f"split by {sp.by}: the {len(picked)} sampled candidates fall into fewer than two groups; "
            "sample more candidates or split by chemsys"
        )
    by_id = {c.id: c for c in picked}

    # -- label with the teacher ----------------------------------------------------
    key = cfg.dataset_key(teacher)
    labels = LabelStore(
        out / "dataset" / key,
        {
            "teacher": teacher.model_dump(mode="json"),
            "sampling": cfg.sampling.model_dump(mode="json"),
        },
    )
    run = _Run(cfg, campaign, teacher, engine, labels, split, by_id)
    todo = [c for c in picked if c.id not in labels.candidates]
    st.phase, st.done, st.total = "teacher labelling", len(picked) - len(todo), len(picked)
    st.detail = f"{st.done} reused from {labels.root}" if st.done else ""
    progress(st)
    batches = [todo[i : i + cfg.chunk_size] for i in range(0, len(todo), cfg.chunk_size)]

    def labelled(i: int, res) -> None:
        if isinstance(res, Exception):
            log.warning("labelling task failed: %s", res)
            return
        labels.add(
            res,
            {
                c.id: {
                    "formula": c.formula,
                    "chemsys": c.chemsys,
                    "prototype": c.prototype,
                    "source": c.source,
                }
                for c in batches[i]
            },
        )
        st.done += len(batches[i])
        st.detail = f"{sum(1 for _ in res.frames)} frames in the last task"

    _run_tasks(
        engine,
        run.teacher_label,
        [(label_chunk, b, teacher, cfg.sampling, cfg.seed) for b in batches],
        labelled,
        lambda: progress(st),
    )
    elements = run.elements
    missing = [el for el in elements if el not in labels.isolated]
    if missing:
        labels.set_isolated(
            engine.submit(run.teacher_label, isolated_atom_energies, missing, teacher).result()
        )

    # -- train ----------------------------------------------------------------------
    train_dir = out / "train"
    train_dir.mkdir(exist_ok=True)
    usable = {
        cid: v
        for cid, v in labels.candidates.items()
        if cid in split and v["file"] and not v["error"]
    }
    files, split_frames = {}, {}
    for name in ("train", "valid", "test"):
        ids = {cid for cid in usable if split[cid] == name}
        files[name] = str(train_dir / f"{name}.extxyz")
        split_frames[name] = labels.write_split(
            Path(files[name]), ids, cfg.training.energy_window, cfg.training.max_stress_gpa
        )
    if split_frames["valid"] == 0:  # tiny runs: validate on the test groups rather than not at all
        shutil.copyfile(files["test"], files["valid"])
    if split_frames["train"] == 0 or split_frames["test"] == 0:
        raise ValueError(
            "no labelled frames in the train or test split: every teacher task failed?"
        )
    from ase.data import atomic_numbers

    if cfg.training.e0s == "teacher":
        bad = [el for el in elements if not math.isfinite(labels.isolated.get(el, float("nan")))]
        if bad:
            raise ValueError(f"teacher gave no isolated-atom energy for {', '.join(bad)}")
        e0s: dict | str = {atomic_numbers[el]: labels.isolated[el] for el in elements}
    else:
        e0s = "average"
    st.phase, st.done, st.total = "training the student", 0, cfg.training.epochs
    st.detail = f"{split_frames['train']} training frames"
    progress(st)
    fut = engine.submit(
        cfg.training.resource,
        train_student,
        str(train_dir / "mace"),
        cfg.student,
        cfg.training,
        files,
        e0s,
        [atomic_numbers[el] for el in elements],
    )
    log_path = train_dir / "mace" / "train.log"
    while not fut.done():
        time.sleep(2)
        ep = epochs_logged(log_path)
        if ep:
            st.done = ep[-1][0] + 1
            st.detail = f"valid MAE E {ep[-1][1]:.1f} meV/atom, F {ep[-1][2]:.0f} meV/Å"
            progress(st)
    trained = fut.result()
    student_file = out / "student.model"
    shutil.copyfile(trained.model, student_file)
    shutil.copyfile(trained.compiled, out / "student_compiled.model")

    # -- evaluate -------------------------------------------------------------------
    st.phase, st.done, st.total, st.detail = "evaluating", 0, 0, ""
    progress(st)
    report = evaluate(run, student_file, files, split_frames)
    report["training"] = {
        "epochs": trained.epochs,
        "wall_s": trained.wall_s,
        "n_parameters": report.pop("n_parameters"),
        "log": str(Path(trained.log).relative_to(out)),
        "mace_arguments": "see train/mace/train.log",
    }
    report["wall_s"] = time.time() - t_start
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown(report))
    st.phase = "done"
    progress(st)
    return report


def evaluate(run: _Run, student_file: Path, files: dict[str, str], split_frames: dict) -> dict:
    """Force-field errors, screening metrics and speed; plots next to the report."""
    cfg, campaign, teacher, labels, split, by_id, engine = (
        run.cfg,
        run.campaign,
        run.teacher,
        run.labels,
        run.split,
        run.by_id,
        run.engine,
    )
    from ase.io import read

    from hts.models import load_model

    out = cfg.path(cfg.output)
    student_spec = ModelSpec(
        name="mace",
        path=str(student_file.resolve()),
        dtype=cfg.training.dtype,
        device="auto",
        batch_size=16,
    )
    student = load_model(student_spec)
    parity: dict = {}
    ff = {}
    for name in ("test", "valid"):
        frames = read(files[name], ":") if split_frames[name] else []
        errs = force_field_errors(student, frames)
        if name == "test":
            parity = errs.pop("_parity", {})
        else:
            errs.pop("_parity", None)
        ff[name] = errs

    # screening: the student relaxes every sampled candidate, as the prefilter would
    pre_relax = campaign.stages.prefilter.relax
    student_stage = PrefilterStage(model=student_spec, relax=pre_relax)
    ok_ids = [cid for cid in split if not labels.candidates.get(cid, {}).get("error", "x")]
    batches = [ok_ids[i : i + cfg.chunk_size] for i in range(0, len(ok_ids), cfg.chunk_size)]
    student_e: dict[str, float] = {}

    def relaxed(i: int, res) -> None:
        if isinstance(res, Exception):
            log.warning("student relaxation task failed: %s", res)
            return
        for r in res.records:
            student_e[r.id] = r.energy_per_atom if r.status == "ok" else float("nan")

    _run_tasks(
        engine,
        run.student_label,
        [
            (run_stage, i, [by_id[c] for c in b], student_stage, campaign.seed)
            for i, b in enumerate(batches)
        ],
        relaxed,
        lambda: None,
    )
    elements = run.elements
    t_refs = dict(labels.references.get("teacher", {}))
    need = [el for el in elements if el not in t_refs]
    if need:
        rescore = campaign.stages.rescore
        teacher_stage = RescoreStage(
            model=teacher, relax=rescore.relax if rescore else cfg.sampling.relax
        )
        t_refs.update(_references(engine, run.teacher_label, teacher_stage, need))
        labels.set_references({"teacher": t_refs})
    formulas = [labels.candidates[cid]["formula"] for cid in ok_ids]
    t_items = [
        (f, labels.candidates[c]["energy_per_atom"]) for f, c in zip(formulas, ok_ids, strict=True)
    ]
    s_items = [(f, student_e.get(c, float("nan"))) for f, c in zip(formulas, ok_ids, strict=True)]
    t_eh = hull_energies(t_items, t_refs)
    # the student's references: fitted on the training candidates (see fit_references);
    # relaxed ones are reported for comparison
    fit = np.array([split[c] != "test" for c in ok_ids])
    t_form = formation_energies(t_items, t_refs)
    s_refs = fit_references(
        [f for f, m in zip(formulas, fit, strict=True) if m],
        [e for (_, e), m in zip(s_items, fit, strict=True) if m],
        t_form[fit],
        {el: t_refs.get(el, float("nan")) for el in elements},
    )
    s_eh = hull_energies(s_items, s_refs)
    s_relaxed_refs = _references(engine, run.student_label, student_stage, elements)
    s_eh_relaxed = hull_energies(s_items, s_relaxed_refs)
    stable = cfg.evaluation.stable_threshold
    if stable is None:
        stable = 0.05
        if campaign.stages.rescore is not None:
            stable = next(
                (
                    v
                    for f, op, v in campaign.stages.rescore.keep.terms
                    if f == "e_above_hull" and op in ("<=", "<")
                ),
                stable,
            )
    held = np.array([split[cid] == "test" for cid in ok_ids])
    target = cfg.evaluation.target_recall
    screening = {
        "held_out": screening_metrics(t_eh[held], s_eh[held], stable, target),
        "all": screening_metrics(t_eh, s_eh, stable, target),
        "held_out_relaxed_references": screening_metrics(
            t_eh[held], s_eh_relaxed[held], stable, target
        ),
    }

    # speed, side by side in this process, on the hardware the report names
    from hts.models.base import resolve_device

    cells = speed_cells(
        [by_id[c].to_atoms() for c in ok_ids], n=cfg.evaluation.speed_cells, seed=cfg.seed
    )
    teacher_model = load_model(teacher)
    speed = speed_ratio(teacher_model, student, cells, cfg.evaluation.speed_repeats)

    report = {
        "name": cfg.name,
        "n_parameters": int(sum(p.numel() for p in student.model.parameters())),
        "teacher": f"{teacher.name} ({teacher_model.version})",
        "student_file": student_file.name,
        "device": resolve_device("auto"),
        "dataset": {
            "path": str(labels.root.relative_to(out)),
            "n_candidates": len(ok_ids),
            "frames": sum(split_frames.values()),
            "split_frames": split_frames,
            "split_by": cfg.split.by,
            "elements": elements,
        },
        "force_field": ff,
        "screening": screening,
        "speed": speed,
        "references": {
            "teacher": t_refs,
            "student_fitted": s_refs,
            "student_relaxed": s_relaxed_refs,
        },
        "candidates": [
            {
                "id": cid,
                "formula": f,
                "split": split[cid],
                "teacher_e_above_hull": _num(t),
                "student_e_above_hull": _num(s),
            }
            for cid, f, t, s in zip(ok_ids, formulas, t_eh, s_eh, strict=True)
        ],
    }
    report["plots"] = plot_report(
        report,
        parity,
        {"teacher": t_eh.tolist(), "student": s_eh.tolist(), "split": [split[c] for c in ok_ids]},
        out,
    )
    return report


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None
