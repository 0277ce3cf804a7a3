"""One DFT job in its own process: ``python -m hts.dft.job DIR``.

``DIR/request.json`` says what to compute; the job runs the atomate2 flow in
``DIR`` with a jobflow ``JobStore`` on maggma ``JSONStore`` files
(``DIR/docs.json`` for the task documents, ``DIR/data.json`` for large
objects such as trajectories) and writes ``DIR/result.json``: the numbers the
campaign stores, or the error with its kind (``scf`` for an SCF that did not
converge, which a retry with other settings may fix; ``error`` otherwise).

The parent side, :func:`run_job`, starts that process behind the launcher
(``mpiexec -n 4`` …), enforces the walltime by killing the process group,
and turns a crash into a reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["job_store", "main", "run_job"]

_MPI_ENV = ("PMI_", "PMIX_", "OMPI_", "MPI_LOCAL", "HYDRA_")
_SCF_ERRORS = ("KohnShamConvergenceError", "ConvergenceError", "UnconvergedError")


def job_store(directory: str | Path):
    """The file-backed jobflow store of one job directory (absolute paths: jobs chdir)."""
    from jobflow import JobStore
    from maggma.stores import JSONStore

    d = Path(directory).resolve()
    return JobStore(
        JSONStore(str(d / "docs.json"), read_only=False),
        additional_stores={"data": JSONStore(str(d / "data.json"), read_only=False)},
    )


def _result(doc, relax_doc, elapsed: float) -> dict:
    """What the campaign keeps from the final task document (ASE or VASP)."""
    import numpy as np

    out = doc.output
    structure = getattr(doc, "structure", None) or out.structure
    energy = float(out.energy)
    forces = getattr(out, "forces", None)
    max_force = float(np.linalg.norm(np.asarray(forces), axis=1).max()) if forces else float("nan")
    converged = True
    n_steps = 1
    if relax_doc is not None:
        converged = bool(getattr(relax_doc, "is_force_converged", True))
        steps = getattr(relax_doc.output, "n_steps", None)
        if steps is None:  # VASP: ionic steps of the last calculation
            steps = len(relax_doc.calcs_reversed[0].output.ionic_steps)
        n_steps = int(steps)
    return {
        "ok": True,
        "energy": energy,
        "n_atoms": len(structure),
        "structure": structure.as_dict(),
        "relax_converged": converged,
        "n_steps": n_steps,
        "max_force": max_force,
        "elapsed_s": elapsed,
    }


def _rank() -> int:
    """This process's MPI rank as the launcher set it (0 without a launcher)."""
    for key in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def main(directory: str) -> int:
    d = Path(directory).resolve()
    request = json.loads((d / "request.json").read_text())
    t0 = time.time()
    rank = _rank()
    # Every rank runs the same flow (the DFT code's calls are collective); only rank 0
    # keeps documents and the result, the others work in a scratch folder of their own.
    root = d if rank == 0 else d / "ranks" / str(rank)
    root.mkdir(parents=True, exist_ok=True)
    try:
        from jobflow import JobStore, run_locally
        from maggma.stores import MemoryStore

        from hts.dft.codes import flow

        f = flow(request)
        store = (
            job_store(d)
            if rank == 0
            else JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})
        )
        responses = run_locally(
            f,
            store=store,
            create_folders=True,
            root_dir=str(root),
            raise_immediately=True,
            log=False,
        )
        docs = [responses[j.uuid][1].output for j in f.jobs]
        result = _result(docs[-1], docs[0] if len(docs) > 1 else None, time.time() - t0)
    except Exception as err:  # recorded for the parent, which decides on a retry
        name = type(err).__name__
        kind = "scf" if name in _SCF_ERRORS or "did not converge" in str(err) else "error"
        text = str(err).strip()
        if kind == "scf" and not text:
            maxiter = request["settings"].get("maxiter", "NELM")
            text = f"the SCF did not converge within {maxiter} iterations"
        result = {"ok": False, "kind": kind, "message": f"{name}: {text}"[:500]}
    result["elapsed_s"] = time.time() - t0
    # what the launcher told this process (mpiexec's PMI, srun's Slurm), for the record
    keys = ("PMI_SIZE", "PMI_RANK", "SLURM_NTASKS", "SLURM_PROCID", "OMPI_COMM_WORLD_SIZE")
    result["launcher_env"] = {k: os.environ[k] for k in keys if k in os.environ}
    if rank != 0:
        return 0
    tmp = d / "result.json.tmp"
    tmp.write_text(json.dumps(result))
    tmp.replace(d / "result.json")
    return 0


def _tail(path: Path, n: int = 6) -> str:
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[-400:]


def run_job(
    directory: Path,
    request: dict,
    *,
    launcher: list[str],
    walltime_s: float,
    env: dict[str, str] | None = None,
) -> dict:
    """Run one job to its ``result.json``; a crash or a timeout becomes an error result."""
    directory.mkdir(parents=True, exist_ok=True)
    result_path = directory / "result.json"
    result_path.unlink(missing_ok=True)
    (directory / "request.json").write_text(json.dumps(request))
    # one thread per rank: two threads on two busy cores ran 5-15x slower
    threads = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    full_env = {**os.environ, **threads, **(env or {})}
    if (
        not launcher
    ):  # started from an MPI rank (--engine mpi): the job is not part of that MPI world
        for key in [k for k in full_env if k.startswith(_MPI_ENV)]:
            del full_env[key]
    if (
        launcher
    ):  # GPAW's own MPI (the one it was built with), unless the environment says otherwise
        full_env.setdefault("GPAW_MPI_BACKEND", "cgpaw")
    cmd = [*launcher, sys.executable, "-m", "hts.dft.job", str(directory)]
    t0 = time.time()
    with open(directory / "job.log", "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=walltime_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {
                "ok": False,
                "kind": "timeout",
                "message": f"killed after the walltime of {walltime_s:g} s",
                "elapsed_s": time.time() - t0,
            }
    if result_path.is_file():
        return json.loads(result_path.read_text())
    how = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
    return {
        "ok": False,
        "kind": "crash",
        "message": f"job process died ({how}): {_tail(directory / 'job.log')}",
        "elapsed_s": time.time() - t0,
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
