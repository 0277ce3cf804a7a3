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
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms

    from hts.models.base import Model

__all__ = ["RelaxOutcome", "relax_batch", "relax_with"]

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
    # (positions, cell, prediction) at every evaluated step when asked for a trajectory
    frames: list | None = None


_recent: tuple = ()


def _memo(kind: str, a: np.ndarray, compute):
    """``compute(a)``, remembered for the last four (kind, matrix) pairs.

    One filter step works on the same few 3×3 matrices several times (the
    deformation gradient in ``get_forces`` and again in ``get_positions``, its
    logarithm for the nine Fréchet derivatives).  The tuple is replaced whole,
    so threads sharing it at worst recompute.
    """
    global _recent
    key = (kind, a.tobytes())
    recent = _recent
    for k, out in recent:
        if k == key:
            return out
    out = compute(a)  # may itself remember something (the kernel needs an eig)
    _recent = ((key, out), *_recent[:3])
    return out


def _eig3(a: np.ndarray):
    """Eigendecomposition ``(w, v, v⁻¹)`` of a 3×3 matrix; None if (nearly) defective."""
    return _memo("eig", a, _decompose)


def _decompose(a: np.ndarray):
    w, v = np.linalg.eig(a)
    try:
        vi = np.linalg.inv(v)
    except np.linalg.LinAlgError:
        return None
    # a large condition number (1-norm): the closed forms lose accuracy, scipy takes over
    if np.abs(v).sum(0).max() * np.abs(vi).sum(0).max() > 1e6:
        return None
    return w, v, vi


def _logm3(a: np.ndarray) -> np.ndarray:
    """Matrix logarithm of a 3×3 deformation gradient via its eigendecomposition."""
    from scipy.linalg import logm

    d = _eig3(a)
    if d is None or np.any(np.abs(d[0]) < 1e-12):
        return logm(a)
    w, v, vi = d
    return ((v * np.log(w.astype(complex))) @ vi).real


def _expm3(a: np.ndarray) -> np.ndarray:
    from scipy.linalg import expm

    d = _eig3(a)
    if d is None:
        return expm(a)
    w, v, vi = d
    return ((v * np.exp(w)) @ vi).real


def _frechet_kernel(a: np.ndarray):
    """``(V, V⁻¹, G)``: eigenvectors and the divided differences of ``exp`` over the eigenvalues."""
    d = _eig3(a)
    if d is None:
        return None
    w, v, vi = d
    ew = np.exp(w)
    dw = w[:, None] - w[None, :]
    same = np.abs(dw) < 1e-8
    g = np.where(same, ew[:, None], (ew[:, None] - ew[None, :]) / np.where(same, 1.0, dw))
    return v, vi, g


def _expm_frechet3(a: np.ndarray, e: np.ndarray, method=None, compute_expm: bool = True):
    """Fréchet derivative of expm at ``a`` in direction ``e`` (Daleckii–Krein formula).

    The filter asks for nine directions at one ``a`` per step; the kernel is
    remembered, so each further direction is four 3×3 products.
    """
    kernel = _memo("frechet", a, _frechet_kernel)
    if kernel is None:
        from scipy.linalg import expm_frechet

        return expm_frechet(a, e, method=method, compute_expm=compute_expm)
    v, vi, g = kernel
    deriv = (v @ (g * (vi @ e @ v)) @ vi).real
    return (_expm3(a), deriv) if compute_expm else deriv


_slow_cell_math_warned = False


def _fast_cell_math(handle) -> bool:
    """Swap scipy's general logm/expm/expm_frechet in ASE's cell filter for 3×3 closed forms.

    scipy's versions cost ~3 ms (logm) and ~0.3 ms (each of 9 expm_frechet calls)
    per step, more than a small MLIP's forward pass; the eigendecomposition forms
    agree to 1e-11 and take ~0.1 ms.  Defective matrices fall back to scipy.  The
    hook is ASE 3.29's private ``CellUtility`` (``handle._utility``); on an ASE
    without it the filter keeps scipy's (same results, relaxations ~30x slower),
    and that is logged once per process, naming the ASE version, rather than
    passing in silence.  Returns whether the swap was made.
    """
    global _slow_cell_math_warned
    util = getattr(handle, "_utility", None)
    if util is not None and all(hasattr(util, k) for k in ("logm", "expm", "expm_frechet")):
        util.logm, util.expm, util.expm_frechet = _logm3, _expm3, _expm_frechet3
        return True
    if not _slow_cell_math_warned:
        _slow_cell_math_warned = True
        import logging

        import ase

        logging.getLogger("hts.stages").warning(
            "ASE %s: %s has no CellUtility (_utility with logm/expm/expm_frechet) to give "
            "closed-form 3x3 cell math; cell relaxations use scipy's and run ~30x slower "
            "(same results). hts's fast path is written against ASE 3.29.",
            ase.__version__,
            type(handle).__name__,
        )
    return False


class _Frozen:
    """Hands the filter one prediction, set just before use.

    ASE's SinglePointCalculator would compare the atoms against a stored copy on
    every access; with cheap potentials that comparison cost more than the model.
    """

    __slots__ = ("p",)

    def __init__(self, p) -> None:
        self.p = p

    def get_potential_energy(self, atoms=None, force_consistent=False):
        return self.p.energy

    def get_forces(self, atoms=None):
        return self.p.forces.copy()

    def get_stress(self, atoms=None):
        return self.p.stress.copy()


