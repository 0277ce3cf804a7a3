"""Training a trunk student (:mod:`hts.models.student`) on the teacher's relaxed energies.

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
weighted by ``training.atom_weight`` and ``training.feature_weight``, summed
over the heads (each head of the ensemble learns on its own, so their spread
says where the student is unsure).  Batches are whole compositions, as for
the direct student.

Two regimes:

- **frozen trunk** (``training.freeze_blocks`` ≥ the trunk's blocks): the
  trunk's features of every training frame are computed once, and only the
  heads learn, on those cached features — an epoch costs no trunk pass, so
  hundreds of epochs take minutes on a CPU.  On the screen space this
  matched end-to-end fine-tuning at 400 labels at a hundredth of its training
  time (``benchmarks/distill.py``).
- **fine-tuned trunk**: every step runs the trunk forward and backward; the
  copied layers learn at ``training.trunk_lr`` × the heads' rate (pretrained
  layers need small steps, new heads larger ones).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from hts.distill.examples import RELAXED, batches, composition_baseline, frame_id

__all__ = ["atom_targets", "run_trunk"]


class _Examples:
    """Frames, their targets, and batches of them as tensors (through the trunk, or cached)."""

    def __init__(self, frames: list, features: dict) -> None:
        self.frames = frames
        self.target = np.array([a.info["hts_target"] for a in frames], dtype=float)
        self.group = [str(a.info["hts_group"]) for a in frames]
        self.n = np.array([len(a) for a in frames])
        self.start = np.concatenate([[0], np.cumsum(self.n)])
        self.ids = [frame_id(a) for a in frames]
        atom = [a.arrays.get("hts_atom_target") for a in frames]
        self.atom = np.concatenate(
            [
                np.nan * np.ones(k) if e is None else np.asarray(e, float)
                for e, k in zip(atom, self.n, strict=True)
            ]
        )
        feats = [features.get(i) for i in self.ids]
        width = next((f.shape[1] for f in feats if f is not None), 0)
        self.feat = (
            np.concatenate(
                [
                    np.full((k, width), np.nan) if f is None else f
                    for f, k in zip(feats, self.n, strict=True)
                ]
            )
            if width
            else None
        )
        self.cache: dict | None = None  # the frozen trunk's features of every atom

    def atoms(self, idx) -> np.ndarray:
        return np.concatenate([np.arange(self.start[i], self.start[i + 1]) for i in idx])

    def targets(self, idx, device):
        import torch

        rows = self.atoms(idx)

        def t(x):
            return (
                None if x is None else torch.as_tensor(x[rows], dtype=torch.float32, device=device)
            )

        return (
            torch.as_tensor(self.target[idx], dtype=torch.float32, device=device),
            t(self.atom),
            t(self.feat),
        )

    def features(self, student, idx, device):
        """(h_last, h_all, species, node_energy, owner): the trunk's features of frames ``idx``."""
        import torch

        from hts.models.tensor import TensorBatch

        if self.cache is not None:
            rows = torch.as_tensor(self.atoms(idx), device=device)
            c = self.cache
            ne = None if c["node_energy"] is None else c["node_energy"][rows]
            owner = torch.repeat_interleave(
                torch.arange(len(idx), device=device), torch.as_tensor(self.n[idx], device=device)
            )
            return c["last"][rows], c["all"][rows], c["species"][rows], ne, owner
        b = TensorBatch.from_atoms([self.frames[i] for i in idx], device, torch.float32)
        h_last, h_all = student.features(b)
        ne = getattr(student.trunk, "node_energy", None)
        return h_last, h_all, student.trunk.species(b.numbers), ne, b.batch

    def fill_cache(self, student, device, size: int = 32) -> None:
        """Run the (frozen) trunk over every frame once and keep its features."""
        import torch

        parts: dict[str, list] = {"last": [], "all": [], "species": [], "node_energy": []}
        with torch.no_grad():
            for s in range(0, len(self.frames), size):
                h_last, h_all, sp, ne, _ = self.features(
                    student, np.arange(s, min(s + size, len(self.frames))), device
                )
                parts["last"].append(h_last)
                parts["all"].append(h_all)
                parts["species"].append(sp)
                parts["node_energy"].append(ne)
        self.cache = {k: None if v[0] is None else torch.cat(v) for k, v in parts.items()}


