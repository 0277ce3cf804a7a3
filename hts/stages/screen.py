"""The MLIP stages: relax a chunk of candidates with a model and return records.

The prefilter (the fast student, every candidate) and the rescore stage (the
accurate teacher, the prefilter's survivors) are the same computation with a
different model and relaxation settings, so both run :func:`run_stage`.
Science only: this takes a batch and returns typed records.  It knows nothing
of Parsl, MPI or the store and runs serially in a test.  Hull scoring needs
every result so far, so it happens where the results meet (the driver), not
here.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hts.candidates.record import Candidate

__all__ = ["ChunkResult", "StageRecord", "predict_isolating", "run_stage", "screen_unit"]


@dataclass(slots=True)
class StageRecord:
    """One candidate's result of one stage (the typed record between stages)."""

    id: str
    status: str  # "ok" or "failed"
    reason: str = ""
    energy: float = float("nan")  # eV, total
    energy_per_atom: float = float("nan")
    converged: bool = False
    n_steps: int = 0
    time_s: float = 0.0
    # final pressure, GPa (positive under compression); NaN when unknown (direct, failed)
    pressure: float = float("nan")
    # the relaxed structure (the input one when the stage failed before relaxing)
    numbers: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    positions: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))


@dataclass(slots=True)
class ChunkResult:
    """What a worker sends back for a chunk: records plus where its time went."""

    index: int
    records: list[StageRecord]
    model_name: str
    model_version: str
    wall_s: float
    model_s: float
    # the candidates, when the task generated them itself (:func:`screen_unit`)
    candidates: list[Candidate] | None = None


def _rattled(c: Candidate, amplitude: float, seed: int):
    atoms = c.to_atoms()
    if amplitude > 0:
        # Seeded by campaign seed and candidate id: the same noise whatever chunk or worker.
        s = int(hashlib.sha1(f"{seed}:{c.id}".encode()).hexdigest()[:8], 16)
        atoms.positions += np.random.default_rng(s).normal(0.0, amplitude, atoms.positions.shape)
    return atoms


def run_stage(
    index: int, candidates: Sequence[Candidate], stage, seed: int = 0, model=None
) -> ChunkResult:
    """Relax a chunk with the stage's model; failed inputs become failed records.

    ``stage`` is a :class:`hts.spec.PrefilterStage` or :class:`hts.spec.RescoreStage`.  ``model`` may be passed in
    (tests, benchmarks); by default the worker's cached model is used.
    """
    from hts.models import get_model
    from hts.models.ase_calculator import require_stress
    from hts.stages.relax import relax_with

    if model is None:
        model = get_model(stage.model)  # loaded once per worker process; not this task's cost
    direct = getattr(stage, "direct", False)
    if stage.relax.cell and not direct:
        require_stress(model, "relax.cell is true")
    t0 = time.perf_counter()
    records: dict[str, StageRecord] = {}
    todo: list[Candidate] = []
    for c in candidates:
        reason = c.error or model.unsupported(c.numbers) or ""
        if reason:
            records[c.id] = StageRecord(
                c.id, "failed", reason, numbers=c.numbers, positions=c.positions, cell=c.cell
            )
        else:
            todo.append(c)
    if direct:
        outcomes = _direct(model, todo, stage.model.batch_size)
    else:
        outcomes = isolating(
            lambda part: relax_with(model, part, stage.relax, stage.model),
            [_rattled(c, stage.relax.rattle, seed) for c in todo],
            _failed_outcome,
        )
    model_s = 0.0
    for c, o in zip(todo, outcomes, strict=True):
        model_s += o.model_time_s
        a = o.atoms
        rec = StageRecord(
            c.id,
            "failed" if o.error else "ok",
            o.error,
            energy=o.energy,
            energy_per_atom=o.energy / len(a),
            converged=o.converged,
            n_steps=o.n_steps,
            time_s=o.model_time_s,
            pressure=o.pressure,
            numbers=np.asarray(a.numbers, dtype=np.int64),
            positions=np.array(a.positions),
            cell=np.array(a.cell[:]),
        )
        records[c.id] = rec
    wall = time.perf_counter() - t0
    # Each record carries its own model time plus an equal share of the rest.
    share = (wall - model_s) / max(len(candidates), 1)
    for rec in records.values():
        rec.time_s += share
    return ChunkResult(
        index=index,
        records=[records[c.id] for c in candidates],
        model_name=model.name,
        model_version=model.version,
        wall_s=wall,
        model_s=model_s,
    )


