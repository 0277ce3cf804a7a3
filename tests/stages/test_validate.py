"""Choosing what DFT validates, the retry settings, and the reference phases (no DFT run)."""

from __future__ import annotations

import numpy as np
import pytest

from hts.dft.codes import adjusted_gpaw
from hts.execution.sites import ExecutorSpec, SiteError
from hts.spec import ValidateStage
from hts.stages.validate import reference_task, select_rows


def test_best_survivors_first_ties_by_formation_energy():
    ehull = np.array([0.0, 0.02, 0.0, np.nan, 0.0, 0.2])
    eform = np.array([-1.0, -3.0, -2.0, -5.0, -1.5, -4.0])
    kept = np.array([True, True, True, True, False, True])
    ok = np.ones(6, dtype=bool)
    assert select_rows(ehull, eform, kept, ok, ValidateStage(top=3)) == [2, 0, 1]
    assert select_rows(ehull, eform, kept, ok, ValidateStage(top=10, max_e_above_hull=0.01)) == [
        2,
        0,
    ]
    ok[2] = False  # failed at an earlier stage
    assert select_rows(ehull, eform, kept, ok, ValidateStage(top=1)) == [0]


def test_scf_retries_soften_mixing_then_smear():
    base = ValidateStage().gpaw.model_dump(mode="json")
    assert adjusted_gpaw(base, 0) == base
    one = adjusted_gpaw(base, 1)
    assert one["mixer"]["beta"] < 0.25 and one["maxiter"] == 2 * base["maxiter"]
    two = adjusted_gpaw(base, 2)
    assert two["smearing"] >= 2 * base["smearing"] and two["maxiter"] == 4 * base["maxiter"]


def test_reference_phases_for_dft():
    na = reference_task("Na", "bcc (ASE standard state)")
    assert na.key == "ref-Na" and len(na.numbers) == 1 and not na.fixed_cell
    o = reference_task("O", "dimer crystal")
    assert o.fixed_cell and o.spinpol and o.magmoms == [1.0, 1.0]  # triplet O2 in its box
    cl = reference_task("Cl", "")
    assert cl.fixed_cell and cl.spinpol is None
    d = np.linalg.norm(cl.positions[1] - cl.positions[0])
    assert d == pytest.approx(1.99)


def test_launchers():
    assert ExecutorSpec(kind="threads").launch_prefix() == []
    assert ExecutorSpec(
        kind="threads", mpi_launcher="mpiexec", ranks_per_task=4
    ).launch_prefix() == [
        "mpiexec",
        "-n",
        "4",
    ]
    srun = ExecutorSpec(kind="threads", mpi_launcher="srun").launch_prefix(8)
    assert srun[:3] == ["srun", "--ntasks", "8"]
    with pytest.raises(SiteError, match="mpi_launcher is 'none'"):
        ExecutorSpec(kind="threads").launch_prefix(2)


def test_a_restart_reuses_finished_attempts_with_the_same_inputs(tmp_path):
    """A driver killed while DFT ran: finished jobs are not paid for twice, changed inputs are."""
    import json

    from ase.build import bulk

    from hts.stages.validate import DftTask, _finished, _request, _structure_dict, validate_one

    a = bulk("NaCl", "rocksalt", a=5.6)
    task = DftTask("c1", "NaCl", a.numbers, a.positions, np.asarray(a.cell[:]))
    stage = ValidateStage(workflow="static", retries=0)
    request = _request(task, stage, 0, _structure_dict(a.numbers, a.positions, a.cell[:]))
    d = tmp_path / "c1" / "attempt-1"
    d.mkdir(parents=True)
    (d / "request.json").write_text(json.dumps(request))
    result = {
        "ok": True,
        "energy": -7.25,
        "n_atoms": 2,
        "structure": request["structure"],
        "relax_converged": True,
        "n_steps": 1,
        "elapsed_s": 4.0,
    }
    (d / "result.json").write_text(json.dumps(result))
    rec = validate_one(task, stage, str(tmp_path), [])
    assert rec.status == "ok" and rec.energy_per_atom == -3.625 and rec.time_s == 4.0
    other = _request(
        task, ValidateStage(workflow="static", gpaw={"ecut": 700}), 0, request["structure"]
    )
    assert _finished(d, other) is None
    (d / "result.json").write_text(json.dumps({"ok": False, "kind": "crash", "message": "x"}))
    assert _finished(d, request) is None
