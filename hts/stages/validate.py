"""The validate stage: DFT for the best few candidates, with custodian-style retries.

Each candidate (and each elemental reference) is one task:
:func:`validate_one` runs its atomate2 flow as a job process in its own
directory under ``<store>.dft/`` and retries what a retry can fix — an SCF
that did not converge (gentler mixing, more iterations, more smearing), a
relaxation that ran out of steps (continued from where it stopped) — before
giving up with the reason.  A crash or a walltime kill is not retried: the
same input would crash again or cost the same hours.

Science only: the launcher (``mpiexec -n 4``) comes in as a list of words,
chosen by the engine from the site.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hts.spec import ValidateStage
from hts.store.schema import STATUS_FAILED, STATUS_OK

__all__ = [
    "DftRecord",
    "DftTask",
    "reference_task",
    "select_rows",
    "validate_one",
]


@dataclass(slots=True)
class DftTask:
    """One structure to compute: a candidate (key = its id) or an element (key = ``ref-El``)."""

    key: str
    label: str  # formula or element, for logs and job names
    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    fixed_cell: bool = False  # molecular references: relax the molecule in its box
    spinpol: bool | None = None  # None: the stage's setting
    magmoms: list[float] | None = None


@dataclass(slots=True)
class DftRecord:
    key: str
    status: str
    reason: str = ""
    energy: float = float("nan")
    energy_per_atom: float = float("nan")
    converged: bool = False
    n_steps: int = 0
    time_s: float = 0.0
    attempts: int = 0
    job_dir: str = ""
    numbers: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    positions: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    cell: np.ndarray = field(default_factory=lambda: np.eye(3))


def _structure_dict(numbers, positions, cell) -> dict:
    from pymatgen.core import Lattice, Structure

    s = Structure(
        Lattice(np.asarray(cell, float)),
        [int(z) for z in numbers],
        np.asarray(positions, float),
        coords_are_cartesian=True,
    )
    return s.as_dict()


def _request(task: DftTask, stage: ValidateStage, attempt: int, structure: dict) -> dict:
    from hts.dft.codes import adjusted_gpaw

    settings = stage.code_settings().model_dump(mode="json")
    if stage.code == "gpaw":
        settings = adjusted_gpaw(settings, attempt)
    relax = stage.relax.model_dump(mode="json")
    relax["max_steps"] = relax["max_steps"] * (attempt + 1)
    if task.fixed_cell:
        relax["cell"] = False
    spin = stage.gpaw.spinpol if task.spinpol is None else task.spinpol
    return {
        "code": stage.code,
        "workflow": stage.workflow,
        "label": f"hts validate {task.label}",
        "settings": settings,
        "relax": relax,
        "structure": structure,
        "spinpol": spin,
        "magmoms": task.magmoms,
        "attempt": attempt,
    }


def validate_one(task: DftTask, stage: ValidateStage, root: str, launcher: list[str]) -> DftRecord:
    """Compute one structure with DFT, retrying what a retry can fix; never raises for the job's own failure."""
    from pymatgen.core import Structure

    from hts.dft.job import run_job

    base = Path(root) / task.key
    structure = _structure_dict(task.numbers, task.positions, task.cell)
    env: dict[str, str] = {}
    job_launcher = launcher
    if stage.code == "vasp":  # the launcher goes in front of VASP, not of Python
        env["ATOMATE2_VASP_CMD"] = " ".join([*launcher, stage.vasp.command])
        job_launcher = []
    total = 0.0
    why = ""
    for attempt in range(stage.retries + 1):
        d = base / f"attempt-{attempt + 1}"
        request = _request(task, stage, attempt, structure)
        res = _finished(d, request)  # done before a restart, with these very inputs
        if res is None:
            res = run_job(d, request, launcher=job_launcher, walltime_s=stage.walltime_s, env=env)
        total += float(res.get("elapsed_s", 0.0))
        if res.get("ok"):
            s = Structure.from_dict(res["structure"])
            rec = DftRecord(
                key=task.key,
                status=STATUS_OK,
                energy=float(res["energy"]),
                energy_per_atom=float(res["energy"]) / int(res["n_atoms"]),
                converged=bool(res["relax_converged"]),
                n_steps=int(res["n_steps"]),
                time_s=total,
                attempts=attempt + 1,
                job_dir=str(d),
                numbers=np.array(s.atomic_numbers, dtype=np.int64),
                positions=np.asarray(s.cart_coords),
                cell=np.asarray(s.lattice.matrix),
            )
            if rec.converged:
                return rec
            why = f"relaxation did not reach fmax {stage.relax.fmax} eV/Å in {res['n_steps']} steps"
            structure = res["structure"]  # go on from where it stopped, with more steps
            if attempt == stage.retries:
                rec.status, rec.reason = STATUS_FAILED, f"{why} ({attempt + 1} attempt(s))"
                return rec
            continue
        why = str(res.get("message", "unknown failure"))
        if res.get("kind") != "scf":
            break
    return DftRecord(
        key=task.key,
        status=STATUS_FAILED,
        reason=f"{why} ({attempt + 1} attempt(s))",
        time_s=total,
        attempts=attempt + 1,
        job_dir=str(d),
    )


def _finished(d: Path, request: dict) -> dict | None:
    """The result of an attempt that already ran with the same request, else None.

    A crash or a walltime kill is not reused: the restart may be the fix
    (a node that died, a longer walltime).
    """
    try:
        same = json.loads((d / "request.json").read_text()) == json.loads(json.dumps(request))
        res = json.loads((d / "result.json").read_text())
    except (OSError, ValueError):
        return None
    return res if same and res.get("kind") not in ("crash", "timeout") else None


def reference_task(element: str, prefer: str = "") -> DftTask:
    """An elemental reference phase for DFT: the MLIP stage's winning trial structure.

    ``prefer`` names the trial the previous stage found lowest (e.g. ``bcc
    (ASE standard state)``); DFT then relaxes that phase.  Dimer crystals keep
    their box (PBE without dispersion would expand it without end) and O2 is
    computed as the spin triplet it is.
    """
    from hts.stages.references import trial_structures

    trials = dict(trial_structures(element))
    name = prefer if prefer in trials else next(iter(trials))
    atoms = trials[name]
    molecular = name == "dimer crystal"
    spin = element == "O" and molecular
    return DftTask(
        key=f"ref-{element}",
        label=element,
        numbers=atoms.numbers.copy(),
        positions=atoms.positions.copy(),
        cell=np.asarray(atoms.cell[:]),
        fixed_cell=molecular,
        spinpol=True if spin else None,
        magmoms=[1.0] * len(atoms) if spin else None,
    )


def select_rows(
    e_above_hull: np.ndarray,
    formation_energy: np.ndarray,
    kept: np.ndarray,
    ok: np.ndarray,
    stage: ValidateStage,
) -> list[int]:
    """Rows to validate: the previous stage's survivors, lowest ``e_above_hull`` first.

    Ties (everything on the hull is at 0) go to the lower formation energy.
    """
    good = kept & ok & np.isfinite(e_above_hull)
    if stage.max_e_above_hull is not None:
        good &= e_above_hull <= stage.max_e_above_hull
    idx = np.flatnonzero(good)
    eform = np.where(np.isfinite(formation_energy[idx]), formation_energy[idx], math.inf)
    order = np.lexsort((idx, eform, e_above_hull[idx]))
    return [int(i) for i in idx[order][: stage.top]]