def screen_unit(
    index: int, source_json: str, base_dir: str, unit, stage, seed: int, limits
) -> ChunkResult:
    """Generate one unit of a worker-generated source, check its candidates, run the stage.

    The driver hands out a :class:`~hts.candidates.record.Unit` (a few integers)
    instead of candidates: building, ids and input checks happen here, in
    parallel, and the candidates come back with their records.  Duplicates
    within the unit are screened once; the driver drops those it has seen.
    """
    from hts.candidates import build_unit, check_candidate

    t0 = time.perf_counter()
    seen: set[str] = set()
    cands = []
    for c in build_unit(source_json, base_dir, seed, unit):
        c = check_candidate(c, limits.max_atoms, limits.min_distance)
        if c.id not in seen:
            seen.add(c.id)
            cands.append(c)
    generate_s = time.perf_counter() - t0
    result = run_stage(index, cands, stage, seed)
    result.candidates = cands
    result.wall_s += generate_s
    return result


def _direct(model, candidates: Sequence[Candidate], batch_size: int) -> list:
    """A direct student's verdicts: one prediction per candidate as given, no relaxation.

    The model predicts the teacher's relaxed energy from the unrelaxed
    structure, so its energy is the record's relaxed energy; the structure
    stays the input one (the teacher relaxes from there).
    """
    from hts.stages.relax import RelaxOutcome

    atoms = [c.to_atoms() for c in candidates]
    t0 = time.perf_counter()
    energies = energies_isolating(model, atoms, batch_size)
    share = (time.perf_counter() - t0) / max(len(atoms), 1)
    out = []
    for a, e in zip(atoms, energies, strict=True):
        if not np.isfinite(e):
            out.append(RelaxOutcome(a, error="model failed or gave a non-finite energy"))
        else:
            out.append(RelaxOutcome(a, float(e), True, 0, model_time_s=share))
    return out


def energies_isolating(model, atoms: Sequence, batch_size: int) -> np.ndarray:
    """Energies (eV) in batches, NaN for a structure that breaks the model (see :func:`isolating`).

    A model with an ``energies`` method (a trunk student) runs its forward pass
    alone, no forces: all a direct student's verdict needs.
    """
    if not hasattr(model, "energies"):
        preds = predict_isolating(model, atoms, batch_size)
        return np.array([np.nan if p is None else float(p.energy) for p in preds])

    def run(part: list) -> list:
        return [
            float(e)
            for i in range(0, len(part), batch_size)
            for e in model.energies(part[i : i + batch_size])
        ]

    return np.array(isolating(run, list(atoms), lambda a, err: float("nan")), dtype=float)


def isolating(run, items: list, fail) -> list:
    """``run(items)``; when the batch raises, halves run apart so a structure that breaks the
    model fails alone (``fail(item, error)`` is its outcome) and its batch mates go on.

    When every structure fails on its own, the model or the machine is broken, not the
    candidates: the first error is raised and the task fails (a resumed run tries again),
    never recorded as a verdict on them.  So is a lone structure's error, which cannot be told
    apart from a broken model.
    """
    try:
        return run(items)
    except Exception as first:
        if len(items) <= 1:
            raise
        outcomes, all_failed = _bisect(run, items, fail)
        if all_failed:
            raise first
        return outcomes


def _bisect(run, items: list, fail) -> tuple[list, bool]:
    try:
        return run(items), False
    except Exception as err:
        if len(items) == 1:
            return [fail(items[0], err)], True
        mid = len(items) // 2
        a, a_failed = _bisect(run, items[:mid], fail)
        b, b_failed = _bisect(run, items[mid:], fail)
        return a + b, a_failed and b_failed


def _failed_outcome(atoms, err: Exception):
    from hts.stages.relax import RelaxOutcome

    return RelaxOutcome(atoms, error=f"the model failed on this structure: {_why(err)}")


def _why(err: Exception) -> str:
    return f"{type(err).__name__}: {err}".replace("\n", " ")[:200]


def predict_isolating(model, atoms: Sequence, batch_size: int) -> list:
    """Predictions in batches; a structure that breaks the model (or gives NaN) is None, alone.

    As :func:`isolating`: when every structure of a batch breaks the model on its own, the
    model is broken, and the error is raised.
    """

    def run(part: list) -> list:
        return [
            p
            for i in range(0, len(part), batch_size)
            for p in model.predict(part[i : i + batch_size])
        ]

    out = []
    for p in isolating(run, list(atoms), lambda a, err: None):
        ok = p is not None and np.isfinite(p.energy) and np.isfinite(p.forces).all()
        out.append(p if ok and np.isfinite(p.stress).all() else None)
    return out