def _species_baseline(student, ex: _Examples, zs: list[int]) -> None:
    """A new readout's per-species shift and scale, from the targets (only species trained on).

    Per-atom targets give each species' mean atomic energy directly; without
    them the shifts are a least-squares fit of energy per atom to composition.
    An element of the space no training frame holds gets the mean shift (its
    predictions are guesses, as a student from scratch's would be).
    """
    import torch

    numbers = np.concatenate([a.numbers for a in ex.frames])
    if np.isfinite(ex.atom).all():
        shift = {int(z): float(ex.atom[numbers == z].mean()) for z in np.unique(numbers)}
        resid = ex.atom - np.array([shift[int(z)] for z in numbers])
    else:
        seen = sorted({int(z) for z in numbers})
        e0 = composition_baseline(ex.frames, seen)
        shift = dict(zip(seen, e0.tolist(), strict=True))
        base = np.array([np.mean([shift[int(z)] for z in a.numbers]) for a in ex.frames])
        resid = ex.target - base
    scale = float(max(np.std(resid), 1e-3))
    mean = float(np.mean(list(shift.values())))
    shift = {z: shift.get(z, mean) for z in set(zs) | set(shift)}
    type_map = student.trunk.type_map
    with torch.no_grad():
        for z, v in shift.items():
            if z in type_map:
                student.readout.shift[type_map[z]] = v
        student.readout.scale.fill_(scale)


def _standardise(student, ex: _Examples, device, n: int = 512) -> None:
    """The heads' input scaling, from the trunk's features of (up to ``n``) training frames."""
    import torch

    if ex.cache is not None:
        h_all = ex.cache["all"]
    else:
        with torch.no_grad():
            idx = np.arange(min(n, len(ex.frames)))
            h_all = torch.cat(
                [ex.features(student, idx[s : s + 32], device)[1] for s in range(0, len(idx), 32)]
            )
    student.readout.mean.copy_(h_all.mean(0))
    student.readout.std.copy_(h_all.std(0).clamp(min=1e-6))


