"""How much faster the student is than its teacher, timed as the funnel calls each.

Both models run in one process, alternately, on the same cells, so the ratio
does not depend on what else the machine was doing while one of them ran.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

__all__ = ["candidate_cost", "speed_cells", "speed_ratio"]


def candidate_cost(
    teacher,
    teacher_spec,
    relax,
    student,
    student_spec,
    candidates: Sequence,
    direct: bool,
    student_relax=None,
    repeats: int = 3,
) -> dict:
    """Seconds per candidate of the student as the prefilter screens it, and of a teacher relaxation.

    What the funnel trades: the student's verdict on a candidate as generated
    (one forward pass for a direct student, its own relaxation otherwise)
    against the teacher relaxing the same candidate with the rescore stage's
    settings.  Measured in one process on the same candidates; the student
    (fast, so noisier) is timed ``repeats`` times and its median taken.
    """
    from hts.stages.relax import relax_with
    from hts.stages.screen import energies_isolating

    atoms = [c.to_atoms() if hasattr(c, "to_atoms") else c for c in candidates]
    t0 = time.perf_counter()
    relax_with(teacher, atoms, relax, teacher_spec)
    t_teacher = (time.perf_counter() - t0) / len(atoms)

    def student_pass() -> None:
        if direct:
            energies_isolating(student, atoms, student_spec.batch_size)
        else:
            relax_with(student, atoms, student_relax, student_spec)

    student_pass()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        student_pass()
        times.append((time.perf_counter() - t0) / len(atoms))
    t_student = float(np.median(times))
    return {
        "n_candidates": len(atoms),
        "teacher_relaxation_s_per_candidate": t_teacher,
        "student_s_per_candidate": t_student,
        "ratio_per_candidate": t_teacher / t_student,
    }


def speed_ratio(teacher, student, cells: Sequence, repeats: int = 3) -> dict:
    """Seconds per structure of each model on the same cells, measured alternately in one process.

    The student is timed as the prefilter calls it (its batch size) and one
    structure per call; the teacher as the rescore stage calls it.
    """
    cells = list(cells)
    teacher.predict(cells[:1])  # warm-up: lazy initialisation, first-call allocation
    student.predict(cells[:1])
    times: dict[str, list[float]] = {"teacher": [], "student_batched": [], "student_single": []}
    for _ in range(repeats):
        for name, fn in (
            ("teacher", lambda: teacher.predict(cells)),
            ("student_batched", lambda: student.predict(cells)),
            ("student_single", lambda: [student.predict([c]) for c in cells]),
        ):
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / len(cells))
    med = {k: float(np.median(v)) for k, v in times.items()}
    n = [len(c) for c in cells]
    return {
        "n_cells": len(cells),
        "atoms_min": int(min(n)),
        "atoms_max": int(max(n)),
        "teacher_s_per_structure": med["teacher"],
        "student_s_per_structure_batched": med["student_batched"],
        "student_s_per_structure_single": med["student_single"],
        "ratio_batched": med["teacher"] / med["student_batched"],
        "ratio_single": med["teacher"] / med["student_single"],
    }


def speed_cells(
    structures: Sequence, lo: int = 8, hi: int = 32, n: int = 12, seed: int = 0
) -> list:
    """Supercells of the given structures with ``lo``–``hi`` atoms, spread over that range."""
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.permutation(len(structures)):
        a = structures[int(i)]
        reps = [(1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2), (3, 2, 2), (3, 3, 2), (3, 3, 3)]
        fits = [r for r in reps if lo <= len(a) * r[0] * r[1] * r[2] <= hi]
        if fits:
            out.append(a.repeat(fits[len(out) % len(fits)]))
        if len(out) >= n:
            break
    return out
