"""``hts submit`` / ``hts cancel``: a campaign's driver as a batch job, generated from the site.

Three modes (``submit.mode`` in the site, or ``--mode``):

``pilot``
    A small driver job (store writer, hull, Parsl's interchange) whose executors ask
    the scheduler for worker blocks through Parsl's Slurm/PBS provider.  Workers on
    compute nodes connect back to the driver's node.
``allocation``
    One job of ``nodes`` worker nodes; the driver runs on the first and starts one
    worker pool per node inside the same allocation (srun/mpiexec), no further jobs.
``mpi``
    One job; ``srun --mpi=pmi2 … hts run --engine mpi``: rank 0 drives, the others
    run tasks.

Every job of a store — the driver and Parsl's blocks — carries the store's key in
its Slurm comment, so ``hts cancel`` and ``hts status`` find them all.  The driver
is told to stop ``stop_before_s`` before its walltime (``--signal``) and closes its
blocks; whatever it had committed stays in the store, and submitting the same
campaign again resumes it.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hts.execution.parsl_config import store_key
from hts.execution.site_files import load_site, site_file
from hts.execution.site_schema import INHERITED, Site, SiteError, parse_walltime

__all__ = [
    "SubmitError",
    "Submission",
    "batch_script",
    "cancel",
    "driver_job",
    "job_states",
    "jobs_dir",
    "submit",
]

_ACTIVE = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "Q",
    "R",
    "H",
    "E",
    "B",
}


class SubmitError(RuntimeError):
    """A submission the scheduler refused, or one that would clash with a running driver."""


@dataclass
class Submission:
    job_id: str
    scheduler: str
    mode: str
    script: str
    campaign: str
    site: str
    store: str
    submitted_at: float


def jobs_dir(store: Path | str) -> Path:
    return Path(f"{Path(store).resolve()}.jobs")


def driver_job(site: Site, mode: str | None = None) -> dict[str, Any]:
    """The driver job's resources for ``mode`` (default: the site's ``submit.mode``).

    Three layers, later ones winning: the site's top-level scheduler fields;
    in allocation and MPI modes the worker nodes' (the GPU executor's partition,
    GPUs and cores, since the driver's job *is* the workers' allocation); then
    whatever ``submit`` sets explicitly.  Only submission needs this, so it
    lives here rather than on :class:`~hts.execution.site_schema.Site`.
    """
    s = site.submit
    mode = mode or s.mode
    job: dict[str, Any] = {k: getattr(site, k) for k in INHERITED}
    job.update(gpus_per_node=0, cpus=s.cpus, nodes=1)
    if mode != "pilot":
        batch = [e for e in site.executors.values() if e.provider != "local"]
        worker = next((e for e in batch if e.n_gpus()), batch[0] if batch else None)
        if worker is not None:
            job.update({k: getattr(worker, k) for k in INHERITED if getattr(worker, k)})
            job["gpus_per_node"] = worker.n_gpus()
            if worker.cores_per_node:
                job["cpus"] = worker.cores_per_node
        job["nodes"] = s.nodes
    for k in (*INHERITED, "gpus_per_node", "walltime"):
        if k in s.model_fields_set or k not in job:
            job[k] = getattr(s, k)
    job.update(
        mode=mode,
        scheduler_options=list(s.scheduler_options),
        ranks_per_node=s.ranks_per_node,
    )
    return job


def _hts_command() -> str:
    exe = Path(sys.executable).parent / "hts"
    return shlex.quote(str(exe)) if exe.exists() else f"{shlex.quote(sys.executable)} -m hts.cli"


def batch_script(
    site: Site,
    site_path: Path,
    campaign: Path,
    store: Path,
    *,
    mode: str | None = None,
    nodes: int | None = None,
    walltime: str | None = None,
    cwd: Path | None = None,
) -> str:
    """The driver's batch script (Slurm or PBS Pro) for one campaign on one site."""
    scheduler = site.scheduler()
    if scheduler is None:
        raise SiteError(
            f"site {site.name!r} has no batch scheduler: hts submit needs submit.scheduler "
            "(slurm or pbspro) or executors with provider slurm/pbspro; use hts run on this machine"
        )
    job = driver_job(site, mode)
    if nodes:
        job["nodes"] = nodes
    if walltime:
        job["walltime"] = parse_walltime(walltime)
    mode = job["mode"]
    if mode == "pilot" and not any(e.provider != "local" for e in site.executors.values()):
        raise SiteError(
            f"site {site.name!r}: pilot mode gets worker blocks from the scheduler, but no executor "
            "has provider slurm or pbspro; use --mode allocation"
        )
    if scheduler == "slurm" and not (job["partition"] or job["constraint"]):
        raise SiteError(
            f"site {site.name!r}: the driver job needs a partition (or constraint): set "
            "submit.partition or the site's partition"
        )
    if scheduler == "pbspro" and not job["queue"]:
        raise SiteError(f"site {site.name!r}: the driver job needs a queue: set submit.queue")
    store = Path(store).resolve()
    jobs = jobs_dir(store)
    key = store_key(store)
    name = f"hts-{campaign.stem}"[:60]
    hts = _hts_command()
    run = (
        f"{hts} run {shlex.quote(str(campaign.resolve()))} --site {shlex.quote(str(site_path.resolve()))} "
        f"--store {shlex.quote(str(store))} --quiet"
    )
    ranks = job["nodes"] * job["ranks_per_node"]
    if mode == "allocation":
        run += " --allocation"
    elif mode == "mpi":
        launch = (
            f"srun --mpi={site.submit.srun_mpi} --ntasks={ranks}"
            if scheduler == "slurm"
            else f"mpiexec -n {ranks} --ppn {job['ranks_per_node']}"
        )
        run = f"{launch} {run} --engine mpi"
    lines = ["#!/bin/bash"]
    if scheduler == "slurm":
        d = "#SBATCH"
        lines += [
            f"{d} --job-name={name}",
            f"{d} --comment={key}",
            f"{d} --output={jobs}/driver-%j.out",
            f"{d} --time={job['walltime']}",
            f"{d} --nodes={job['nodes']}",
            f"{d} --ntasks-per-node={job['ranks_per_node'] if mode == 'mpi' else 1}",
            f"{d} --cpus-per-task={max(1, job['cpus'] // (job['ranks_per_node'] if mode == 'mpi' else 1))}",
        ]
        if site.submit.stop_before_s:
            lines.append(f"{d} --signal=B:TERM@{site.submit.stop_before_s}")
        for k in ("partition", "account", "qos", "constraint"):
            if job[k]:
                lines.append(f"{d} --{k}={job[k]}")
        if job["gpus_per_node"]:
            lines.append(f"{d} --gpus-per-node={job['gpus_per_node']}")
    else:
        d = "#PBS"
        select = f"{job['nodes']}:ncpus={job['cpus']}" + (
            f":ngpus={job['gpus_per_node']}" if job["gpus_per_node"] else ""
        )
        lines += [
            f"{d} -N {name[:15]}",
            f"{d} -o {jobs}/driver.out",
            f"{d} -j oe",
            f"{d} -l walltime={job['walltime']}",
            f"{d} -l select={select}",
            f"{d} -q {job['queue']}",
        ]
        if job["account"]:
            lines.append(f"{d} -A {job['account']}")
    lines += job["scheduler_options"]
    lines += [
        "",
        f"# Generated by `hts submit` on {time.strftime('%Y-%m-%d %H:%M:%S')}: campaign {campaign.name},",
        f"# site {site.name}, {mode} mode. Submitting the same campaign again resumes the store.",
        "set -eo pipefail",
        f"cd {shlex.quote(str((cwd or Path.cwd()).resolve()))}",
    ]
    if site.submit.init:
        lines.append(site.submit.init)
    lines += [f"export HTS_JOB_KEY={key}", f"exec {run}", ""]
    return "\n".join(lines)


