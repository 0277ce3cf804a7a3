"""What the teacher labels: sampled candidates, their relaxation paths, perturbations.

Science only (no engine, no files): :func:`label_chunk` — the task that fans
out over the site — relaxes a chunk with the teacher, keeping frames along the
path (a prefilter student must be right on the way down, not only at the
minimum), and labels rattled and strained copies of each relaxed structure;
:func:`on_policy_chunk` labels where a relaxing student goes instead.  Which
candidates are labelled is :mod:`hts.candidates.sampling`'s business;
:func:`held_out_system` keeps a share of chemical systems (or compositions) out of training.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hts.candidates.record import Candidate
from hts.stages.screen import predict_isolating

__all__ = [
    "Frame",
    "LabelResult",
    "isolated_atom_energies",
    "label_chunk",
    "on_policy_chunk",
    "point_chunk",
    "held_out_system",
]


@dataclass(slots=True)
class Frame:
    """One labelled structure: teacher energy (eV), forces (eV/Å), stress (eV/Å³, Voigt)."""

    candidate: str  # candidate id it came from
    kind: str  # "path" (along the relaxation), "rattle", "strain"
    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    energy: float
    forces: np.ndarray
    stress: np.ndarray
    # at the teacher's relaxed structure, when the teacher exposes them (SevenNet, MACE):
    # its per-atom energies (eV; they sum to ``energy``) and the features its readout reads
    energies: np.ndarray | None = None
    features: np.ndarray | None = None


@dataclass(slots=True)
class Relaxed:
    """The teacher's verdict on a sampled candidate, for the screening metrics."""

    id: str
    energy_per_atom: float = float("nan")
    converged: bool = False
    error: str = ""


@dataclass(slots=True)
class LabelResult:
    frames: list[Frame] = field(default_factory=list)
    relaxed: list[Relaxed] = field(default_factory=list)
    wall_s: float = 0.0
    model_version: str = ""


def held_out_system(chemsys: str, share: float, seed: int) -> bool:
    """Whether a chemical system is kept out of training (fixed per system and seed).

    Any name works alike: a space of one chemistry holds out compositions by
    formula (:attr:`hts.distill.context.DistillRun.by`).
    """
    u = int(hashlib.sha1(f"{seed}:{chemsys}".encode()).hexdigest()[:12], 16) / 16**12
    return u < share


def _strain(atoms, eps: np.ndarray):
    a = atoms.copy()
    a.set_cell(a.cell[:] @ (np.eye(3) + eps), scale_atoms=True)
    return a


def _perturbed(atoms, sampling, rng) -> list[tuple[str, object]]:
    out = []
    for _ in range(sampling.rattled):
        a = atoms.copy()
        a.positions += rng.normal(0.0, sampling.rattle_sigma, a.positions.shape)
        out.append(("rattle", a))
    for _ in range(sampling.strained):
        e = rng.uniform(-sampling.max_strain, sampling.max_strain, (3, 3))
        a = _strain(atoms, (e + e.T) / 2)
        a.positions += rng.normal(0.0, sampling.rattle_sigma / 2, a.positions.shape)
        out.append(("strain", a))
    return out


def _frame(cid: str, kind: str, atoms, p) -> Frame:
    return Frame(
        cid,
        kind,
        np.asarray(atoms.numbers, dtype=np.int64),
        np.array(atoms.positions),
        np.array(atoms.cell[:]),
        float(p.energy),
        np.asarray(p.forces, dtype=float),
        np.asarray(p.stress, dtype=float),
    )


def label_chunk(
    candidates: Sequence[Candidate], teacher, sampling, seed: int = 0, model=None
) -> LabelResult:
    """Relax a chunk with the teacher and label frames along the way and around the minimum.

    ``teacher`` is a :class:`hts.spec.ModelSpec`; a failing candidate is
    recorded with its reason and contributes no frames.
    """
    from hts.models import get_model
    from hts.stages.relax import relax_with

    if model is None:
        model = get_model(teacher)
    t0 = time.perf_counter()
    out = LabelResult(model_version=model.version)
    todo = []
    for c in candidates:
        why = c.error or model.unsupported(c.numbers)
        if why:
            out.relaxed.append(Relaxed(c.id, error=why))
        else:
            todo.append(c)
    outcomes = relax_with(
        model, [c.to_atoms() for c in todo], sampling.relax, teacher, trajectory=True
    )
    extra: list[tuple[str, str, object]] = []
    minima: list[tuple[Frame, object]] = []  # each candidate's last path frame, its minimum
    for c, o in zip(todo, outcomes, strict=True):
        if o.error or not o.frames:
            out.relaxed.append(Relaxed(c.id, error=o.error or "no teacher evaluation"))
            continue
        out.relaxed.append(Relaxed(c.id, o.energy / len(o.atoms), o.converged))
        picks = np.unique(
            np.round(np.linspace(0, len(o.frames) - 1, sampling.trajectory_snapshots)).astype(int)
        )
        for k in picks:
            pos, cell, p = o.frames[int(k)]
            a = o.atoms.copy()
            a.positions, a.cell = pos, cell
            out.frames.append(_frame(c.id, "path", a, p))
        minima.append((out.frames[-1], a))
        s = int(hashlib.sha1(f"{seed}:{c.id}".encode()).hexdigest()[:8], 16)
        for kind, a in _perturbed(o.atoms, sampling, np.random.default_rng(s)):
            extra.append((c.id, kind, a))
    _atomic_labels(model, minima, teacher.batch_size)
    if extra:
        preds = predict_isolating(model, [a for _, _, a in extra], teacher.batch_size)
        for (cid, kind, a), p in zip(extra, preds, strict=True):
            if p is not None:
                out.frames.append(_frame(cid, kind, a, p))
    out.wall_s = time.perf_counter() - t0
    return out


