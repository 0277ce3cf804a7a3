"""``hts distill``: sample → label with the teacher → train → evaluate → more labels → report.

1. **Sample** the campaign's space without walking it
   (:mod:`hts.candidates.sampling`): training candidates uniformly, stratified
   by prototype (a share of chemical systems held out), and calibration
   candidates as whole chemical systems with their subsystems.
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
campaign's site, through the same engine as ``hts run``; this module
orchestrates and writes files.  Every step reuses what a previous run left
(labelled candidates, mace's checkpoints, cached references).

Output folder::

    dataset/<teacher>-<hash>/   labels-*.extxyz + index.json (reusable, extendable)
    train/round-N-<hash>/       the training run of each round (per training set)
    student.model               the student (mace module), named by a campaign's prefilter
    student_compiled.model      the same student as TorchScript (other e3nn versions, LAMMPS)
    report.json, report.md, parity.png, screening.png, rounds.png
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hts.candidates.record import Candidate
from hts.candidates.sampling import fraction_label, space_size, systems, uniform
from hts.distill.config import DistillConfig
from hts.distill.dataset import LabelStore
from hts.distill.evaluate import (
    error_decomposition,
    fit_references,
    formation_energies,
    hull_energies,
    markdown,
    plot_report,
    screening_metrics,
    speed_cells,
    speed_ratio,
)
from hts.distill.sample import (
    held_out_system,
    isolated_atom_energies,
    label_chunk,
    on_policy_chunk,
    point_chunk,
)
from hts.spec import ModelSpec, PrefilterStage, RescoreStage
from hts.stages.references import relax_references
from hts.stages.screen import run_stage

__all__ = ["DistillProgress", "run_distill", "run_tasks"]

log = logging.getLogger("hts.distill")


@dataclass
class DistillProgress:
    phase: str = "starting"
    done: int = 0
    total: int = 0
    detail: str = ""


def run_tasks(engine, label: str, jobs: list[tuple], on_done: Callable, progress: Callable) -> None:
    """Submit (fn, *args) jobs with backpressure; ``on_done(job_index, result_or_exception)``."""
    from concurrent.futures import FIRST_COMPLETED, wait

    limit = 2 * engine.workers(label)
    pending: dict = {}

    def collect() -> None:
        finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        for f in finished:
            i = pending.pop(f)
            try:
                on_done(i, f.result())
            except Exception as err:  # a task that died after retries: reported, the rest go on
                on_done(i, err)
            progress()

    for i, job in enumerate(jobs):
        while len(pending) >= limit:
            collect()
        pending[engine.submit(label, *job)] = i
    while pending:
        collect()


@dataclass
class _Run:
    """What every phase of one distillation needs."""

    cfg: DistillConfig
    campaign: object
    teacher: ModelSpec
    engine: object
    labels: LabelStore
    out: Path
    progress: Callable[[DistillProgress], None]
    cands: dict[str, Candidate] = field(default_factory=dict)  # every sampled candidate
    train: list[str] = field(default_factory=list)  # labelled training candidates
    points: list[str] = field(default_factory=list)  # candidates with a single point to learn
    primary: list[str] = field(default_factory=list)  # calibration systems' candidates
    closure: list[str] = field(default_factory=list)  # their subsystems' (hull only)
    systems: list[str] = field(default_factory=list)
    state: DistillProgress = field(default_factory=DistillProgress)
    student_refs: dict[str, float] = field(default_factory=dict)  # the last round's fitted ones
    failures: Counter = field(default_factory=Counter)  # why the student failed, this round
    timing: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @property
    def teacher_label(self) -> str:
        rescore = self.campaign.stages.rescore
        return rescore.resource if rescore else "cpu"

    @property
    def student_label(self) -> str:
        return self.campaign.stages.prefilter.resource

    @property
    def direct(self) -> bool:
        return self.cfg.student.kind == "direct"

    def ok(self, cid: str) -> bool:
        v = self.labels.candidates.get(cid)
        return bool(v and v["file"] and not v["error"] and math.isfinite(v["energy_per_atom"]))

    def held(self, chemsys: str) -> bool:
        return held_out_system(chemsys, self.cfg.sampling.holdout_systems, self.cfg.seed)

    @property
    def elements(self) -> list[str]:
        return sorted({el for c in self.cands.values() for el in c.chemsys.split("-")})

    def phase(self, name: str, total: int = 0, detail: str = "") -> None:
        self.state.phase, self.state.done, self.state.total = name, 0, total
        self.state.detail = detail
        self.progress(self.state)


def run_distill(
    cfg: DistillConfig, engine, progress: Callable[[DistillProgress], None] | None = None
) -> dict:
    """Run (or resume) a distillation; returns the report (also written to the output folder)."""
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
    labels = LabelStore(
        out / "dataset" / cfg.dataset_key(teacher),
        {
            "teacher": teacher.model_dump(mode="json"),
            "sampling": cfg.sampling.model_dump(mode="json"),
        },
    )
    run = _Run(cfg, campaign, teacher, engine, labels, out, progress or (lambda p: None))

    t0 = time.time()
    _sample(run)
    run.timing["sampling_s"] += time.time() - t0
    _label(run, [run.cands[c] for c in [*run.primary, *run.closure, *run.train]], "labelling")
    if run.direct and cfg.sampling.points:
        _points(run)
    _training_set(run)
    if len(run.train) < 4:
        raise ValueError(
            f"only {len(run.train)} training candidates were labelled; every teacher task failed?"
        )
    _teacher_references(run)

    rounds: list[dict] = []
    student_file = result = None
    for r in range(cfg.rounds.max + 1):
        if r > 0:
            t0 = time.time()
            _acquire(run, r, rounds[-1]["threshold"], student_file)
            run.timing["acquisition_s"] += time.time() - t0
        t0 = time.time()
        student_file, trained = _train(run, r, student_file)
        run.timing["training_s"] += time.time() - t0
        t0 = time.time()
        result = _evaluate(run, student_file)
        run.timing["evaluation_s"] += time.time() - t0
        cal = result["screening"]["calibration"]
        rounds.append(
            {
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
        )
        log.info("round %d: %s", r, rounds[-1])
        met = cal["threshold"] is not None and (
            cal["discarded_at_threshold"] >= cfg.evaluation.target_discard
        )
        if met:
            break
    assert student_file is not None and result is not None
    shutil.copyfile(student_file, out / "student.model")
    compiled = student_file.parent / "student_compiled.model"
    shutil.copyfile(compiled if compiled.exists() else student_file, out / "student_compiled.model")

    run.phase("timing student and teacher")
    report = _report(run, result, rounds)
    report["wall_s"] = time.time() - t_start
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown(report))
    run.phase("done")
    return report


# --------------------------------------------------------------------------- phases


def _sample(run: _Run) -> None:
    cfg, campaign = run.cfg, run.campaign
    run.phase("sampling candidates")
    size = space_size(campaign, cfg.seed)
    n_train = fraction_label(cfg.sampling.train, size)
    n_cal = fraction_label(cfg.sampling.calibration, size)
    train = uniform(campaign, n_train, cfg.seed, keep=lambda c: not run.held(c.chemsys))
    cal = systems(campaign, n_cal, cfg.seed + 1)
    if len(train) < 4:
        raise ValueError(f"{cfg.campaign}: only {len(train)} valid candidates to train on")
    if not cal.primary:
        raise ValueError(f"{cfg.campaign}: no chemical system could be drawn for calibration")
    for c in [*train, *cal.primary, *cal.closure]:
        run.cands.setdefault(c.id, c)
    run.train = [c.id for c in train]
    run.primary = [c.id for c in cal.primary]
    run.closure = [c.id for c in cal.closure]
    run.systems = cal.systems
    run.timing["space_size"] = size
    log.info(
        "sampled %d training candidates and %d calibration systems (%d + %d candidates) of %d",
        len(train),
        len(cal.systems),
        len(cal.primary),
        len(cal.closure),
        size,
    )


def _label(run: _Run, candidates: list[Candidate], what: str) -> None:
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

    def labelled(i: int, res) -> None:
        if isinstance(res, Exception):
            log.warning("labelling task failed: %s", res)
            return
        run.labels.add(
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
        st.detail = f"{len(res.frames)} frames in the last task"

    run_tasks(
        run.engine,
        run.teacher_label,
        [(label_chunk, b, run.teacher, run.cfg.sampling, run.cfg.seed) for b in batches],
        labelled,
        lambda: run.progress(st),
    )
    run.timing["labelling_s"] += time.time() - t0
    run.timing["labelled_now"] += len(todo)


def _points(run: _Run) -> None:
    """Teacher single points of unrelaxed candidates drawn uniformly outside calibration."""
    cfg = run.cfg
    size = int(run.timing.get("space_size", 0)) or space_size(run.campaign, cfg.seed)
    n = fraction_label(cfg.sampling.points, size)
    taken = set(run.primary) | set(run.closure)
    draw = uniform(
        run.campaign, n, cfg.seed + 2, exclude=taken, keep=lambda c: not run.held(c.chemsys)
    )
    todo = [c for c in draw if c.id not in run.labels.points and c.id not in run.labels.candidates]
    run.phase("teacher single points", len(draw))
    run.state.done = len(draw) - len(todo)
    size_ = max(8 * cfg.chunk_size, 64)
    batches = [todo[i : i + size_] for i in range(0, len(todo), size_)]
    t0 = time.time()

    def done(i: int, res) -> None:
        if isinstance(res, Exception):
            log.warning("single-point task failed: %s", res)
            return
        run.labels.add_points(
            res,
            {
                c.id: {"formula": c.formula, "chemsys": c.chemsys, "prototype": c.prototype}
                for c in batches[i]
            },
        )
        run.state.done += len(batches[i])

    run_tasks(
        run.engine,
        run.teacher_label,
        [(point_chunk, b, run.teacher) for b in batches],
        done,
        lambda: run.progress(run.state),
    )
    run.timing["points_s"] += time.time() - t0


def _training_set(run: _Run) -> None:
    """Every labelled candidate outside the calibration and held-out systems is trained on.

    The sample's training candidates, and whatever else the dataset holds from
    earlier runs and rounds (labels are never wasted; a rerun trains on what the
    last one acquired from its first round on).
    """
    calibration = set(run.primary) | set(run.closure)
    ids = dict.fromkeys(c for c in run.train if run.ok(c))
    space = _space_elements(run.campaign)
    for cid, v in run.labels.candidates.items():
        if cid in ids or cid in calibration or not run.ok(cid):
            continue
        system = v.get("chemsys", "")
        if system and not run.held(system) and (space is None or set(system.split("-")) <= space):
            ids[cid] = None
    run.train = list(ids)
    frames = _path_frames(run, {c for c in run.train if c not in run.cands})
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
    run.points = [
        c
        for c in points
        if not run.held(run.labels.points[c].get("chemsys", ""))
        and (space is None or set(run.labels.points[c].get("chemsys", "").split("-")) <= space)
    ]


def _space_elements(campaign) -> set[str] | None:
    """Elements a substitution space can hold (None for files: any)."""
    spec = campaign.candidates
    if spec.kind != "substitution":
        return None
    tables = [spec.elements, *[p.elements or {} for p in spec.prototypes]]
    return {el for t in tables for symbols in t.values() for el in symbols}


def _teacher_references(run: _Run) -> None:
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


def _references(engine, label, stage, elements: list[str]) -> dict[str, float]:
    n = max(1, min(len(elements), engine.workers(label)))
    groups = [elements[i::n] for i in range(n)]
    futs = [engine.submit(label, relax_references, g, stage) for g in groups]
    out = {}
    for f in futs:
        for r in f.result():
            out[r.element] = r.energy_per_atom
    return out


def _split_valid(run: _Run) -> tuple[list[str], list[str]]:
    """Training candidates → (train, valid); each candidate's side is fixed by its id."""
    import hashlib

    share = run.cfg.sampling.valid
    valid = [
        c
        for c in run.train
        if int(hashlib.sha1(f"{run.cfg.seed}:valid:{c}".encode()).hexdigest()[:8], 16) / 16**8
        < share
    ]
    vs = set(valid)
    return [c for c in run.train if c not in vs], valid


