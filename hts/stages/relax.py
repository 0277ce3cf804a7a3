"""Batched FIRE relaxation of positions and cell, as tensors on the model's device.

Every structure keeps its own FIRE state (Bitzek et al., PRL 97, 170201
(2006), with ASE's defaults and its Euler step), and the cell is relaxed
through the same generalised coordinates as ASE's ``FrechetCellFilter`` (the
log of the deformation gradient, scaled by the atom count) or
``UnitCellFilter`` (the deformation gradient itself).  The whole batch lives in
torch tensors on the model's device — positions, cells, velocities, time
steps — and each step is one :func:`hts.models.tensor.evaluate` call and a
few dozen vectorised operations, whatever the batch size: no per-structure
Python, no trip to the host but one small read of which structures are done.
Converged structures leave the batch and waiting ones take their places
(in-flight batching).  Results equal ASE's ``FIRE(FrechetCellFilter(atoms))``
run one structure at a time (tested to 1e-6 eV/atom with EMT).

The integrator itself — the batched state, the filters' coordinates and
forces, one FIRE step — is :mod:`hts.stages.fire`; this module runs the loop
around it: filling the batch, evaluating the model, deciding who leaves.

On a CUDA device the batch is sized from memory: a probe measures the bytes
per atom of a forward and backward pass and the window is set to fill half the
free memory (``batch_atoms`` caps it); an out-of-memory error halves the
window and the same step is evaluated again in parts, so no candidate is lost.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from hts.stages.fire import FireState as _State
from hts.stages.fire import deformation as _deformation
from hts.stages.fire import fire_step as _fire_step
from hts.stages.fire import generalised_forces as _generalised_forces
from hts.stages.fire import new_state as _new_state
from hts.stages.fire import segment_sum as _segment_sum

if TYPE_CHECKING:
    from ase import Atoms

    from hts.models.base import Model

__all__ = ["RelaxOutcome", "relax_batch", "relax_with"]

log = logging.getLogger("hts.stages")

_EV_A3_TO_GPA = 160.21766208


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
    # final pressure, GPa (−trace σ / 3; positive under compression); NaN if never evaluated
    pressure: float = float("nan")


class _Window:
    """How many atoms may be in flight: set by a memory probe on CUDA, halved on OOM."""

    _probed: dict[tuple[int, str], float] = {}  # bytes per atom, per (model, device)

    def __init__(self, model, device, batch_atoms: int | None) -> None:
        self.atoms = batch_atoms  # None: no atom limit
        self.cuda = str(device).startswith("cuda")
        self.model = model
        self.device = device
        self.probe_needed = self.cuda and batch_atoms is None

    def probe(self, evaluate_part, n_atoms: int) -> None:
        """Bytes per atom of one evaluation of ``n_atoms`` atoms; the window fills half the free memory."""
        import torch

        self.probe_needed = False
        key = (id(self.model), str(self.device))
        per_atom = self._probed.get(key)
        if per_atom is None:
            torch.cuda.synchronize(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            evaluate_part()
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            per_atom = max((peak - base) / max(n_atoms, 1), 1024.0)
            self._probed[key] = per_atom
        free, _ = torch.cuda.mem_get_info(self.device)
        self.atoms = max(int(0.5 * free / per_atom), 1)
        log.info(
            "relaxation window on %s: %d atoms in flight (%.0f kB per atom measured, %.1f GB free)",
            self.device,
            self.atoms,
            per_atom / 1e3,
            free / 1e9,
        )

    def halve(self, in_flight: int) -> None:
        self.atoms = max(min(self.atoms or in_flight, in_flight) // 2, 1)
        log.warning("out of device memory: relaxation window halved to %d atoms", self.atoms)


def _is_oom(err: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(err, oom) or "out of memory" in str(err).lower()


def relax_batch(
    model: Model,
    structures: Sequence[Atoms],
    *,
    fmax: float,
    max_steps: int,
    max_step: float,
    cell: bool,
    cell_filter: str = "frechet",
    batch_size: int | None = 64,
    batch_atoms: int | None = None,
    trajectory: bool = False,
    pressure_tol: float | None = None,
) -> list[RelaxOutcome]:
    """Relax every structure; one failing structure never fails the others.

    In-flight batching: at most ``batch_size`` structures (None: no limit) and
    ``batch_atoms`` atoms (None: no limit on a CPU, measured on CUDA) are in
    the batch; each iteration evaluates the whole batch at once and takes one
    FIRE step for each member, and a structure that converges, runs out of
    steps or fails leaves at once, its place taken by the next waiting
    structure.  A structure converges when the largest force on the filter's
    coordinates (atoms and cell) is below ``fmax`` and, with ``pressure_tol``
    (GPa), its pressure is within that of zero.  If an evaluation raises, the
    batch's structures are evaluated one by one so the culprit is isolated and
    marked failed; when every one of them fails alone the model is broken and
    the error is raised.  With ``trajectory`` every evaluated step is kept in
    ``frames`` (distillation samples the relaxation path, not only its end).
    """
    import torch

    from hts.models.tensor import TensorBatch, evaluate, torch_device

    device = torch.device(torch_device(model))
    outcomes = [RelaxOutcome(atoms=a.copy(), frames=[] if trajectory else None) for a in structures]
    for o in outcomes:
        o.atoms.calc = None
    waiting = deque(range(len(outcomes)))
    window = _Window(model, device, batch_atoms)
    cap = batch_size or len(outcomes) or 1
    state: _State | None = None
    ptol = None if pressure_tol is None else pressure_tol / _EV_A3_TO_GPA

    def refill(state: _State | None) -> _State | None:
        n_in = state.n_atoms if state else 0
        k_in = len(state.ids) if state else 0
        take: list[int] = []
        while waiting and k_in + len(take) < cap:
            n = len(outcomes[waiting[0]].atoms)
            if window.atoms is not None and (n_in or take) and n_in + n > window.atoms:
                break
            take.append(waiting.popleft())
            n_in += n
        if not take:
            return state
        new = _new_state([outcomes[k].atoms for k in take], take, cell_filter, device)
        return new if state is None else state.join(new)

    def evaluate_parts(batch: TensorBatch, counts: list[int]):
        """The model on the batch, in parts of at most ``window.atoms`` atoms."""
        limit = window.atoms
        if limit is None or sum(counts) <= limit:
            return evaluate(model, batch)
        parts, start, n = [], 0, 0
        bounds = []
        for k, c in enumerate(counts):
            if k > start and n + c > limit:
                bounds.append((start, k))
                start, n = k, 0
            n += c
        bounds.append((start, len(counts)))
        offsets = np.concatenate([[0], np.cumsum(counts)])
        for s0, s1 in bounds:
            a0, a1 = int(offsets[s0]), int(offsets[s1])
            sub = TensorBatch(
                batch.positions[a0:a1],
                batch.cells[s0:s1],
                batch.numbers[a0:a1],
                batch.batch[a0:a1] - s0,
                batch.counts[s0:s1],
            )
            parts.append(evaluate(model, sub))
        from hts.models.tensor import Evaluation

        return Evaluation(
            torch.cat([p.energy for p in parts]),
            torch.cat([p.forces for p in parts]),
            torch.cat([p.stress for p in parts]),
        )

    while True:
        if window.probe_needed and waiting:
            first = [outcomes[k].atoms for k in list(waiting)[: max(1, min(cap, 64))]]
            probe = TensorBatch.from_atoms(first, device)
            window.probe(lambda p=probe: evaluate(model, p), int(probe.counts.sum()))
        state = refill(state)
        if state is None or not state.ids:
            break
        f, cells, pos = _deformation(state, cell, cell_filter)
        tb = TensorBatch(pos, cells, state.t["numbers"], state.batch, state.counts_t)
        failed: dict[int, str] = {}
        t0 = time.perf_counter()
        while True:
            try:
                ev = evaluate_parts(tb, state.counts)
                break
            except Exception as err:
                if _is_oom(err):
                    if window.cuda:
                        torch.cuda.empty_cache()
                    if len(state.ids) > 1 and (window.atoms or 0) != 1:
                        window.halve(state.n_atoms)
                        continue
                ev = _one_by_one(model, tb, state, failed, err)
                break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        share = (time.perf_counter() - t0) / len(state.ids)
        # per structure: finite results, converged, out of steps
        finite = torch.isfinite(ev.energy)
        if cell:  # a calculator without stress gives NaN: fine while the cell stays fixed
            finite &= torch.isfinite(ev.stress).all((-1, -2))
        finite &= (
            _segment_sum((~torch.isfinite(ev.forces)).any(-1).double(), state.batch, len(state.ids))
            == 0
        )
        fx, fu = _generalised_forces(state, f, cells, ev, cell, cell_filter)
        f2 = torch.zeros(len(state.ids), dtype=fx.dtype, device=device).scatter_reduce(
            0, state.batch, (fx * fx).sum(-1), reduce="amax", include_self=True
        )
        if fu is not None:
            f2 = torch.maximum(f2, (fu * fu).sum(-1).amax(-1))
        pressure = -torch.diagonal(ev.stress, dim1=-2, dim2=-1).sum(-1) / 3.0
        done = f2 < fmax**2
        if ptol is not None and cell:
            done &= pressure.abs() <= ptol
        out_of_steps = state.t["steps"] >= max_steps
        leave = done | out_of_steps | ~finite
        # the one read back to the host per step
        leave_h, done_h, finite_h = torch.stack([leave, done, finite]).cpu().numpy()
        for k, msg in failed.items():
            leave_h[k] = True
            finite_h[k] = True  # its error is already set
            outcomes[state.ids[k]].error = msg
        energy_h = pressure_h = None
        want = trajectory or leave_h.any()
        if want:
            energy_h = ev.energy.detach().cpu().numpy()
            pressure_h = pressure.detach().cpu().numpy() * _EV_A3_TO_GPA
        if trajectory:
            _record_frames(outcomes, state, pos, cells, ev, failed)
        for k, oid in enumerate(state.ids):
            o = outcomes[oid]
            o.model_time_s += share
            o.n_steps = int(state.t["steps"][k]) if leave_h[k] else o.n_steps
            if not leave_h[k]:
                continue
            if k in failed:
                continue
            if not finite_h[k]:
                o.error = f"model returned non-finite energy/forces/stress at step {o.n_steps}"
                continue
            o.energy = float(energy_h[k])
            o.pressure = float(pressure_h[k])
            o.converged = bool(done_h[k])
        if leave_h.any():
            _write_back(outcomes, state, np.flatnonzero(leave_h), pos, cells, failed)
        keep = np.flatnonzero(~leave_h).tolist()
        if keep:
            rest = state.select(keep)
            sel = torch.as_tensor(keep, device=device)
            mask = torch.zeros(len(state.ids), dtype=torch.bool, device=device)
            mask[sel] = True
            amask = mask[state.batch]
            _fire_step(
                rest,
                fx[amask],
                None if fu is None else fu[sel],
                max_step,
                torch.ones(len(keep), dtype=torch.bool, device=device),
            )
            state = rest
        else:
            state = None
    return outcomes


def _one_by_one(model, tb, state: _State, failed: dict[int, str], batch_error: Exception):
    """Each structure alone: the ones that break the model are marked; all failing re-raises."""
    import torch

    from hts.models.tensor import Evaluation, TensorBatch, evaluate

    offsets = np.concatenate([[0], np.cumsum(state.counts)])
    energies, forces, stresses = [], [], []
    for k in range(len(state.ids)):
        a0, a1 = int(offsets[k]), int(offsets[k + 1])
        sub = TensorBatch(
            tb.positions[a0:a1],
            tb.cells[k : k + 1],
            tb.numbers[a0:a1],
            torch.zeros(a1 - a0, dtype=torch.long, device=tb.positions.device),
            tb.counts[k : k + 1],
        )
        try:
            ev = evaluate(model, sub)
        except Exception as err:  # this structure alone breaks the model
            if _is_oom(err):
                failed[k] = f"does not fit in the device's memory alone ({a1 - a0} atoms)"
            else:
                failed[k] = f"model failed: {type(err).__name__}: {err}"[:300]
            ev = Evaluation(
                tb.positions.new_full((1,), float("nan")),
                tb.positions.new_full((a1 - a0, 3), float("nan")),
                tb.positions.new_full((1, 3, 3), float("nan")),
            )
        energies.append(ev.energy)
        forces.append(ev.forces)
        stresses.append(ev.stress)
    if len(failed) == len(state.ids) > 1:  # every one of them: the model is broken, not they
        raise batch_error
    return Evaluation(torch.cat(energies), torch.cat(forces), torch.cat(stresses))


def _write_back(outcomes, state: _State, leaving, pos, cells, failed) -> None:
    """Leaving structures take the geometry of their last evaluation."""
    offsets = np.concatenate([[0], np.cumsum(state.counts)])
    pos_h = pos.detach().cpu().numpy()
    cells_h = cells.detach().cpu().numpy()
    for k in leaving:
        o = outcomes[state.ids[k]]
        if k in failed:
            continue
        o.atoms.set_cell(cells_h[k], scale_atoms=False)
        o.atoms.positions = pos_h[offsets[k] : offsets[k + 1]]


def _record_frames(outcomes, state: _State, pos, cells, ev, failed) -> None:
    from hts.models.base import Prediction, voigt

    offsets = np.concatenate([[0], np.cumsum(state.counts)])
    pos_h = pos.detach().cpu().numpy()
    cells_h = cells.detach().cpu().numpy()
    e = ev.energy.detach().cpu().numpy()
    f = ev.forces.detach().cpu().numpy()
    s = ev.stress.detach().cpu().numpy()
    for k, oid in enumerate(state.ids):
        if k in failed or not np.isfinite(e[k]):
            continue
        a0, a1 = offsets[k], offsets[k + 1]
        p = Prediction(float(e[k]), f[a0:a1].astype(float), voigt(s[k]))
        outcomes[oid].frames.append((pos_h[a0:a1].copy(), cells_h[k].copy(), p))


def relax_with(
    model: Model,
    structures: Sequence[Atoms],
    settings,
    model_spec,
    trajectory: bool = False,
) -> list[RelaxOutcome]:
    """:func:`relax_batch` with a campaign's :class:`hts.spec.RelaxSettings`.

    The batch limits come from the stage's :class:`hts.spec.ModelSpec`:
    ``batch_atoms`` caps the atoms in flight; ``batch_size`` caps the
    structures, except on a CUDA device where it was left at its default —
    there the window is sized from the device's memory.
    """
    from hts.models.tensor import torch_device

    batch_size: int | None = model_spec.batch_size
    if torch_device(model).startswith("cuda") and "batch_size" not in model_spec.model_fields_set:
        batch_size = None
    return relax_batch(
        model,
        structures,
        fmax=settings.fmax,
        max_steps=settings.max_steps,
        max_step=settings.max_step,
        cell=settings.cell,
        cell_filter=settings.cell_filter,
        batch_size=batch_size,
        batch_atoms=model_spec.batch_atoms,
        trajectory=trajectory,
        pressure_tol=getattr(settings, "pressure_tol", None),
    )
