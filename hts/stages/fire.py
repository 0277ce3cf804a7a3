"""FIRE on a batch of structures, positions and cell together, as torch tensors.

Every structure keeps its own FIRE state (Bitzek et al., PRL 97, 170201
(2006), with ASE's defaults and its Euler step) in one :class:`FireState` of
per-atom and per-structure tensors on the model's device; :func:`fire_step`
advances all of them in a few dozen vectorised operations, whatever the batch
size.  Structures leave and join the state between steps
(:meth:`FireState.select`, :meth:`FireState.join`): the in-flight batching of
:func:`hts.stages.relax.relax_batch`, which owns the loop and the model.

How the filter's forces are computed, per structure, with ``F`` the
deformation gradient from the input cell, ``V`` the volume, ``σ`` the stress
and ``c`` the atom count (ASE's default factors):

- atoms: the generalised coordinates are ``x = r F⁻ᵀ`` and their forces ``f F``;
- ``UnitCellFilter``: the cell coordinate is ``c F``, its force ``W F⁻ᵀ / c``
  with the virial ``W = −V σ``;
- ``FrechetCellFilter``: the coordinate is ``c log F`` and its force is the
  adjoint Fréchet derivative of ``exp`` at ``log F`` applied to ``W F⁻ᵀ``,
  ``L(log Fᵀ, W F⁻ᵀ) / c``.  ASE evaluates nine directional derivatives per
  step with scipy; the adjoint gives the same nine numbers at once, as the
  upper-right block of ``exp([[Aᵀ, G], [0, Aᵀ]])`` (one batched 6×6
  ``matrix_exp``; Higham, *Functions of Matrices*, §3.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms

__all__ = [
    "FireState",
    "deformation",
    "fire_step",
    "generalised_forces",
    "new_state",
    "segment_sum",
]

# FIRE constants as in ASE's FIRE (and the paper).
_DT0, _DTMAX, _NMIN, _FINC, _FDEC, _ASTART, _FA = 0.1, 1.0, 5, 1.1, 0.5, 0.1, 0.99


class FireState:
    """The in-flight structures: per-atom and per-structure tensors, and their outcome indices."""

    per_atom = ("x", "vx", "numbers")
    per_struct = ("u", "vu", "orig", "c", "dt", "a", "n_pos", "steps")

    def __init__(self, t: dict[str, Any], ids: list[int], counts: list[int]) -> None:
        self.t = t
        self.ids = ids
        self.counts = counts
        self._index()

    def _index(self) -> None:
        import torch

        dev = self.t["x"].device
        self.counts_t = torch.as_tensor(self.counts, dtype=torch.long, device=dev)
        self.batch = torch.repeat_interleave(
            torch.arange(len(self.counts), device=dev), self.counts_t
        )

    @property
    def n_atoms(self) -> int:
        return sum(self.counts)

    def select(self, keep: list[int]) -> FireState:
        """The structures at positions ``keep`` (a sub-list of range(len(ids)))."""
        import torch

        dev = self.t["x"].device
        ks = torch.as_tensor(keep, dtype=torch.long, device=dev)
        atom_mask = torch.zeros(len(self.ids), dtype=torch.bool, device=dev)
        atom_mask[ks] = True
        atom_mask = atom_mask[self.batch]
        t = {k: v[atom_mask] for k, v in self.t.items() if k in self.per_atom}
        t.update({k: v[ks] for k, v in self.t.items() if k in self.per_struct})
        return FireState(t, [self.ids[k] for k in keep], [self.counts[k] for k in keep])

    def join(self, other: FireState) -> FireState:
        import torch

        if not self.ids:
            return other
        if not other.ids:
            return self
        t = {k: torch.cat([self.t[k], other.t[k]]) for k in self.t}
        return FireState(t, self.ids + other.ids, self.counts + other.counts)


def new_state(structures: Sequence[Atoms], ids: list[int], cell_filter: str, device) -> FireState:
    """Structures joining the batch: at rest, at their own cell (``F = I``), FIRE's initial step."""
    import torch

    f64 = torch.float64
    pos = torch.as_tensor(np.concatenate([a.positions for a in structures]), dtype=f64)
    cells = torch.as_tensor(np.stack([a.cell[:] for a in structures]), dtype=f64)
    counts = [len(a) for a in structures]
    c = torch.as_tensor(counts, dtype=f64)
    b = len(structures)
    eye = torch.eye(3, dtype=f64).expand(b, 3, 3)
    # the starting cell is the reference: F = I; Frechet's coordinate c·log F = 0, the unit
    # filter's c·F (ASE's start in both; a constant offset does not change FIRE's path)
    u = torch.zeros((b, 3, 3), dtype=f64) if cell_filter == "frechet" else c[:, None, None] * eye
    t = {
        "x": pos,
        "vx": torch.zeros_like(pos),
        "numbers": torch.as_tensor(np.concatenate([a.numbers for a in structures])),
        "u": u.clone(),
        "vu": torch.zeros((b, 3, 3), dtype=f64),
        "orig": cells,
        "c": c,
        "dt": torch.full((b,), _DT0, dtype=f64),
        "a": torch.full((b,), _ASTART, dtype=f64),
        "n_pos": torch.zeros(b, dtype=torch.long),
        "steps": torch.zeros(b, dtype=torch.long),
    }
    t = {k: v.to(device) for k, v in t.items()}
    return FireState(t, ids, counts)