def _run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SubmitError(f"{cmd[0]} not found: is this a login node of the cluster?") from None


def _history(store: Path) -> list[dict]:
    f = jobs_dir(store) / "jobs.json"
    return json.loads(f.read_text()) if f.is_file() else []


def job_states(store: Path | str) -> list[dict]:
    """Every batch job of this store the scheduler still knows: the drivers and Parsl's blocks."""
    store = Path(store).resolve()
    history = _history(store)
    drivers = {h["job_id"]: h for h in history}
    scheduler = history[-1]["scheduler"] if history else "slurm"
    rows: list[dict] = []
    if scheduler == "slurm":
        key = store_key(store)
        try:
            q = _run(["squeue", "--noheader", "--format=%i|%T|%j|%k|%M|%R"])
        except SubmitError:
            q = None
        if q is not None and q.returncode == 0:
            for line in q.stdout.splitlines():
                jid, state, name, comment, elapsed, where = (line.split("|") + [""] * 6)[:6]
                if comment.strip() == key or jid in drivers:
                    rows.append(
                        dict(
                            job_id=jid,
                            state=state,
                            name=name,
                            role="driver" if jid in drivers else "workers",
                            elapsed=elapsed,
                            where=where,
                        )
                    )
    seen = {r["job_id"] for r in rows}
    for jid in drivers:
        if jid not in seen:
            rows.append(
                dict(
                    job_id=jid,
                    state=_final_state(jid, scheduler),
                    name="",
                    role="driver",
                    elapsed="",
                    where="",
                )
            )
    return sorted(rows, key=lambda r: (r["role"] != "driver", r["job_id"]))


