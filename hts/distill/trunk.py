"""Fine-tuning a trunk student (:mod:`hts.models.student`) on the teacher's relaxed energies.

Runs in the training process :func:`hts.distill.direct.train_direct` starts
(``student.kind: trunk``).  The examples are those of the direct student —
the unrelaxed candidate and, with ``augment``, the teacher's minimum, both
labelled with the teacher's relaxed energy per atom — plus two richer labels
from the same teacher call, when the dataset has them:

- **per-atom energies**: the teacher's atomic energies at its relaxed
  structure, matched atom by atom (the unrelaxed candidate's atoms are the
  same atoms, moved).  A structure's energy is one number; its atoms give
  several, and they say how the energy splits over sites (Matin et al.,
  2025: students trained on a teacher's atomic energies match or beat it).
- **features**: the teacher's readout features at its relaxed structure,
  matched through a learned linear map (Ekström Kelvinius et al., 2023,
  node-to-node feature distillation); the map is dropped after training.

The loss is a Huber loss on each (robust to the few absurd teacher minima),
weighted by ``training.atom_weight`` and ``training.feature_weight``.  The
trunk learns at ``training.trunk_lr`` × the readout's rate (pretrained layers
need small steps, a new readout larger ones).  Batches are whole
compositions, as for the direct student.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from hts.distill.examples import RELAXED, batches, composition_baseline

__all__ = ["run_trunk"]


class _Examples:
    """Frames as numpy arrays, their targets, and a collate into a tensor batch."""

    def __init__(self, frames: list, features: dict) -> None:
        self.frames = frames
        self.target = np.array([a.info["hts_target"] for a in frames], dtype=float)
        self.group = [str(a.info["hts_group"]) for a in frames]
        self.n = np.array([len(a) for a in frames])
        self.ids = [str(a.info["hts_id"]) for a in frames]
        self.atom = [a.arrays.get("hts_atom_target") for a in frames]
        self.feat = [features.get(i) for i in self.ids]

    def collate(self, idx, device):
        import torch

        from hts.models.tensor import TensorBatch

        b = TensorBatch.from_atoms([self.frames[i] for i in idx], device, torch.float32)
        t = torch.as_tensor(self.target[idx], dtype=torch.float32, device=device)
        have = [self.atom[i] is not None for i in idx]
        atom = mask = None
        if any(have):  # per-atom targets where the teacher gave them (0-weighted elsewhere)
            atom = torch.as_tensor(
                np.concatenate(
                    [self.atom[i] if self.atom[i] is not None else np.zeros(self.n[i]) for i in idx]
                ),
                dtype=torch.float32,
                device=device,
            )
            mask = torch.as_tensor(
                np.repeat(np.array(have, dtype=float), self.n[idx]),
                dtype=torch.float32,
                device=device,
            )
        feat = fmask = None
        if any(self.feat[i] is not None for i in idx):
            width = next(self.feat[i].shape[1] for i in idx if self.feat[i] is not None)
            feat = torch.as_tensor(
                np.concatenate(
                    [
                        self.feat[i] if self.feat[i] is not None else np.zeros((self.n[i], width))
                        for i in idx
                    ]
                ),
                dtype=torch.float32,
                device=device,
            )
            fmask = torch.as_tensor(
                np.repeat([self.feat[i] is not None for i in idx], self.n[idx]).astype(float),
                dtype=torch.float32,
                device=device,
            )
        return b, t, atom, mask, feat, fmask


def _speciescomposition_baseline(student, ex: _Examples, zs: list[int]) -> None:
    """A new readout's per-species shift and scale, from the targets (only species trained on).

    Per-atom targets give each species' mean atomic energy directly; without
    them the shifts are a least-squares fit of energy per atom to composition.
    An element of the space no training frame holds gets the mean shift (its
    predictions are guesses, as a student from scratch's would be).
    """
    import torch

    type_map = student.trunk.type_map
    if all(a is not None for a in ex.atom):
        by: dict[int, list] = {}
        for a, e in zip(ex.frames, ex.atom, strict=True):
            for z, v in zip(a.numbers, e, strict=True):
                by.setdefault(int(z), []).append(float(v))
        shift = {z: float(np.mean(v)) for z, v in by.items()}
        resid = np.concatenate([np.asarray(v) - shift[z] for z, v in by.items()])
    else:
        seen = sorted({int(z) for a in ex.frames for z in a.numbers})
        e0 = composition_baseline(ex.frames, seen)
        shift = dict(zip(seen, e0.tolist(), strict=True))
        base = np.array([np.mean([shift[int(z)] for z in a.numbers]) for a in ex.frames])
        resid = ex.target - base
    scale = float(max(np.std(resid), 1e-3))
    mean = float(np.mean(list(shift.values())))
    shift = {z: shift.get(z, mean) for z in set(zs) | set(shift)}
    with torch.no_grad():
        for z, v in shift.items():
            if z in type_map:
                student.readout.shift[type_map[z]] = v
        student.readout.scale.fill_(scale)


def run_trunk(cfg: dict, train: list, valid: list, log) -> dict:
    """Fine-tune a trunk student; write ``student.model`` in the run folder; its figures."""
    import torch
    from torch_ema import ExponentialMovingAverage

    from hts.models.student import load_student, make_student, save_student

    device = cfg["device"]
    run = Path(cfg["run_dir"])
    st, tr = cfg["student"], cfg["training"]
    rng = np.random.default_rng(int(cfg["seed"]))
    recipe = cfg["trunk"]
    features = {}
    if cfg.get("features") and float(tr["feature_weight"]) > 0:
        with np.load(cfg["features"]) as z:
            features = {k: z[k] for k in z.files}
    gtr, gva = _Examples(train, features), _Examples(valid, {}) if valid else None
    zs = sorted(int(z) for z in cfg["atomic_numbers"])
    if cfg.get("init"):  # a previous round, or student.init: fine-tune it further
        student, _ = load_student(cfg["init"], device)
        student.train()
        print(f"fine-tuning {cfg['init']}", file=log, flush=True)
    else:
        student = make_student(recipe, st["blocks"], st["readout_hidden"], st["teacher_readout"])
        if not (st["teacher_readout"] and student.trunk.blocks == student.trunk.n_blocks):
            _speciescomposition_baseline(student, gtr, zs)
        student = student.to(device)
    unknown = sorted({int(z) for a in train for z in a.numbers} - set(student.trunk.type_map))
    if unknown:
        raise ValueError(f"elements {unknown} are not in the teacher's trunk")
    project = None
    if features:
        width = next(iter(features.values())).shape[1]
        project = torch.nn.Linear(student.trunk.n_features, width, bias=False).to(device)
        if width == student.trunk.n_features:
            torch.nn.init.eye_(project.weight)
    lr = float(tr["lr"])
    groups = [
        {"params": list(student.trunk.parameters()), "lr": lr * float(tr["trunk_lr"])},
        {"params": list(student.readout.parameters()), "lr": lr},
    ]
    if project is not None:
        groups.append({"params": list(project.parameters()), "lr": lr})
    opt = torch.optim.Adam(groups, amsgrad=True)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.7, patience=5)
    params = list(student.parameters())
    ema = ExponentialMovingAverage(params, decay=0.99) if tr["ema"] else None
    delta = float(tr["huber_delta"])
    w_atom, w_feat = float(tr["atom_weight"]), float(tr["feature_weight"])
    huber = torch.nn.functional.huber_loss

    def forward(g: _Examples, idx):
        b, t, atom, mask, feat, fmask = g.collate(idx, device)
        e, h = student(b)
        counts = b.counts.to(e.dtype)
        per = torch.zeros(b.n_structures, dtype=e.dtype, device=e.device).index_add(0, b.batch, e)
        return per / counts, t, e, atom, mask, h, feat, fmask

    def evaluate(g: _Examples) -> float:
        student.eval()
        errs = []
        with ema.average_parameters() if ema else nullcontext(), torch.no_grad():
            for start in range(0, len(g.n), 64):
                idx = np.arange(start, min(start + 64, len(g.n)))
                p, t, *_ = forward(g, idx)
                errs.append((p - t).abs().cpu().numpy())
        student.train()
        return float(1000 * np.mean(np.concatenate(errs)))

    best, best_state, best_epoch, t0 = math.inf, None, -1, time.time()
    epoch = 0
    for epoch in range(int(cfg.get("epochs") or tr["epochs"])):
        student.train()
        total, count = 0.0, 0
        for idx in batches(gtr.group, int(tr["batch_size"]), rng):
            p, t, e, atom, mask, h, feat, fmask = forward(gtr, idx)
            loss = huber(p, t, delta=delta)
            if w_atom > 0 and atom is not None:
                per_atom = huber(e, atom, delta=delta, reduction="none")
                loss = loss + w_atom * (mask * per_atom).sum() / mask.sum().clamp(min=1)
            if project is not None and feat is not None:
                d = ((project(h) - feat) ** 2).mean(-1)
                loss = loss + w_feat * (fmask * d).sum() / fmask.sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            if ema:
                ema.update()
            total += float(loss) * len(idx)
            count += len(idx)
        mae_tr = evaluate(gtr) if epoch % 10 == 0 or gva is None else math.nan
        mae = evaluate(gva) if gva is not None else mae_tr
        sched.step(mae)
        print(
            f"Epoch {epoch}: loss={total / count:.6f} MAE_E_per_atom={mae:8.2f} meV "
            f"train_MAE={mae_tr:.2f} lr={opt.param_groups[-1]['lr']:.2e} t={time.time() - t0:.0f}s",
            file=log,
            flush=True,
        )
        if mae < best:
            best, best_epoch = mae, epoch
            with ema.average_parameters() if ema else nullcontext():
                best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
        elif epoch - best_epoch >= int(tr["patience"]):
            break
    if best_state is not None:
        student.load_state_dict(best_state)
    student = student.cpu().eval()
    from ase.data import chemical_symbols

    # the space's elements, as a student from scratch covers them (see _species_baseline)
    elements = sorted({str(s) for a in train for s in a.get_chemical_symbols()})
    elements = sorted(set(elements) | {chemical_symbols[z] for z in zs})
    path = run / "student.model"
    save_student(
        path,
        student,
        recipe,
        elements,
        {"teacher": cfg.get("teacher", ""), "epochs": epoch + 1, "valid_mae_mev": best},
    )
    return {
        "model": str(path),
        "compiled": str(path),
        "epochs": epoch + 1,
        "best_epoch": best_epoch,
        "valid_mae_mev_per_atom": best,
    }


def atom_targets(frames: list, minima: dict[str, np.ndarray]) -> None:
    """Attach the teacher's per-atom relaxed energies to each frame of a candidate (same atoms)."""
    for a in frames:
        e = minima.get(str(a.info.get("hts_id")))
        if e is not None and len(e) == len(a) and str(a.info.get("hts_head", RELAXED)) == RELAXED:
            a.arrays["hts_atom_target"] = np.asarray(e, dtype=float)