def _path_frames(run: _Run, ids: set[str]) -> dict[str, list]:
    """Every candidate's teacher relaxation frames, in order (the first is the unrelaxed input)."""
    frames: dict[str, list] = defaultdict(list)
    for a in run.labels.frames(ids):
        if a.info.get("config_type") == "path":
            frames[a.info["hts_id"]].append(a)
    return frames


def _train(run: _Run, r: int, prev: Path | None) -> tuple[Path, dict]:
    """Train round ``r``'s student on every training label so far; its file and figures.

    The run folder is named by round and by a hash of what is trained on, so a
    rerun reuses a finished training (direct) or resumes mace's checkpoints
    (relax), while other data or settings (a rerun after the dataset grew)
    start a fresh one.
    """
    import hashlib

    from ase.data import atomic_numbers

    cfg = run.cfg
    key = json.dumps(
        {
            "train": sorted(run.train),
            "points": sorted(run.points),
            "student": cfg.student.model_dump(mode="json"),
            "training": cfg.training.model_dump(mode="json"),
            "init": str(prev) if prev else "",
        },
        sort_keys=True,
    )
    folder = run.out / "train" / f"round-{r}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    folder.mkdir(parents=True, exist_ok=True)
    train_ids, valid_ids = _split_valid(run)
    zs = [atomic_numbers[el] for el in run.elements]
    if run.direct:
        from pymatgen.core import Composition

        from hts.distill.direct import POINT, train_direct, write_examples

        frames = _path_frames(run, set(run.train) | set(run.points))
        targets = {c: run.labels.candidates[c]["energy_per_atom"] for c in run.train}
        groups = {
            c: Composition(run.labels.candidates[c]["formula"]).reduced_formula for c in run.train
        }
        aug = cfg.training.augment
        # the unrelaxed start and, with augment, the teacher's minimum: both carry the relaxed
        # energy (intermediate frames cost training time and added nothing measurable)
        tr = [
            a
            for c in train_ids
            if frames.get(c)
            for a in ([frames[c][0], frames[c][-1]] if aug else frames[c][:1])
        ]
        va = [frames[c][0] for c in valid_ids if frames[c]]
        files = {"train": str(folder / "train.extxyz"), "valid": str(folder / "valid.extxyz")}
        n_tr = write_examples(Path(files["train"]), tr, targets, groups)
        if cfg.training.point_weight > 0 and (run.points or cfg.sampling.points):
            # the point readout: single points, and each training candidate's unrelaxed start
            pts = [
                a
                for a in run.labels.frames(set(run.points))
                if a.info.get("config_type") == "point"
            ]
            starts = dict.fromkeys([*train_ids, *run.points])
            pts += [frames[c][0] for c in starts if frames.get(c)]
            pgroups = {
                a.info["hts_id"]: Composition(a.get_chemical_formula()).reduced_formula for a in pts
            }
            n_tr += write_examples(Path(files["train"]), pts, None, pgroups, head=POINT, mode="a")
        n_va = write_examples(Path(files["valid"]), va, targets, groups) if va else 0
        if not n_va:
            files["valid"] = ""
        warm = prev is not None and prev.exists()
        epochs = (cfg.rounds.epochs or max(1, cfg.training.epochs // 2)) if warm else None
        fn = train_direct
        args = (str(folder / "run"), cfg.student, cfg.training, files, zs, "auto")
        args += (str(prev) if warm else None, epochs)
        log_path = folder / "run" / "train.log"
        total_epochs = epochs or cfg.training.epochs
    else:
        from hts.distill.train import train_student

        files = {n: str(folder / f"{n}.extxyz") for n in ("train", "valid", "test")}
        n_tr = run.labels.write_split(
            Path(files["train"]),
            set(train_ids),
            cfg.training.energy_window,
            cfg.training.max_stress_gpa,
        )
        n_va = run.labels.write_split(
            Path(files["valid"]),
            set(valid_ids),
            cfg.training.energy_window,
            cfg.training.max_stress_gpa,
        )
        if not n_va:  # tiny runs: validate on the training frames rather than not at all
            shutil.copyfile(files["train"], files["valid"])
        shutil.copyfile(files["valid"], files["test"])
        if cfg.training.e0s == "teacher":
            e0s: dict | str = {atomic_numbers[el]: run.labels.isolated[el] for el in run.elements}
        else:
            e0s = "average"
        fn, args = train_student, (str(folder / "mace"), cfg.student, cfg.training, files, e0s, zs)
        log_path = folder / "mace" / "train.log"
        total_epochs = cfg.training.epochs
    if not n_tr:
        raise ValueError("no labelled training frames: every teacher task failed?")
    st = run.state
    run.phase(f"training the student (round {r})", total_epochs, f"{n_tr} training frames")
    from hts.distill.train import epochs_logged

    fut = run.engine.submit(cfg.training.resource, fn, *args)
    while not fut.done():
        time.sleep(2)
        ep = epochs_logged(log_path)
        if ep:
            st.done = ep[-1][0] + 1
            st.detail = f"valid MAE E {ep[-1][1]:.1f} meV/atom"
            run.progress(st)
    trained = fut.result()
    return Path(trained.model), {
        "frames": n_tr + n_va,
        "epochs": trained.epochs,
        "wall_s": trained.wall_s,
        "log": str(Path(trained.log).relative_to(run.out)),
    }


def _student_spec(run: _Run, path: Path) -> ModelSpec:
    return ModelSpec(
        name="mace",
        path=str(path.resolve()),
        dtype=run.cfg.training.dtype,
        device="auto",
        batch_size=64 if run.direct else 16,
    )


def _screen(run: _Run, stage, candidates: list[Candidate]) -> dict[str, float]:
    """The student's screening value per candidate (energy per atom), through the site's workers."""
    size = max(run.cfg.chunk_size, 64 if getattr(stage, "direct", False) else 8)
    batches = [candidates[i : i + size] for i in range(0, len(candidates), size)]
    got: dict[str, float] = {}

    def done(i: int, res) -> None:
        if isinstance(res, Exception):
            log.warning("student task failed: %s", res)
            return
        for rec in res.records:
            got[rec.id] = rec.energy_per_atom if rec.status == "ok" else float("nan")
            if rec.status != "ok":
                run.failures[rec.reason[:120]] += 1
        run.state.done += len(batches[i])

    run_tasks(
        run.engine,
        run.student_label,
        [(run_stage, i, b, stage, run.campaign.seed) for i, b in enumerate(batches)],
        done,
        lambda: run.progress(run.state),
    )
    return got


def _at_minimum(run: _Run, ids: list[str]) -> list[Candidate]:
    """Each candidate at the teacher's relaxed structure (its last path frame)."""
    frames = _path_frames(run, set(ids))
    out = []
    for cid in ids:
        if frames.get(cid):
            a = frames[cid][-1]
            c = run.cands[cid]
            out.append(
                Candidate(
                    id=cid,
                    source=c.source,
                    prototype=c.prototype,
                    numbers=np.asarray(a.numbers),
                    positions=np.asarray(a.positions),
                    cell=np.asarray(a.cell[:]),
                    formula=c.formula,
                    chemsys=c.chemsys,
                )
            )
    return out


def _evaluate(run: _Run, student_file: Path) -> dict:
    """The student as the campaign will use it, on the calibration systems."""
    cfg, labels = run.cfg, run.labels
    spec = _student_spec(run, student_file)
    pre_relax = run.campaign.stages.prefilter.relax
    own_stage = (
        PrefilterStage(model=spec, direct=True)
        if run.direct
        else PrefilterStage(model=spec, relax=pre_relax)
    )
    run.failures.clear()
    cal_ids = [c for c in dict.fromkeys([*run.primary, *run.closure]) if run.ok(c)]
    fit_ids = [c for c in run.train if c not in set(cal_ids)]
    run.phase("evaluating the student", len(cal_ids) + len(fit_ids) + len(cal_ids))
    own = _screen(run, own_stage, [run.cands[c] for c in [*cal_ids, *fit_ids]])
    # the student's energy where the teacher ends: a single point at the teacher's minimum
    at_t = _screen(run, PrefilterStage(model=spec, direct=True), _at_minimum(run, cal_ids))

    t_refs = labels.references["teacher"]
    formulas = {c: labels.candidates[c]["formula"] for c in [*cal_ids, *fit_ids]}
    t_e = {c: labels.candidates[c]["energy_per_atom"] for c in formulas}
    # the student's elemental references, fitted on training candidates (see fit_references)
    fit_items = [(formulas[c], t_e[c]) for c in fit_ids]
    s_refs = fit_references(
        [formulas[c] for c in fit_ids],
        [own.get(c, float("nan")) for c in fit_ids],
        formation_energies(fit_items, t_refs),
        {el: t_refs.get(el, float("nan")) for el in run.elements},
    )
    run.student_refs = s_refs
    t_items = [(formulas[c], t_e[c]) for c in cal_ids]
    s_items = [(formulas[c], own.get(c, float("nan"))) for c in cal_ids]
    t_eh = hull_energies(t_items, t_refs)
    s_eh = hull_energies(s_items, s_refs)
    trained = set(run.train)
    primary = set(run.primary)
    held = np.array([c in primary and c not in trained for c in cal_ids])
    unseen = np.array([run.held(run.cands[c].chemsys) for c in cal_ids])
    stable = cfg.evaluation.stable_threshold
    if stable is None:
        stable = _rescore_threshold(run.campaign)
    ev = cfg.evaluation
    t_arr = np.array([t_e[c] for c in cal_ids])
    own_arr = np.array([own.get(c, float("nan")) for c in cal_ids])
    at_arr = np.array([at_t.get(c, float("nan")) for c in cal_ids])
    f_list = [formulas[c] for c in cal_ids]
    screening, errors = {}, {}
    for name, mask in (
        ("calibration", held),
        ("held_out_systems", held & unseen),
        ("seen_systems", held & ~unseen),
    ):
        screening[name] = screening_metrics(
            t_eh[mask], s_eh[mask], stable, ev.target_recall, ev.confidence
        )
        # the hull is over every calibration candidate; the errors over the held-out ones
        errors[name] = error_decomposition(
            [f for f, m in zip(f_list, mask, strict=True) if m],
            t_arr[mask],
            at_arr[mask],
            own_arr[mask],
            t_eh[mask],
            s_eh[mask],
        )
    return {
        "screening": screening,
        "errors": errors,
        "references": {"teacher": t_refs, "student_fitted": s_refs},
        "candidates": [
            {
                "id": c,
                "formula": formulas[c],
                "system": "primary" if c in primary else "closure",
                "trained": c in trained,
                "held_out_system": bool(u),
                "teacher_energy_per_atom": _num(t_e[c]),
                "student_energy_per_atom": _num(own.get(c, float("nan"))),
                "student_at_teacher_minimum": _num(at_t.get(c, float("nan"))),
                "teacher_e_above_hull": _num(t),
                "student_e_above_hull": _num(s),
            }
            for c, u, t, s in zip(cal_ids, unseen, t_eh, s_eh, strict=True)
        ],
        "student_spec": spec,
    }


def _rescore_threshold(campaign) -> float:
    rescore = campaign.stages.rescore
    if rescore is not None:
        for f, op, v in rescore.keep.terms:
            if f == "e_above_hull" and op in ("<=", "<"):
                return v
    return 0.05


def _acquire(run: _Run, r: int, threshold: float | None, student_file: Path) -> None:
    """Round ``r``'s extra teacher labels: near the threshold (direct) or where the student goes."""
    cfg = run.cfg
    n = cfg.rounds.labels
    rng = np.random.default_rng(cfg.seed + 7919 * r)
    if not run.direct:
        picks = [run.train[int(i)] for i in rng.permutation(len(run.train))[:n]]
        spec = _student_spec(run, student_file)
        relax = run.campaign.stages.prefilter.relax
        size = cfg.chunk_size
        batches = [picks[i : i + size] for i in range(0, len(picks), size)]
        run.phase(f"on-policy labels (round {r})", len(picks))

        def labelled(i: int, res) -> None:
            if isinstance(res, Exception):
                log.warning("on-policy task failed: %s", res)
                return
            run.labels.add_frames(res.frames)
            run.state.done += len(batches[i])

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
        return
    # direct: score a fresh pool, label the candidates nearest the threshold
    taken = set(run.labels.candidates) | set(run.primary) | set(run.closure)
    pool = uniform(
        run.campaign,
        cfg.rounds.pool,
        cfg.seed + 7919 * r,
        exclude=taken,
        keep=lambda c: not run.held(c.chemsys),
    )
    if not pool:
        return
    spec = _student_spec(run, student_file)
    run.phase(f"scoring a pool for round {r}", len(pool))
    pred = _screen(run, PrefilterStage(model=spec, direct=True), pool)
    items = [(c.formula, pred.get(c.id, float("nan"))) for c in pool]
    eh = hull_energies(items, run.student_refs)
    t = threshold
    if t is None:
        t = 2 * _rescore_threshold(run.campaign)
    order = np.argsort(np.where(np.isfinite(eh), np.abs(eh - t), np.inf))
    picks = [pool[int(i)] for i in order[:n] if np.isfinite(eh[int(i)])]
    for c in picks:
        run.cands.setdefault(c.id, c)
    _label(run, picks, f"labels near the threshold (round {r})")
    run.train.extend(c.id for c in picks if run.ok(c.id))


def _report(run: _Run, result: dict, rounds: list[dict]) -> dict:
    from hts.models import load_model
    from hts.models.base import resolve_device

    cfg = run.cfg
    spec = result.pop("student_spec")
    student = load_model(spec)
    teacher_model = load_model(run.teacher)
    cal_ids = [c["id"] for c in result["candidates"]]
    cells = speed_cells(
        [run.cands[c].to_atoms() for c in cal_ids],
        n=cfg.evaluation.speed_cells,
        seed=cfg.seed,
    )
    speed = speed_ratio(teacher_model, student, cells, cfg.evaluation.speed_repeats)
    labelled = sum(1 for c in run.labels.candidates.values() if c["file"])
    report = {
        "name": cfg.name,
        "teacher": f"{run.teacher.name} ({teacher_model.version})",
        "student": {
            "kind": cfg.student.kind,
            "file": "student.model",
            "n_parameters": int(sum(p.numel() for p in student.model.parameters())),
            "architecture": cfg.student.model_dump(mode="json"),
        },
        "device": resolve_device("auto"),
        "space": {"candidates": int(run.timing.get("space_size", 0))},
        "dataset": {
            "path": str(run.labels.root.relative_to(run.out)),
            "teacher_relaxations": labelled,
            "training_candidates": len(run.train),
            "single_points": len(run.points),
            "calibration_systems": len(run.systems),
            "calibration_candidates": len(run.primary),
            "subsystem_candidates": len(run.closure),
            "held_out_share": cfg.sampling.holdout_systems,
        },
        "rounds": rounds,
        "screening": result["screening"],
        "errors": result["errors"],
        "speed": speed,
        "references": result["references"],
        "timing": {k: v for k, v in run.timing.items() if k.endswith("_s")},
        # candidates the student could not score in the last evaluation, and why
        "student_failures": {
            "n": sum(run.failures.values()),
            "reasons": dict(run.failures.most_common(5)),
        },
        "candidates": result["candidates"],
    }
    report["plots"] = plot_report(report, run.out)
    return report


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None
