"""Batched FIRE relaxation of positions and cell.

Every structure keeps its own FIRE state (Bitzek et al., PRL 97, 170201
(2006), with ASE's defaults and Euler step), but each step evaluates all
still-active structures in one :meth:`Model.predict` call, so a model that
batches sees the whole batch at once.  Cell degrees of freedom go through ASE's
``FrechetCellFilter`` (or ``UnitCellFilter``), the same generalised coordinates a
plain ``FIRE(FrechetCellFilter(atoms)).run(fmax)`` uses; converged structures leave
the batch.  Results therefore match the one-by-one ASE loop to numerical noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms

    from hts.models.base import Model

__all__ = ["RelaxOutcome", "relax_batch"]

# FIRE constants as in ASE's FIRE (and the paper).
_DT0, _DTMAX, _NMIN, _FINC, _FDEC, _ASTART, _FA = 0.1, 1.0, 5, 1.1, 0.5, 0.1, 0.99


@dataclass(slots=True)
class RelaxOutcome:
    atoms: Atoms
    energy: float = float("nan")
    converged: bool = False
    n_steps: int = 0
    error: str = ""
    model_time_s: float = 0.0


@dataclass(slots=True)
class _Fire:
    vel: np.ndarray | None = None
    dt: float = _DT0
    a: float = _ASTART
    n_pos: int = 0
    extra: dict = field(default_factory=dict)

    def step(self, x: np.ndarray, f: np.ndarray, maxstep: float) -> np.ndarray:
        if self.vel is None:
            self.vel = np.zeros_like(x)
        else:
            vf = float(np.vdot(f, self.vel))
            if vf > 0.0:
                self.vel = (1.0 - self.a) * self.vel + self.a * f / np.sqrt(np.vdot(f, f)) * np.sqrt(
                    np.vdot(self.vel, self.vel)
                )
                if self.n_pos > _NMIN:
                    self.dt = min(self.dt * _FINC, _DTMAX)
                    self.a *= _FA
                self.n_pos += 1
            else:
                self.vel[:] = 0.0
                self.a = _ASTART
                self.dt *= _FDEC
                self.n_pos = 0
        self.vel += self.dt * f
        dr = self.dt * self.vel
        norm = float(np.sqrt(np.vdot(dr, dr)))
        if norm > maxstep:
            dr *= maxstep / norm
        return x + dr


def relax_batch(
    model: Model,
    structures: Sequence[Atoms],
    *,
    fmax: float,
    max_steps: int,
    max_step: float,
    cell: bool,
    cell_filter: str = "frechet",
    batch_size: int = 64,
) -> list[RelaxOutcome]:
    """Relax every structure; one failing structure never fails the others.

    Each iteration predicts the active structures in slices of ``batch_size``
    (the model may split further).  If a slice fails, its structures are
    retried one by one so the culprit is isolated and marked failed.
    """
    import time

    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.filters import FrechetCellFilter, UnitCellFilter

    make_filter = {"frechet": FrechetCellFilter, "unit": UnitCellFilter}[cell_filter]
    outcomes = [RelaxOutcome(atoms=a.copy()) for a in structures]
    handles = [make_filter(o.atoms) if cell else o.atoms for o in outcomes]
    fire = [_Fire() for _ in outcomes]
    active = list(range(len(outcomes)))
    step = 0
    while active:
        preds: dict[int, object] = {}
        for start in range(0, len(active), batch_size):
            part = active[start : start + batch_size]
            t0 = time.perf_counter()
            try:
                got = model.predict([outcomes[k].atoms for k in part])
                preds.update(zip(part, got, strict=True))
            except Exception:
                for k in part:
                    try:
                        preds[k] = model.predict([outcomes[k].atoms])[0]
                    except Exception as err:  # this structure alone breaks the model
                        outcomes[k].error = f"model failed: {type(err).__name__}: {err}"[:300]
            dt = time.perf_counter() - t0
            for k in part:
                outcomes[k].model_time_s += dt / len(part)
        still = []
        for k in active:
            o = outcomes[k]
            if o.error:
                continue
            p = preds[k]
            if not (np.isfinite(p.energy) and np.all(np.isfinite(p.forces)) and np.all(np.isfinite(p.stress))):
                o.error = f"model returned non-finite energy/forces/stress at step {step}"
                continue
            o.atoms.calc = SinglePointCalculator(o.atoms, energy=p.energy, forces=p.forces, stress=p.stress)
            o.energy = float(p.energy)
            h = handles[k]
            f = np.asarray(h.get_forces())
            if float((f**2).sum(axis=1).max()) < fmax**2:
                o.converged = True
                continue
            if step >= max_steps:
                continue
            x = np.asarray(h.get_positions())
            h.set_positions(fire[k].step(x.reshape(-1), f.reshape(-1), max_step).reshape(x.shape))
            o.n_steps += 1
            still.append(k)
        active = still
        step += 1
    for o in outcomes:
        o.atoms.calc = None
    return outcomes