def run_trunk(cfg: dict, train: list, valid: list, log) -> dict:
    """Train a trunk student's heads (and, unless frozen, its trunk); write ``student.model``."""
    import torch
    from torch_ema import ExponentialMovingAverage

    from hts.models.student import freeze, load_student, make_student, save_student

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
    fresh = not cfg.get("init")
    kept: list[str] = []  # a fine-tuned student keeps the elements it covered
    if not fresh:  # a previous round, or student.init: train it further
        student, blob = load_student(cfg["init"], device)
        kept = list(blob.get("elements", []))
        print(f"fine-tuning {cfg['init']}", file=log, flush=True)
    else:
        student = make_student(
            recipe,
            st["blocks"],
            st["readout_hidden"],
            st["teacher_readout"],
            heads=int(st["heads"]),
            seed=int(cfg["seed"]),
        )
        if not (st["teacher_readout"] and student.trunk.blocks == student.trunk.n_blocks):
            _species_baseline(student, gtr, zs)
        student = student.to(device)
    student.train()
    unknown = sorted({int(z) for a in train for z in a.numbers} - set(student.trunk.type_map))
    if unknown:
        raise ValueError(f"elements {unknown} are not in the teacher's trunk")
    frozen = freeze(student, int(tr["freeze_blocks"]))
    cached = not any(p.requires_grad for p in student.trunk.parameters())
    t0 = time.time()
    if cached:  # the trunk never changes: its features once, the heads learn on them
        student.trunk.eval()
        for g in (gtr, gva):
            if g is not None:
                g.fill_cache(student, device)
        print(
            f"trunk frozen ({frozen} parameters): features of {len(train) + len(valid)} frames "
            f"cached in {time.time() - t0:.0f}s",
            file=log,
            flush=True,
        )
    elif frozen:
        print(f"{frozen} parameters of the trunk frozen", file=log, flush=True)
    if fresh:
        _standardise(student, gtr, device)
    project = None
    if gtr.feat is not None:
        project = torch.nn.Linear(student.trunk.n_features, gtr.feat.shape[1], bias=False).to(
            device
        )
        if gtr.feat.shape[1] == student.trunk.n_features:
            torch.nn.init.eye_(project.weight)
    lr = float(tr["lr"])
    groups = [{"params": list(student.readout.parameters()), "lr": lr}]
    trunk_params = [p for p in student.trunk.parameters() if p.requires_grad]
    if trunk_params:
        groups.append({"params": trunk_params, "lr": lr * float(tr["trunk_lr"])})
    if project is not None:
        groups.append({"params": list(project.parameters()), "lr": lr})
    epochs = int(cfg.get("epochs") or tr["epochs"])
    if cached:  # cheap steps: large batches, decayed to zero over the epochs (cosine)
        opt = torch.optim.AdamW(groups, weight_decay=1e-4)
        size = int(tr["frozen_batch_size"])
        steps = epochs * max(1, math.ceil(len(train) / size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    else:  # every step a trunk pass: small batches, the rate cut when validation stalls
        opt = torch.optim.Adam(groups, amsgrad=True)
        size = int(tr["batch_size"])
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.7, patience=5)
    params = [p for p in student.parameters() if p.requires_grad]
    ema = ExponentialMovingAverage(params, decay=0.99) if tr["ema"] else None
    delta = float(tr["huber_delta"])
    w_atom, w_feat = float(tr["atom_weight"]), float(tr["feature_weight"])
    huber = torch.nn.functional.huber_loss

    def forward(g: _Examples, idx):
        """Every head's energy per atom of each frame ``[heads, B]`` and its per-atom energies."""
        h_last, h_all, species, ne, owner = g.features(student, idx, device)
        e = student.energies(h_last, h_all, species, owner, ne)  # [heads, N]
        per = torch.zeros(e.shape[0], len(idx), dtype=e.dtype, device=e.device)
        per = per.index_add(1, owner, e)
        counts = torch.as_tensor(g.n[idx], dtype=e.dtype, device=e.device)
        return per / counts, e, h_last

    def evaluate(g: _Examples) -> float:
        student.eval()
        errs = []
        with ema.average_parameters() if ema else nullcontext(), torch.no_grad():
            for start in range(0, len(g.n), 64):
                idx = np.arange(start, min(start + 64, len(g.n)))
                p, *_ = forward(g, idx)
                t = torch.as_tensor(g.target[idx], dtype=p.dtype, device=p.device)
                errs.append((p.mean(0) - t).abs().cpu().numpy())
        student.train()
        if cached:
            student.trunk.eval()
        return float(1000 * np.mean(np.concatenate(errs)))

    best, best_state, best_epoch = math.inf, None, -1
    epoch = 0
    for epoch in range(epochs):
        total, count = 0.0, 0
        for idx in batches(gtr.group, size, rng):
            p, e, h = forward(gtr, idx)
            t, atom, feat = gtr.targets(idx, device)
            loss = huber(p, t.expand_as(p), delta=delta)
            if w_atom > 0 and atom is not None and torch.isfinite(atom).any():
                ok = torch.isfinite(atom)
                loss = loss + w_atom * huber(e[:, ok], atom[ok].expand(e.shape[0], -1), delta=delta)
            if project is not None and feat is not None and torch.isfinite(feat).any():
                ok = torch.isfinite(feat[:, 0])
                loss = loss + w_feat * ((project(h[ok]) - feat[ok]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            if ema:
                ema.update()
            if cached:
                sched.step()
            total += float(loss) * len(idx)
            count += len(idx)
        mae_tr = evaluate(gtr) if epoch % 10 == 0 or gva is None else math.nan
        mae = evaluate(gva) if gva is not None else mae_tr
        if not cached:
            sched.step(mae)
        print(
            f"Epoch {epoch}: loss={total / count:.6f} MAE_E_per_atom={mae:8.2f} meV "
            f"train_MAE={mae_tr:.2f} lr={opt.param_groups[0]['lr']:.2e} t={time.time() - t0:.0f}s",
            file=log,
            flush=True,
        )
        if mae < best:
            best, best_epoch = mae, epoch
            with ema.average_parameters() if ema else nullcontext():
                best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
        elif epoch - best_epoch >= int(tr["patience"]) and not cached:
            break  # (a cosine schedule runs its course: the best epoch is kept anyway)
    if best_state is not None:
        student.load_state_dict(best_state)
    student = student.cpu().eval()
    from ase.data import chemical_symbols

    # the space's elements, as a student from scratch covers them (see _species_baseline)
    elements = sorted({str(s) for a in train for s in a.get_chemical_symbols()})
    elements = sorted(set(elements) | {chemical_symbols[z] for z in zs} | set(kept))
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
        e = minima.get(frame_id(a))
        if e is not None and len(e) == len(a) and str(a.info.get("hts_head", RELAXED)) == RELAXED:
            a.arrays["hts_atom_target"] = np.asarray(e, dtype=float)
