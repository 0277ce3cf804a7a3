"""MPI mode: ``mpiexec -n 3 hts run --engine mpi`` writes the same store as the thread pool.

Marked ``mpi``; CI runs it (``make test-mpi``) with the MPICH that PyPI's
``mpich`` wheel puts next to the interpreter, which mpi4py's wheel uses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hts.spec import parse_campaign
from hts.store import open_dataset
from tests.conftest import lj_campaign, run_on_parsl, write_campaign

pytestmark = pytest.mark.mpi

MPIEXEC = str(Path(sys.executable).parent / "mpiexec")


def _data(tmp_path: Path, store: str) -> dict:
    data = lj_campaign(tmp_path, chunk_size=3, limits={"max_candidates": 60})
    data["stages"]["rescore"] = {
        "model": {"name": "lennard-jones"},
        "relax": {"fmax": 0.01, "max_steps": 300},
        "keep": "e_above_hull <= 0.02",
        "chunk_size": 4,
    }
    data["store"] = str(tmp_path / store)
    return data


def _by_id(path: str) -> dict[str, np.ndarray]:
    ds = open_dataset(path)
    order = np.argsort(ds.id.values.astype(str))
    out = {"id": ds.id.values.astype(str)[order], "status": ds.status.values.astype(str)[order]}
    for name in ("energy_per_atom", "formation_energy", "e_above_hull", "kept", "n_steps"):
        out[name] = ds[name].values[order]
    out["cell"] = ds.cell.values[order]
    return out


def test_mpi_store_equals_thread_pool_store(tmp_path):
    ref = parse_campaign(_data(tmp_path, "threads.zarr"))
    run_on_parsl(ref, tmp_path / "runinfo")

    path = write_campaign(tmp_path, _data(tmp_path, "mpi.zarr"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            MPIEXEC,
            "-n",
            "3",
            sys.executable,
            "-m",
            "hts.cli",
            "run",
            str(path),
            "--engine",
            "mpi",
            "-q",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "mpi: 3 ranks" in proc.stderr
    a, b = _by_id(str(tmp_path / "threads.zarr")), _by_id(str(tmp_path / "mpi.zarr"))
    assert len(a["id"]) > 30
    assert np.array_equal(a["id"], b["id"]) and np.array_equal(a["status"], b["status"])
    for name in ("energy_per_atom", "formation_energy", "e_above_hull", "cell"):
        np.testing.assert_allclose(
            b[name], a[name], rtol=0, atol=1e-9, equal_nan=True, err_msg=name
        )
    assert np.array_equal(a["kept"], b["kept"]) and np.array_equal(a["n_steps"], b["n_steps"])
    assert a["kept"][:, 1].sum() > 0  # the teacher kept some: both stages really ran
    ds = open_dataset(str(tmp_path / "mpi.zarr"))
    assert ds.attrs["ledger"]["finalized"]