def _atomic_labels(model, minima: list[tuple[Frame, object]], batch_size: int) -> None:
    """Attach the teacher's per-atom energies and readout features to each minimum's frame.

    Labels that cost one forward pass without forces per candidate (~1 % of its
    relaxation) and teach a student how the energy splits over sites (Matin et
    al. 2025: students trained on teacher atomic energies) and what the
    teacher's representation of the relaxed structure is (feature matching,
    Ekström Kelvinius et al. 2023).  A teacher without them (CHGNet, an ASE
    calculator) leaves the frames as they are; so does a batch it fails on.
    """
    if not hasattr(model, "atomic"):
        return
    from hts.models.tensor import TensorBatch, torch_device

    for i in range(0, len(minima), max(batch_size, 1)):
        part = minima[i : i + batch_size]
        try:
            b = TensorBatch.from_atoms([a for _, a in part], torch_device(model))
            energies, features = model.atomic(b)
        except Exception:  # optional labels: the relaxed energies stand without them
            continue
        energies = energies.detach().cpu().numpy().astype(float)
        if features is not None:
            features = features.detach().float().cpu().numpy()
        offsets = np.concatenate([[0], np.cumsum([len(a) for _, a in part])])
        for k, (frame, _) in enumerate(part):
            e = energies[offsets[k] : offsets[k + 1]]
            if not np.isfinite(e).all():
                continue
            frame.energies = e
            if features is not None:
                frame.features = features[offsets[k] : offsets[k + 1]]


def point_chunk(candidates: Sequence[Candidate], teacher, model=None) -> LabelResult:
    """Teacher single points of unrelaxed candidates: ~40× cheaper than a relaxation each.

    A direct student's own readout learns them (kind ``point``): the chemistry of
    many more candidates than the relaxed labels can cover, in the representation
    the relaxed-energy readout shares.
    """
    from hts.models import get_model

    t_model = model or get_model(teacher)
    t0 = time.perf_counter()
    out = LabelResult(model_version=t_model.version)
    todo = [c for c in candidates if not (c.error or t_model.unsupported(c.numbers))]
    atoms = [c.to_atoms() for c in todo]
    for c, a, p in zip(
        todo, atoms, predict_isolating(t_model, atoms, teacher.batch_size), strict=True
    ):
        if p is not None:
            out.frames.append(_frame(c.id, "point", a, p))
    out.wall_s = time.perf_counter() - t0
    return out


def on_policy_chunk(
    candidates: Sequence[Candidate],
    student,
    relax,
    teacher,
    snapshots: int,
    student_model=None,
    teacher_model=None,
) -> LabelResult:
    """The student relaxes a chunk; the teacher labels structures it visited, its end point included.

    DAgger-style labels (Ross et al., AISTATS 2011): a relaxing student trained
    only on the teacher's paths meets states the teacher never visited and
    drifts into minima the teacher does not have; labelling where the student
    goes teaches it to come back.  ``student``/``teacher`` are
    :class:`hts.spec.ModelSpec`; frames are kind ``student``.
    """
    from hts.models import get_model
    from hts.stages.relax import relax_with

    s_model = student_model or get_model(student)
    t_model = teacher_model or get_model(teacher)
    t0 = time.perf_counter()
    out = LabelResult(model_version=t_model.version)
    todo = [c for c in candidates if not (c.error or s_model.unsupported(c.numbers))]
    outcomes = relax_with(s_model, [c.to_atoms() for c in todo], relax, student, trajectory=True)
    picked: list[tuple[str, object]] = []
    for c, o in zip(todo, outcomes, strict=True):
        if not o.frames:
            continue
        # evenly spaced over the student's path, weighted to its end: the minimum it reports
        ks = np.unique(np.round(np.linspace(0, len(o.frames) - 1, snapshots + 1)[1:]).astype(int))
        for k in ks:
            pos, cell, _ = o.frames[int(k)]
            a = o.atoms.copy()
            a.positions, a.cell = pos, cell
            picked.append((c.id, a))
    preds = predict_isolating(t_model, [a for _, a in picked], teacher.batch_size)
    for (cid, a), p in zip(picked, preds, strict=True):
        if p is not None:
            out.frames.append(_frame(cid, "student", a, p))
    out.wall_s = time.perf_counter() - t0
    return out


def isolated_atom_energies(elements: Sequence[str], teacher, box: float = 20.0, model=None) -> dict:
    """The teacher's energy of each element as a lone atom (no neighbour within its cutoff).

    Given to the student as its E0s, so the student's energy zero is the
    teacher's and only the interaction part is learned.
    """
    from ase import Atoms

    from hts.models import get_model

    if model is None:
        model = get_model(teacher)
    out = {}
    for el in elements:
        a = Atoms(el, positions=[(box / 2,) * 3], cell=np.eye(3) * box, pbc=True)
        try:
            e = float(model.predict([a])[0].energy)
        except Exception:
            e = float("nan")
        out[el] = e
    return out
