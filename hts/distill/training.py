"""One round's training: the files the student learns from, and the training task on the site.

The trainers themselves run in a subprocess on a worker
(:func:`hts.distill.direct.train_direct` for a direct student,
:func:`hts.distill.train.train_student`, mace-torch, for a relaxing one); this
module decides what each is given and follows its log while it runs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hts.distill.context import DistillRun, path_frames

__all__ = ["split_valid", "store_training", "train_round"]


@dataclass(frozen=True)
class _Job:
    """A training task ready to submit, and what the progress display follows."""

    fn: Callable
    args: tuple
    log: Path  # the trainer's log, read for the epoch count while it runs
    epochs: int
    n_train: int
    n_valid: int


def split_valid(run: DistillRun, ids: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Training candidates (or ``ids``) → (train, valid); each candidate's side is fixed by its id.

    A hash rather than a draw: a candidate added in a later round (or a later
    run) never moves an earlier one across the split.
    """
    share = run.cfg.sampling.valid
    ids = run.train if ids is None else ids
    valid = [
        c
        for c in ids
        if int(hashlib.sha1(f"{run.cfg.seed}:valid:{c}".encode()).hexdigest()[:8], 16) / 16**8
        < share
    ]
    vs = set(valid)
    return [c for c in ids if c not in vs], valid


def store_training(run: DistillRun) -> list[str]:
    """The stores' teacher rows trained on (``data.stores``), those the dataset lacks."""
    if run.stores is None:
        return []
    known = set(run.train)
    return [c for c in run.stores.training(run.held) if c not in known]


def train_round(run: DistillRun, r: int, prev: Path | None) -> tuple[Path, dict]:
    """Train round ``r``'s student on every training label so far; its file and figures.

    The run folder is named by round and by a hash of what is trained on, so a
    rerun reuses a finished training (direct) or resumes mace's checkpoints
    (relax), while other data or settings (a rerun after the dataset grew)
    start a fresh one.
    """
    from ase.data import atomic_numbers

    from hts.distill.train import epochs_logged

    cfg = run.cfg
    key = json.dumps(
        {
            "train": sorted(run.train),
            "points": sorted(run.points),
            "student": cfg.student.model_dump(mode="json"),
            "training": cfg.training.model_dump(mode="json"),
            "init": str(prev) if prev else "",
            "stores": sorted(store_training(run)),
        },
        sort_keys=True,
    )
    folder = run.out / "train" / f"round-{r}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    folder.mkdir(parents=True, exist_ok=True)
    train_ids, valid_ids = split_valid(run)
    zs = [atomic_numbers[el] for el in run.elements]
    make = _direct_job if run.direct else _relax_job
    job = make(run, folder, train_ids, valid_ids, zs, prev)
    if not job.n_train:
        raise ValueError("no labelled training frames: every teacher task failed?")
    st = run.state
    run.phase(f"training the student (round {r})", job.epochs, f"{job.n_train} training frames")
    # one long task: polled for its log rather than waited on, so the display shows epochs
    fut = run.engine.submit(cfg.training.resource, job.fn, *job.args)
    while not fut.done():
        time.sleep(2)
        ep = epochs_logged(job.log)
        if ep:
            st.done = ep[-1][0] + 1
            st.detail = f"valid MAE E {ep[-1][1]:.1f} meV/atom"
            run.progress(st)
    trained = fut.result()
    return Path(trained.model), {
        "frames": job.n_train + job.n_valid,
        "epochs": trained.epochs,
        "wall_s": trained.wall_s,
        "log": str(Path(trained.log).relative_to(run.out)),
    }


def _direct_job(
    run: DistillRun,
    folder: Path,
    train_ids: list[str],
    valid_ids: list[str],
    zs: list[int],
    prev: Path | None,
) -> _Job:
    """A direct student: unrelaxed structures labelled with the teacher's relaxed energy.

    Later rounds start from the previous round's student (fewer epochs), since
    they only add labels near the threshold.
    """
    from pymatgen.core import Composition

    from hts.distill.direct import train_direct
    from hts.distill.examples import POINT, write_examples

    cfg = run.cfg
    frames = path_frames(run, set(run.train) | set(run.points))
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
    trunk, features = None, ""
    if cfg.student.kind == "trunk":  # and the richer labels of the same teacher call
        from hts.distill.trunk import atom_targets
        from hts.models.student import student_recipe, trunk_of

        # the teacher's layers; a black-box teacher fine-tunes the init file's own trunk
        init = prev if prev is not None else cfg.student.init
        trunk = trunk_of(run.teacher) or (student_recipe(run.cfg.path(init)) if init else None)
        if trunk is None:
            raise ValueError("student.kind trunk: neither the teacher nor student.init has layers")
        minima = {c: f[-1].arrays.get("REF_energies") for c, f in frames.items() if f}
        atom_targets(tr, minima)
        atom_targets(va, minima)
        if cfg.training.feature_weight > 0:
            feats = run.labels.features(set(train_ids))
            if feats:
                features = str(folder / "features.npz")
                np.savez(features, **feats)
    if run.stores is not None:  # the flywheel: a campaign's teacher rows, in the same two frames
        s_train, s_valid = split_valid(run, store_training(run))
        rows = run.stores.teacher
        for c in [*s_train, *s_valid]:
            targets[c] = rows[c]["energy_per_atom"]
            groups[c] = Composition(rows[c]["formula"]).reduced_formula
        tr += [a for c in s_train for a in _store_frames(run, c, aug)]
        va += [a for c in s_valid for a in _store_frames(run, c, False)]
    files = {"train": str(folder / "train.extxyz"), "valid": str(folder / "valid.extxyz")}
    n_tr = write_examples(Path(files["train"]), tr, targets, groups)
    if trunk is None and cfg.training.point_weight > 0 and (run.points or cfg.sampling.points):
        # (a trunk student has one readout: the teacher's single points are its start already)
        # the point readout: single points, and each training candidate's unrelaxed start
        pts = [
            a for a in run.labels.frames(set(run.points)) if a.info.get("config_type") == "point"
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
    args = (str(folder / "run"), cfg.student, cfg.training, files, zs, "auto")
    args += (str(prev) if warm else None, epochs, trunk, features)
    return _Job(
        train_direct, args, folder / "run" / "train.log", epochs or cfg.training.epochs, n_tr, n_va
    )


def _store_frames(run: DistillRun, cid: str, augment: bool) -> list:
    """A store row as training frames: the unrelaxed candidate and, with augment, the teacher's minimum."""
    out = []
    for c in [run.stores.screened[cid], run.stores.teacher[cid]["relaxed"]][: 2 if augment else 1]:
        a = c.to_atoms()
        a.info["hts_id"] = cid
        out.append(a)
    return out


def _relax_job(
    run: DistillRun,
    folder: Path,
    train_ids: list[str],
    valid_ids: list[str],
    zs: list[int],
    prev: Path | None,
) -> _Job:
    """A relaxing student: mace-torch on the labelled frames (paths, perturbed copies, on-policy).

    ``prev`` is not passed on: each round trains afresh on every label so far
    (a rerun of the same round resumes mace's own checkpoints in its folder).
    """
    from ase.data import atomic_numbers

    from hts.distill.train import train_student

    cfg = run.cfg
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
    args = (str(folder / "mace"), cfg.student, cfg.training, files, e0s, zs)
    return _Job(train_student, args, folder / "mace" / "train.log", cfg.training.epochs, n_tr, n_va)