@dataclass(slots=True)
class _Fire:
    vel: np.ndarray | None = None
    dt: float = _DT0
    a: float = _ASTART
    n_pos: int = 0

    def step(self, x: np.ndarray, f: np.ndarray, maxstep: float) -> np.ndarray:
        if self.vel is None:
            self.vel = np.zeros_like(x)
        else:
            vf = float(np.vdot(f, self.vel))
            if vf > 0.0:
                self.vel = (1.0 - self.a) * self.vel + self.a * f / np.sqrt(
                    np.vdot(f, f)
                ) * np.sqrt(np.vdot(self.vel, self.vel))
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
    batch_atoms: int | None = None,
    trajectory: bool = False,
) -> list[RelaxOutcome]:
    """Relax every structure; one failing structure never fails the others.

    In-flight batching: at most ``batch_size`` structures (and, when given,
    ``batch_atoms`` atoms) are in the batch; each iteration evaluates the whole
    batch in one :meth:`Model.predict` call and takes one FIRE step for each
    member, and a structure that converges, runs out of steps or fails leaves at
    once, its place taken by the next waiting structure.  The model thus sees
    full batches until the last structures, whatever the spread in steps.  If a
    batch fails, its structures are retried one by one so the culprit is
    isolated and marked failed.  With ``trajectory`` every evaluated step is kept
    in ``frames`` (distillation samples the relaxation path, not only its end).
    """
    import time
    from collections import deque

    from ase.filters import FrechetCellFilter, UnitCellFilter

    make_filter = {"frechet": FrechetCellFilter, "unit": UnitCellFilter}[cell_filter]
    outcomes = [RelaxOutcome(atoms=a.copy(), frames=[] if trajectory else None) for a in structures]
    handles: list = [None] * len(outcomes)
    fire: list = [None] * len(outcomes)
    waiting = deque(range(len(outcomes)))
    active: list[int] = []
    budget = batch_atoms or 0
    while active or waiting:
        atoms_in = sum(len(outcomes[k].atoms) for k in active)
        while waiting and len(active) < batch_size:
            k = waiting[0]
            n = len(outcomes[k].atoms)
            if budget and active and atoms_in + n > budget:
                break
            waiting.popleft()
            h = make_filter(outcomes[k].atoms) if cell else outcomes[k].atoms
            if cell:
                _fast_cell_math(h)
            handles[k], fire[k] = h, _Fire()
            active.append(k)
            atoms_in += n
        preds: dict[int, object] = {}
        t0 = time.perf_counter()
        try:
            preds.update(
                zip(active, model.predict([outcomes[k].atoms for k in active]), strict=True)
            )
        except Exception as batch_error:
            failed = 0
            for k in active:
                try:
                    preds[k] = model.predict([outcomes[k].atoms])[0]
                except Exception as err:  # this structure alone breaks the model
                    outcomes[k].error = f"model failed: {type(err).__name__}: {err}"[:300]
                    failed += 1
            if failed == len(active) > 1:  # every one of them: the model is broken, not they
                raise batch_error
        dt = time.perf_counter() - t0
        still = []
        for k in active:
            o = outcomes[k]
            o.model_time_s += dt / len(active)
            if o.error:
                continue
            p = preds[k]
            if not (
                np.isfinite(p.energy)
                and np.all(np.isfinite(p.forces))
                and np.all(np.isfinite(p.stress))
            ):
                o.error = f"model returned non-finite energy/forces/stress at step {o.n_steps}"
                continue
            o.atoms.calc = _Frozen(p)
            o.energy = float(p.energy)
            if o.frames is not None:
                o.frames.append((o.atoms.positions.copy(), o.atoms.cell[:].copy(), p))
            h = handles[k]
            f = np.asarray(h.get_forces())
            if float((f**2).sum(axis=1).max()) < fmax**2:
                o.converged = True
                continue
            if o.n_steps >= max_steps:
                continue
            x = np.asarray(h.get_positions())
            h.set_positions(fire[k].step(x.reshape(-1), f.reshape(-1), max_step).reshape(x.shape))
            o.n_steps += 1
            still.append(k)
        for k in set(active) - set(still):  # done: free its filter and optimiser state
            handles[k] = fire[k] = None
        active = still
    for o in outcomes:
        o.atoms.calc = None
    return outcomes


def relax_with(
    model: Model,
    structures: Sequence[Atoms],
    settings,
    model_spec,
    trajectory: bool = False,
) -> list[RelaxOutcome]:
    """:func:`relax_batch` with a campaign's :class:`hts.spec.RelaxSettings`.

    The batch limits (``batch_size`` structures, ``batch_atoms`` atoms) come
    from the stage's :class:`hts.spec.ModelSpec`.
    """
    return relax_batch(
        model,
        structures,
        fmax=settings.fmax,
        max_steps=settings.max_steps,
        max_step=settings.max_step,
        cell=settings.cell,
        cell_filter=settings.cell_filter,
        batch_size=model_spec.batch_size,
        batch_atoms=model_spec.batch_atoms,
        trajectory=trajectory,
    )
