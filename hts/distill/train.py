"""Train the MACE student with mace-torch's own training entry point.

Runs ``python -m mace.cli.run_train`` in a subprocess: mace sets global torch
state (default dtype, logging, seeds), which must not leak into a worker that
also runs stages, and the subprocess gets its own thread count.  mace keeps
checkpoints in the run folder and ``--restart_latest`` continues from the last
one, so an interrupted training resumes instead of starting over.  Two student
files come out: the eager module (``student.model``), which hts loads because
its symmetric contractions can be folded for fast inference
(:mod:`hts.models.mace_inference`) and which needs the pinned e3nn/mace-torch,
and mace's TorchScript file (``student_compiled.model``), which loads across
e3nn versions and in LAMMPS.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TrainingError", "TrainResult", "mace_arguments", "train_student"]


class TrainingError(RuntimeError):
    """mace's training exited with an error; the message quotes the end of its log."""


@dataclass(slots=True)
class TrainResult:
    model: str  # the eager student (a pickled mace module)
    compiled: str  # the same weights as TorchScript
    log: str
    epochs: int
    wall_s: float


def mace_arguments(
    student,
    training,
    files: dict[str, Path],
    e0s: dict[int, float] | str,
    device: str,
    atomic_numbers: list[int],
) -> list[str]:
    """mace_run_train's command line, every default that matters to us spelled out."""
    t = training
    args = [
        "--name=student",
        "--model=ScaleShiftMACE",
        f"--num_channels={student.channels}",
        f"--max_L={student.max_L}",
        f"--max_ell={student.max_ell}",
        f"--correlation={student.correlation}",
        f"--num_interactions={student.interactions}",
        f"--r_max={student.r_max}",
        f"--radial_MLP={json.dumps(student.radial_mlp)}",
        f"--train_file={files['train']}",
        f"--valid_file={files['valid']}",
        f"--test_file={files['test']}",
        # every element of the sampled candidates, held-out ones included
        f"--atomic_numbers={sorted(int(z) for z in atomic_numbers)}",
        "--energy_key=REF_energy",
        "--forces_key=REF_forces",
        "--stress_key=REF_stress",
        # mace reads the dict with ast.literal_eval: integer keys, Python syntax
        f"--E0s={e0s if isinstance(e0s, str) else repr({int(k): float(v) for k, v in e0s.items()})}",
        "--loss=stress",
        "--compute_stress=True",
        f"--energy_weight={t.energy_weight}",
        f"--forces_weight={t.forces_weight}",
        f"--stress_weight={t.stress_weight}",
        f"--batch_size={t.batch_size}",
        f"--valid_batch_size={max(t.batch_size, 16)}",
        f"--lr={t.lr}",
        f"--max_num_epochs={t.epochs}",
        f"--patience={t.patience}",
        "--eval_interval=1",
        f"--default_dtype={t.dtype}",
        f"--device={device}",
        f"--seed={t.seed}",
        "--error_table=PerAtomMAEstressvirials",
        "--plot=False",
        "--save_cpu",
        "--restart_latest",
    ]
    if student.pair_repulsion:
        args.append("--pair_repulsion")
    if t.ema:
        args += ["--ema", "--ema_decay=0.99"]
    if t.stage_two and t.epochs >= 4:
        args += [
            "--swa",
            f"--start_swa={max(1, int(0.75 * t.epochs))}",
            "--swa_energy_weight=1000",
            f"--swa_forces_weight={t.forces_weight}",
            f"--swa_stress_weight={t.stress_weight}",
            f"--swa_lr={t.lr / 10}",
        ]
    return args


_EPOCH = re.compile(r"Epoch (\d+):.*?MAE_E_per_atom=\s*([\d.]+) meV(?:.*?MAE_F=\s*([\d.]+) meV)?")


def epochs_logged(log: Path) -> list[tuple[int, float, float]]:
    """(epoch, validation energy MAE meV/atom, force MAE meV/Å or NaN) so far, for progress.

    Reads mace's log and the direct student's, which has no forces.
    """
    if not log.exists():
        return []
    return [
        (int(a), float(b), float(c) if c else float("nan"))
        for a, b, c in _EPOCH.findall(log.read_text(errors="replace"))
    ]


def train_student(
    run_dir: str,
    student,
    training,
    files: dict[str, str],
    e0s,
    atomic_numbers: list[int],
    device: str = "auto",
) -> TrainResult:
    """Train in ``run_dir`` (resuming from its checkpoints); return the TorchScript student.

    Runs where the engine puts it (a GPU worker on a cluster); ``device``
    ``auto`` takes CUDA when torch sees one there.
    """
    from hts.models.base import resolve_device

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(training.device if device == "auto" else device)
    args = mace_arguments(
        student,
        training,
        {k: Path(v).resolve() for k, v in files.items()},
        e0s,
        dev,
        atomic_numbers,
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(training.threads),
        "MKL_NUM_THREADS": str(training.threads),
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
        "PYTHONWARNINGS": "ignore",
    }
    log = run / "train.log"
    t0 = time.time()
    with log.open("a") as fh:
        code = subprocess.call(
            [
                sys.executable,
                "-c",
                # torch's intra-op threads follow the worker's budget, not the node's cores
                f"import torch, sys; torch.set_num_threads({training.threads}); "
                "from mace.cli.run_train import main; sys.argv[0] = 'mace_run_train'; main()",
                *args,
            ],
            cwd=run,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise TrainingError(
            f"mace training failed (exit {code}); end of {log}:\n" + "\n".join(tail)
        )
    eager, compiled = run / "student.model", run / "student_compiled.model"
    for f in (eager, compiled):
        if not f.exists():
            raise TrainingError(f"mace training finished but wrote no {f}")
    epochs = epochs_logged(log)
    return TrainResult(
        model=str(eager),
        compiled=str(compiled),
        log=str(log),
        epochs=epochs[-1][0] + 1 if epochs else 0,
        wall_s=time.time() - t0,
    )
