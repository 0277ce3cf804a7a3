"""The direct student: the teacher's *relaxed* energy, straight from the unrelaxed candidate.

A relaxing student has to be right along the whole path the teacher would
take and at the minimum it ends in, and where it is not it falls into minima
the teacher does not have.  A screen only needs one number per candidate: the
teacher's relaxed energy.  On a substitution space the unrelaxed structure
(prototype, elements, radius-scaled cell) determines it, so a model can learn
the map directly: one forward pass per candidate instead of tens of
relaxation steps, and no spurious minima to fall into.  Training frames are
the unrelaxed structure and, as augmentation, the structures along the
teacher's relaxed structure, both labelled with the relaxed energy (Gibson
et al., npj Comput. Mater. 8, 211 (2022), augment with relaxation frames), so
the prediction does not hinge on the exact starting geometry; and, with their
own readout head, teacher single points of unrelaxed candidates, cheap labels
of the chemistry both heads share.

The model is a mace-torch ``ScaleShiftMACE`` (invariant messages, as the
relaxing student), trained here on energies only: no force labels exist for
a relaxed-energy target, and without them the backward pass through the
positions, most of mace's training cost, is not needed.  Batches are made of
whole compositions (polymorphs of one formula share a batch, so each
step sees the energy differences that decide the hull).  Training runs in its own process (thread count, dtype
and seeds stay out of the worker); the result is a pickled mace module that
:class:`hts.models.batched.MaceModel` loads like any MACE file.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hts.distill.examples import POINT, RELAXED, batches, composition_baseline

__all__ = ["DirectResult", "train_direct"]


@dataclass(slots=True)
class DirectResult:
    model: str  # pickled mace module
    compiled: str  # TorchScript copy
    log: str
    epochs: int
    wall_s: float
    valid_mae_mev_per_atom: float


# --------------------------------------------------------------------------- the training process


class _Graphs:
    """Neighbour lists of every frame, computed once; batches are concatenations of them."""

    def __init__(self, frames, z_index: np.ndarray, r_max: float, heads: list[str]) -> None:
        from hts.models.batched import mace_graph

        self.items = [mace_graph(a, z_index, r_max) for a in frames]
        self.target = np.array([a.info["hts_target"] for a in frames], dtype=float)
        self.group = [str(a.info["hts_group"]) for a in frames]
        self.n = np.array([len(a) for a in frames])
        self.head = np.array([heads.index(str(a.info.get("hts_head", RELAXED))) for a in frames])

    def collate(self, idx, n_elements: int, dtype: str, device) -> dict:
        from hts.models.batched import mace_collate

        return mace_collate([self.items[i] for i in idx], n_elements, dtype, device, self.head[idx])


def _loss(pred, target, weight, delta: float):
    """Weighted Huber loss on energy per atom (robust to the few absurd teacher minima)."""
    import torch

    huber = torch.nn.functional.huber_loss(pred, target, delta=delta, reduction="none")
    return (weight * huber).sum() / weight.sum()


def _run(cfg: dict) -> dict:
    import torch
    from ase.io import read
    from e3nn import o3
    from mace import modules
    from torch_ema import ExponentialMovingAverage

    torch.set_num_threads(int(cfg["threads"]))
    torch.manual_seed(int(cfg["seed"]))
    rng = np.random.default_rng(int(cfg["seed"]))
    dtype = torch.float64 if cfg["dtype"] == "float64" else torch.float32
    torch.set_default_dtype(dtype)  # this process only: the model is built in its dtype
    device = cfg["device"]
    run = Path(cfg["run_dir"])
    log = (run / "train.log").open("a")

    train = read(cfg["train"], ":")
    valid = read(cfg["valid"], ":") if cfg["valid"] else []
    if cfg.get("trunk"):  # the teacher's own layers, fine-tuned (hts.distill.trunk)
        from hts.distill.trunk import run_trunk

        try:
            return run_trunk(cfg, train, valid, log)
        finally:
            log.close()
    zs = sorted(int(z) for z in cfg["atomic_numbers"])
    st = cfg["student"]
    present = {str(fr.info.get("hts_head", RELAXED)) for fr in train}
    heads = [h for h in (POINT, RELAXED) if h in present or h == RELAXED]
    init = None
    if cfg.get("init"):  # fine-tune (a later round, or student.init): its layout is kept
        init = torch.load(cfg["init"], map_location=device, weights_only=False)
        zs = [int(z) for z in init.atomic_numbers]
        heads = list(init.heads)
        train, valid = (_fits(frames, zs, heads, log) for frames in (train, valid))
        print(f"fine-tuning {cfg['init']}", file=log, flush=True)
    if not train:
        raise ValueError(f"no training frame has only elements of {cfg['init']}")
    z_index = np.full(max(zs) + 1, -1)
    z_index[zs] = np.arange(len(zs))
    r_max = float(init.r_max) if init is not None else float(st["r_max"])
    gtr = _Graphs(train, z_index, r_max, heads)
    gva = _Graphs(valid, z_index, r_max, heads) if valid else None
    # per head: a per-element baseline, then mace's scale and shift of the residual per atom
    e0s, scales, shifts = [], [], []
    for k, _ in enumerate(heads):
        mine = [fr for fr, h in zip(train, gtr.head, strict=True) if h == k]
        e0 = composition_baseline(mine, zs) if mine else np.zeros(len(zs))
        base = np.array([sum(e0[z_index[z]] for z in fr.numbers) / len(fr) for fr in mine])
        resid = np.array([fr.info["hts_target"] for fr in mine]) - base if mine else np.zeros(1)
        e0s.append(e0)
        scales.append(float(max(np.std(resid), 1e-3)))
        shifts.append(float(np.mean(resid)))
    avg_nb = float(np.mean([it[2].shape[1] / len(it[0]) for it in gtr.items]))
    hidden = " + ".join(
        f"{st['channels']}x{ell}{'e' if ell % 2 == 0 else 'o'}" for ell in range(st["max_L"] + 1)
    )
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    model = (
        init.to(dtype)
        if init is not None
        else modules.ScaleShiftMACE(
            r_max=float(st["r_max"]),
            num_bessel=8,
            num_polynomial_cutoff=5,
            max_ell=int(st["max_ell"]),
            interaction_cls=block,
            interaction_cls_first=block,
            num_interactions=int(st["interactions"]),
            num_elements=len(zs),
            hidden_irreps=o3.Irreps(hidden),
            MLP_irreps=o3.Irreps(f"{16 * len(heads)}x0e"),
            # the baseline is per atom of a compound: an isolated atom's energy it is not
            atomic_energies=np.stack(e0s),
            avg_num_neighbors=avg_nb,
            atomic_numbers=zs,
            correlation=int(st["correlation"]),
            gate=torch.nn.functional.silu,
            pair_repulsion=False,
            radial_MLP=list(st["radial_mlp"]),
            radial_type="bessel",
            heads=heads,
            atomic_inter_scale=scales,
            atomic_inter_shift=shifts,
        ).to(device)
    )
    tr = cfg["training"]
    opt = torch.optim.Adam(model.parameters(), lr=float(tr["lr"]), amsgrad=True)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.7, patience=10)
    ema = ExponentialMovingAverage(model.parameters(), decay=0.99) if tr["ema"] else None
    n_el = len(zs)
    weight = np.where(gtr.head == heads.index(RELAXED), 1.0, float(tr["point_weight"]))

    def predict(g: _Graphs, idx) -> torch.Tensor:
        d = g.collate(idx, n_el, cfg["dtype"], device)
        out = model(d, training=model.training, compute_force=False)
        return out["energy"] / torch.as_tensor(g.n[idx], dtype=dtype, device=device)

    def evaluate(g: _Graphs) -> float:
        model.eval()
        errs = []
        ctx = ema.average_parameters() if ema else nullcontext()
        with ctx, torch.no_grad():
            for start in range(0, len(g.n), 256):
                idx = np.arange(start, min(start + 256, len(g.n)))
                p = predict(g, idx).cpu().numpy()
                errs.append(np.abs(p - g.target[idx]))
        model.train()
        return float(1000 * np.mean(np.concatenate(errs)))

    best, best_state, best_epoch, t0 = math.inf, None, -1, time.time()
    epoch = 0
    for epoch in range(int(cfg.get("epochs") or tr["epochs"])):
        model.train()
        total, count = 0.0, 0
        for idx in batches(gtr.group, int(tr["batch_size"]), rng):
            pred = predict(gtr, idx)
            target = torch.as_tensor(gtr.target[idx], dtype=dtype, device=device)
            w = torch.as_tensor(weight[idx], dtype=dtype, device=device)
            loss = _loss(pred, target, w, float(tr["huber_delta"]))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            if ema:
                ema.update()
            total += float(loss) * len(idx)
            count += len(idx)
        mae_tr = evaluate(gtr) if epoch % 10 == 0 else math.nan
        mae = evaluate(gva) if gva is not None else mae_tr
        sched.step(mae if gva is not None else total / count)
        print(
            f"Epoch {epoch}: loss={total / count:.6f} MAE_E_per_atom={mae:8.2f} meV "
            f"train_MAE={mae_tr:.2f} lr={opt.param_groups[0]['lr']:.2e} t={time.time() - t0:.0f}s",
            file=log,
            flush=True,
        )
        if mae < best:
            best, best_epoch = mae, epoch
            ctx = ema.average_parameters() if ema else nullcontext()
            with ctx:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= int(tr["patience"]):
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model = model.cpu().eval()
    path = run / "student.model"
    torch.save(model, path)
    compiled = run / "student_compiled.model"
    try:
        from copy import deepcopy

        from e3nn.util import jit

        torch.jit.save(jit.compile(deepcopy(model)), compiled)
    except Exception as err:  # TorchScript is a convenience copy, not the student
        print(f"no TorchScript copy: {type(err).__name__}: {err}", file=log, flush=True)
        compiled = path
    log.close()
    return {
        "model": str(path),
        "compiled": str(compiled),
        "epochs": epoch + 1,
        "best_epoch": best_epoch,
        "valid_mae_mev_per_atom": best,
    }


def _fits(frames: list, zs: list[int], heads: list[str], log) -> list:
    """The frames a student of elements ``zs`` and readouts ``heads`` can learn; says what it drops."""
    known = set(zs)
    keep = [
        fr
        for fr in frames
        if set(int(z) for z in fr.numbers) <= known
        and str(fr.info.get("hts_head", RELAXED)) in heads
    ]
    if len(keep) < len(frames):
        print(
            f"{len(frames) - len(keep)} frames left out: an element or readout the student lacks",
            file=log,
            flush=True,
        )
    return keep


def train_direct(
    run_dir: str,
    student,
    training,
    files: dict[str, str],
    atomic_numbers: list[int],
    device: str = "auto",
    init: str | None = None,
    epochs: int | None = None,
    trunk: dict | None = None,
    features: str = "",
) -> DirectResult:
    """Train the direct student in its own process; ``files``: ``train`` and ``valid`` extxyz.

    ``init``: a previous round's student to start from (when its layout matches);
    ``epochs`` then overrides the training's epoch count.  ``trunk``: the
    teacher's trunk recipe (:func:`hts.models.student.trunk_of`) for a trunk
    student, ``features`` the teacher's readout features to match (npz by id).
    """
    from hts.models.base import resolve_device

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    cfg = {
        "run_dir": str(run.resolve()),
        "train": str(Path(files["train"]).resolve()),
        "valid": str(Path(files["valid"]).resolve()) if files.get("valid") else "",
        "atomic_numbers": [int(z) for z in atomic_numbers],
        "student": student.model_dump(mode="json"),
        "training": training.model_dump(mode="json"),
        "threads": training.threads,
        "seed": training.seed,
        "dtype": training.dtype,
        "device": resolve_device(training.device if device == "auto" else device),
        "init": str(Path(init).resolve()) if init else "",
        "epochs": epochs,
        "trunk": trunk,
        "features": str(Path(features).resolve()) if features else "",
    }
    done = run / "result.json"
    # a finished run with the same settings and data (the caller names the folder by
    # them): reuse it rather than train again after an interrupted distillation
    old = run / "config.json"
    if done.exists() and old.exists() and json.loads(old.read_text()) == cfg:
        res = json.loads(done.read_text())
        took = done.stat().st_mtime - old.stat().st_mtime
        return DirectResult(
            model=res["model"],
            compiled=res["compiled"],
            log=str(run / "train.log"),
            epochs=res["epochs"],
            wall_s=res.get("wall_s", took),
            valid_mae_mev_per_atom=res["valid_mae_mev_per_atom"],
        )
    done.unlink(missing_ok=True)
    (run / "config.json").write_text(json.dumps(cfg, indent=1))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(training.threads),
        "MKL_NUM_THREADS": str(training.threads),
        # e3nn 0.4.4 reads its own constants with torch.load at import
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
        "PYTHONWARNINGS": "ignore",
    }
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "hts.distill.direct", str(run / "config.json")],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        from hts.distill.train import TrainingError

        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-15:])
        raise TrainingError(f"direct student training failed (exit {proc.returncode}):\n{tail}")
    res = json.loads(done.read_text())
    res["wall_s"] = time.time() - t0
    done.write_text(json.dumps(res))
    return DirectResult(
        model=res["model"],
        compiled=res["compiled"],
        log=str(run / "train.log"),
        epochs=res["epochs"],
        wall_s=res["wall_s"],
        valid_mae_mev_per_atom=res["valid_mae_mev_per_atom"],
    )


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")
    config = json.loads(Path(sys.argv[1]).read_text())
    result = _run(config)
    (Path(config["run_dir"]) / "result.json").write_text(json.dumps(result))