def deformation(s: FireState, cell: bool, cell_filter: str):
    """Deformation gradients ``F`` [B,3,3], the cells and the Cartesian positions."""
    import torch

    if not cell:
        return None, s.t["orig"], s.t["x"]
    u, c = s.t["u"], s.t["c"][:, None, None]
    f = torch.linalg.matrix_exp(u / c) if cell_filter == "frechet" else u / c
    ft = f.transpose(1, 2)
    cells = s.t["orig"] @ ft
    pos = torch.einsum("ni,nij->nj", s.t["x"], ft[s.batch])
    return f, cells, pos


def generalised_forces(s: FireState, f, cells, ev, cell: bool, cell_filter: str):
    """The filter's forces: on the atoms' coordinates ``[N,3]`` and on the cell's ``[B,3,3]``."""
    import torch

    if not cell:
        return ev.forces, None
    fx = torch.einsum("ni,nij->nj", ev.forces, f[s.batch])
    volume = torch.linalg.det(cells).abs()
    virial = -volume[:, None, None] * ev.stress
    grad = virial @ torch.linalg.inv(f.transpose(1, 2))  # W F⁻ᵀ
    c = s.t["c"][:, None, None]
    if cell_filter == "unit":
        return fx, grad / c
    a_t = (s.t["u"] / c).transpose(1, 2)
    m = torch.zeros((len(s.ids), 6, 6), dtype=a_t.dtype, device=a_t.device)
    m[:, :3, :3] = a_t
    m[:, 3:, 3:] = a_t
    m[:, :3, 3:] = grad
    return fx, torch.linalg.matrix_exp(m)[:, :3, 3:] / c


def segment_sum(values, batch, n: int):
    """Per-structure sums ``[n]`` of per-atom ``values``, ``batch[i]`` being atom i's structure."""
    import torch

    return torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, batch, values)


def fire_step(s: FireState, fx, fu, max_step: float, active) -> None:
    """One FIRE step (ASE's) for the structures where ``active`` is set, in place."""
    import torch

    t, batch, n = s.t, s.batch, len(s.ids)
    vx, vu = t["vx"], t["vu"]

    def per_struct(ax, au):  # Σ over a structure's atom rows (and cell rows)
        out = segment_sum((ax).sum(-1), batch, n)
        return out if au is None else out + au.sum((-1, -2))

    first = t["steps"] == 0  # ASE starts from zero velocity without the mixing test
    vf = per_struct(fx * vx, None if fu is None else fu * vu)
    ff = per_struct(fx * fx, None if fu is None else fu * fu)
    vv = per_struct(vx * vx, None if vu is None else vu * vu)
    up = (vf > 0) & ~first
    down = (vf <= 0) & ~first
    a = t["a"]
    mix = torch.where(up, a * torch.sqrt(vv) / torch.sqrt(torch.where(up, ff, 1.0)), 0.0)
    keep_v = torch.where(up, 1.0 - a, torch.where(down, 0.0, 1.0))
    grow = up & (t["n_pos"] > _NMIN)
    dt = torch.where(grow, torch.clamp(t["dt"] * _FINC, max=_DTMAX), t["dt"])
    dt = torch.where(down, dt * _FDEC, dt)
    t["a"] = torch.where(grow, a * _FA, torch.where(down, _ASTART, a))
    t["n_pos"] = torch.where(up, t["n_pos"] + 1, torch.where(down, 0, t["n_pos"]))
    t["dt"] = dt
    vx = keep_v[batch, None] * vx + mix[batch, None] * fx + dt[batch, None] * fx
    drx = dt[batch, None] * vx
    dr2 = segment_sum((drx * drx).sum(-1), batch, n)
    if fu is not None:
        vu = keep_v[:, None, None] * vu + mix[:, None, None] * fu + dt[:, None, None] * fu
        dru = dt[:, None, None] * vu
        dr2 = dr2 + (dru * dru).sum((-1, -2))
    scale = torch.where(dr2 > max_step**2, max_step / torch.sqrt(dr2), 1.0)
    scale = torch.where(active, scale, 0.0)
    t["x"] = t["x"] + scale[batch, None] * drx
    t["vx"] = torch.where(active[batch, None], vx, t["vx"])
    if fu is not None:
        t["u"] = t["u"] + scale[:, None, None] * dru
        t["vu"] = torch.where(active[:, None, None], vu, t["vu"])
    t["steps"] = t["steps"] + active.long()