def _final_state(job_id: str, scheduler: str) -> str:
    """A finished job's state: sacct where there is accounting, the controller's memory otherwise."""
    try:
        if scheduler == "slurm":
            r = _run(["scontrol", "show", "job", "--oneliner", job_id])
            for word in r.stdout.split():
                if word.startswith("JobState="):
                    return word.split("=", 1)[1]
            r = _run(["sacct", "-X", "--noheader", "--format=State", "-j", job_id])
            if r.returncode == 0 and r.stdout.strip():
                return r.stdout.split()[0]
        else:
            r = _run(["qstat", "-x", "-f", job_id])
            for line in r.stdout.splitlines():
                if "job_state" in line:
                    return line.split("=", 1)[1].strip()
    except SubmitError:
        pass
    return "finished (no longer known to the scheduler)"


def submit(
    site_name: str,
    campaign: Path,
    store: Path,
    *,
    mode: str | None = None,
    nodes: int | None = None,
    walltime: str | None = None,
    dry_run: bool = False,
) -> tuple[Submission | None, Path]:
    """Write the driver's batch script under ``<store>.jobs/`` and hand it to the scheduler."""
    site = load_site(site_name)
    path = site_file(site_name)
    store = Path(store).resolve()
    script = batch_script(site, path, campaign, store, mode=mode, nodes=nodes, walltime=walltime)
    if not dry_run:
        active = [r for r in job_states(store) if r["role"] == "driver" and r["state"] in _ACTIVE]
        if active:
            raise SubmitError(
                f"driver job {active[0]['job_id']} of {store} is still {active[0]['state']}: two "
                f"drivers must never write one store (hts cancel {store} first)"
            )
    jobs = jobs_dir(store)
    jobs.mkdir(parents=True, exist_ok=True)
    history = _history(store)
    target = jobs / f"driver-{len(history) + 1}.sh"
    target.write_text(script)
    if dry_run:
        return None, target
    scheduler = site.scheduler()
    cmd = ["sbatch", "--parsable", str(target)] if scheduler == "slurm" else ["qsub", str(target)]
    r = _run(cmd, timeout=60)
    if r.returncode != 0:
        raise SubmitError(f"{' '.join(cmd)} failed: {(r.stderr or r.stdout).strip()}")
    job_id = r.stdout.strip().split(";")[0]
    sub = Submission(
        job_id=job_id,
        scheduler=str(scheduler),
        mode=driver_job(site, mode)["mode"],
        script=str(target),
        campaign=str(campaign.resolve()),
        site=str(path.resolve()),
        store=str(store),
        submitted_at=time.time(),
    )
    (jobs / "jobs.json").write_text(json.dumps([*history, asdict(sub)], indent=1))
    return sub, target


def cancel(store: Path | str) -> list[str]:
    """Cancel the store's driver (it closes its blocks on SIGTERM) and any block left behind."""
    store = Path(store).resolve()
    history = _history(store)
    if not history:
        raise SubmitError(
            f"{store} was never submitted with hts submit (no {jobs_dir(store)}/jobs.json)"
        )
    scheduler = history[-1]["scheduler"]
    ids = [r["job_id"] for r in job_states(store) if r["state"] in _ACTIVE]
    if not ids:
        return []
    cmd = ["scancel", *ids] if scheduler == "slurm" else ["qdel", *ids]
    r = _run(cmd)
    if r.returncode != 0:
        raise SubmitError(f"{' '.join(cmd)} failed: {(r.stderr or r.stdout).strip()}")
    return ids
