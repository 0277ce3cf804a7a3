"""The batched tensor side of the model interface: what a relaxation on a device calls.

A relaxation keeps its whole batch as tensors on the model's device: positions
``[N, 3]``, cells ``[B, 3, 3]`` (lattice vectors as rows), atomic numbers and
the structure index of every atom.  :func:`evaluate` returns energy ``[B]``
(eV), forces ``[N, 3]`` (eV/Å) and stress ``[B, 3, 3]`` (eV/Å³, ASE's sign:
negative under compression) on the same device, in the positions' dtype, so
a step never leaves the GPU.

A model that computes on tensors (MACE, SevenNet, the analytic potential) says
so with an ``evaluate(batch)`` method; one that only has a per-structure host
path (an ASE calculator, CHGNet's own graph converter) is evaluated through its
``predict`` with one copy to the host and one back per call — the same
results, not the same speed.  :class:`Model.predict` of a tensor model is
:func:`predict_via_tensors`: one implementation of each model's physics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms

__all__ = [
    "Evaluation",
    "TensorBatch",
    "evaluate",
    "full3",
    "predict_via_tensors",
    "torch_device",
]


@dataclass(slots=True)
class TensorBatch:
    """Structures as tensors on one device; atoms of a structure are contiguous.

    ``counts[b]`` atoms belong to structure ``b``; ``batch[i]`` is atom ``i``'s
    structure.  Always periodic in three directions (crystals).
    """

    positions: Any  # Tensor [N, 3]
    cells: Any  # Tensor [B, 3, 3]
    numbers: Any  # Tensor [N] long
    batch: Any  # Tensor [N] long
    counts: Any  # Tensor [B] long

    @property
    def n_structures(self) -> int:
        return int(self.cells.shape[0])

    @classmethod
    def from_atoms(cls, structures: Sequence[Atoms], device="cpu", dtype=None) -> TensorBatch:
        import torch

        dtype = dtype or torch.float64
        counts = torch.as_tensor([len(a) for a in structures], dtype=torch.long)
        pos = np.concatenate([a.positions for a in structures]) if structures else np.zeros((0, 3))
        cells = np.stack([a.cell[:] for a in structures]) if structures else np.zeros((0, 3, 3))
        numbers = np.concatenate([a.numbers for a in structures]) if structures else np.zeros(0)
        return cls(
            positions=torch.as_tensor(pos, dtype=dtype, device=device),
            cells=torch.as_tensor(cells, dtype=dtype, device=device),
            numbers=torch.as_tensor(numbers, dtype=torch.long, device=device),
            batch=torch.repeat_interleave(torch.arange(len(counts)), counts).to(device),
            counts=counts.to(device),
        )

    def to_atoms(self) -> list[Atoms]:
        from ase import Atoms

        pos = self.positions.detach().cpu().numpy()
        cells = self.cells.detach().cpu().numpy()
        numbers = self.numbers.cpu().numpy()
        bounds = np.concatenate([[0], np.cumsum(self.counts.cpu().numpy())])
        return [
            Atoms(
                numbers=numbers[bounds[k] : bounds[k + 1]],
                positions=pos[bounds[k] : bounds[k + 1]],
                cell=cells[k],
                pbc=True,
            )
            for k in range(len(cells))
        ]


@dataclass(slots=True)
class Evaluation:
    """Energy ``[B]`` (eV), forces ``[N, 3]`` (eV/Å), stress ``[B, 3, 3]`` (eV/Å³, ASE's sign)."""

    energy: Any
    forces: Any
    stress: Any


def full3(stress) -> np.ndarray:
    """A 3×3 stress from ASE's Voigt 6-vector (xx, yy, zz, yz, xz, xy) or a 3×3."""
    s = np.asarray(stress, dtype=float)
    if s.shape == (3, 3):
        return s
    xx, yy, zz, yz, xz, xy = s
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def torch_device(model) -> str:
    """The device a model's tensors live on (``cpu`` for host models)."""
    return str(getattr(model, "device", "cpu") or "cpu")


def evaluate(model, batch: TensorBatch) -> Evaluation:
    """The model on a tensor batch, results on the batch's device in its dtype.

    Tensor models compute in place; host models go through ``predict`` on
    :class:`ase.Atoms` (one copy each way per call).
    """
    if hasattr(model, "evaluate"):
        return model.evaluate(batch)
    import torch

    preds = model.predict(batch.to_atoms())
    dev, dt = batch.positions.device, batch.positions.dtype
    n = batch.n_structures
    if len(preds) != n:
        raise RuntimeError(f"model {model.name} returned {len(preds)} predictions for {n}")
    energy = torch.as_tensor([p.energy for p in preds], dtype=dt, device=dev)
    forces = (
        torch.as_tensor(np.concatenate([p.forces for p in preds]), dtype=dt, device=dev)
        if n
        else batch.positions.new_zeros((0, 3))
    )
    stress = torch.as_tensor(
        np.stack([full3(p.stress) for p in preds]) if n else np.zeros((0, 3, 3)),
        dtype=dt,
        device=dev,
    )
    return Evaluation(energy, forces, stress)


def predict_via_tensors(model, structures: Sequence[Atoms], dtype=None) -> list:
    """:meth:`Model.predict` for a tensor model: one :func:`evaluate`, back to host arrays."""
    from hts.models.base import Prediction, voigt

    if not structures:
        return []
    b = TensorBatch.from_atoms(structures, torch_device(model), dtype)
    out = model.evaluate(b)
    energy = out.energy.detach().cpu().numpy().astype(float)
    forces = out.forces.detach().cpu().numpy().astype(float)
    stress = out.stress.detach().cpu().numpy().astype(float)
    bounds = np.concatenate([[0], np.cumsum([len(a) for a in structures])])
    return [
        Prediction(
            energy=float(energy[k]),
            forces=forces[bounds[k] : bounds[k + 1]],
            stress=voigt(stress[k]),
        )
        for k in range(len(structures))
    ]
