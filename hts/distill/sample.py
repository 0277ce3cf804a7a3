"""What the teacher labels: sampled candidates, their relaxation paths, perturbations.

Science only (no engine, no files): :func:`stratified` picks candidates
spread over prototypes and chemical systems, :func:`split_of` assigns whole
groups to train/valid/test, and :func:`label_chunk` — the task that fans out
over the site — relaxes a chunk with the teacher, keeping frames along the path
(a prefilter student must be right on the way down, not only at the minimum),
and labels rattled and strained copies of each relaxed structure.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from hts.candidates.record import Candidate

__all__ = [
    "Frame",
    "LabelResult",
    "isolated_atom_energies",
    "label_chunk",
    "split_of",
    "stratified",
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


def _group(c: Candidate, by: str) -> str:
    return c.prototype or "files" if by == "prototype" else c.chemsys


def stratified(candidates: Iterable[Candidate], n: int, seed: int) -> list[Candidate]:
    """Up to ``n`` candidates, round-robin over prototypes and, within each, over chemical systems.

    A uniform sample of a substitution space is dominated by its largest
    prototype and by a few element-rich systems; the student must see all.
    """
    rng = np.random.default_rng(seed)
    tree: dict[str, dict[str, list[Candidate]]] = defaultdict(lambda: defaultdict(list))
    for c in candidates:
        tree[c.prototype or "files"][c.chemsys].append(c)
    queues = []
    for proto in sorted(tree):
        systems = [tree[proto][k] for k in sorted(tree[proto])]
        for s in systems:
            rng.shuffle(s)
        order = rng.permutation(len(systems))
        # one candidate per chemical system per pass, systems in random order
        flat = [
            systems[i][depth]
            for depth in range(max(len(s) for s in systems))
            for i in order
            if depth < len(systems[i])
        ]
        queues.append(flat)
    picked: list[Candidate] = []
    depth = 0
    while len(picked) < n and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(picked) < n:
                picked.append(q[depth])
        depth += 1
    return picked


def split_of(c: Candidate, by: str, valid: float, test: float, seed: int) -> str:
    """``train``, ``valid`` or ``test``, fixed per group (chemical system or prototype)."""
    key = f"{seed}:{_group(c, by)}"
    u = int(hashlib.sha1(key.encode()).hexdigest()[:12], 16) / 16**12
    return "test" if u < test else "valid" if u < test + valid else "train"


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
        s = int(hashlib.sha1(f"{seed}:{c.id}".encode()).hexdigest()[:8], 16)
        for kind, a in _perturbed(o.atoms, sampling, np.random.default_rng(s)):
            extra.append((c.id, kind, a))
    if extra:
        preds = _predict_isolating(model, [a for _, _, a in extra], teacher.batch_size)
        for (cid, kind, a), p in zip(extra, preds, strict=True):
            if p is not None:
                out.frames.append(_frame(cid, kind, a, p))
    out.wall_s = time.perf_counter() - t0
    return out


def _predict_isolating(model, atoms: list, batch_size: int) -> list:
    """Predictions in batches; a structure that breaks the model (or gives NaN) is dropped alone."""
    out: list = []
    for i in range(0, len(atoms), batch_size):
        part = atoms[i : i + batch_size]
        try:
            got = model.predict(part)
        except Exception:
            got = []
            for a in part:
                try:
                    got.append(model.predict([a])[0])
                except Exception:
                    got.append(None)
        for p in got:
            ok = p is not None and np.isfinite(p.energy) and np.isfinite(p.forces).all()
            out.append(p if ok and np.isfinite(p.stress).all() else None)
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
