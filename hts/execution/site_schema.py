"""The site file's schema: pydantic models of what differs between machines.

A site file (``sites/<name>.yaml``) names, per resource label (``cpu``, ``gpu``,
``dft``), how tasks run there: the executor (Parsl's thread pool in the driver,
or a HighThroughputExecutor), the provider that brings nodes (the local machine,
Slurm, PBS Pro), the launcher that spreads workers over a block's nodes, workers
per node and GPUs per node (one worker per GPU, pinned through Parsl's
``available_accelerators``).  Its ``submit`` section says how ``hts submit``
sends the campaign's driver to the batch system.

This module is data only: it imports neither Parsl nor YAML, so the schema can
be validated, documented and tested without either.  Reading the file is
:mod:`hts.execution.site_files`; turning a site into Parsl objects is
:mod:`hts.execution.parsl_config`; the driver job's resources are
:func:`hts.execution.submit.driver_job`.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from hts.config import Strict

__all__ = [
    "INHERITED",
    "Container",
    "ExecutorSpec",
    "Label",
    "Site",
    "SiteError",
    "SubmitSpec",
    "parse_walltime",
]

Label = Literal["cpu", "gpu", "dft"]
_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?$")
#: keys a batch executor inherits from the site's top level when it does not set them
INHERITED = ("account", "partition", "qos", "constraint", "queue")


class SiteError(ValueError):
    """A site that cannot be loaded or used; the message names the file and field."""


def parse_walltime(value: str | int) -> str:
    """``HH:MM:SS`` from Slurm-style ``D-HH:MM:SS``, ``HH:MM:SS``, ``HH:MM`` or minutes."""
    m = _WALLTIME.match(str(value).strip())
    if not m:
        raise ValueError(f"{value!r} is not a walltime (HH:MM:SS, HH:MM, D-HH:MM:SS or minutes)")
    days, a, b, c = m.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if len(parts) == 1:
        h, mi, s = 0, parts[0], 0
    elif len(parts) == 2:
        h, mi, s = parts[0], parts[1], 0
    else:
        h, mi, s = parts
    total = ((int(days or 0) * 24 + h) * 60 + mi) * 60 + s
    if total <= 0:
        raise ValueError(f"walltime {value!r} must be positive")
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


class Container(Strict):
    """A container image that HTEX workers (and the submitted driver) start inside."""

    image: str = Field(description="Image file (.sif) or URI given to the runtime.")
    runtime: Literal["apptainer", "singularity"] = "apptainer"
    options: list[str] = Field(
        default_factory=lambda: ["--nv"],
        description="--nv exposes NVIDIA GPUs, --rocm AMD GPUs; --cleanenv etc. as needed.",
    )
    bind: list[str] = Field(
        default_factory=list, description="Host paths to bind: scratch, the store, model files."
    )

    def prefix(self) -> str:
        words = [self.runtime, "exec", *self.options]
        if self.bind:
            words += ["--bind", ",".join(self.bind)]
        return " ".join([*words, self.image])


class _Batch(Strict):
    """Scheduler fields shared by executors and the submitted driver job."""

    account: str | None = Field(default=None, description="Allocation/project to charge.")
    partition: str | None = Field(default=None, description="Slurm partition.")
    qos: str | None = Field(default=None, description="Slurm quality of service.")
    constraint: str | None = Field(default=None, description="Slurm node constraint (-C).")
    queue: str | None = Field(default=None, description="PBS Pro queue.")
    walltime: str = Field(default="01:00:00", description="Per batch job: HH:MM:SS.")
    scheduler_options: list[str] = Field(
        default_factory=list, description="Extra '#SBATCH …' or '#PBS …' lines, verbatim."
    )

    @field_validator("walltime", mode="before")
    @classmethod
    def _wt(cls, v: Any) -> str:
        return parse_walltime(v)

    @field_validator("scheduler_options")
    @classmethod
    def _directives(cls, v: list[str]) -> list[str]:
        for line in v:
            if not line.startswith(("#SBATCH", "#PBS")):
                raise ValueError(f"{line!r} is not a '#SBATCH …' or '#PBS …' line")
        return v


class ExecutorSpec(_Batch):
    """How one resource label's tasks run."""

    kind: Literal["threads", "htex"] = Field(
        description="threads: Parsl ThreadPoolExecutor in the driver; htex: HighThroughputExecutor "
        "(worker processes on this machine or on batch nodes)."
    )
    provider: Literal["local", "slurm", "pbspro"] = Field(
        default="local", description="Where an htex executor's nodes come from."
    )
    launcher: Literal["single", "srun", "mpiexec"] = Field(
        default="single",
        description="How a block starts one worker pool per node: single (one node), srun, mpiexec.",
    )
    launcher_options: str = Field(default="", description="Extra words for srun/mpiexec.")
    workers: int | Literal["auto"] = Field(
        default="auto",
        description="Workers per node; auto = gpus_per_node if set, else cores // threads_per_worker.",
    )
    threads_per_worker: int = Field(default=1, ge=1, le=256)

    @field_validator("workers")
    @classmethod
    def _positive_workers(cls, v: int | str) -> int | str:
        if v != "auto" and not 1 <= int(v) <= 100_000:
            raise ValueError(f"must be auto or a number of workers from 1 to 100000, not {v}")
        return v

    gpus_per_node: int = Field(
        default=0, ge=0, le=64, description="GPUs per node; one worker is pinned to each."
    )
    accelerators: list[str] | None = Field(
        default=None,
        description="Device ids to pin workers to (default 0…gpus_per_node-1); e.g. GCD ids.",
    )
    nodes_per_block: int = Field(default=1, ge=1, le=100_000)
    init_blocks: int = Field(
        default=0, ge=0, description="Blocks asked for at start; more come as tasks wait."
    )
    min_blocks: int = Field(default=0, ge=0)
    max_blocks: int = Field(default=1, ge=1)
    cores_per_node: int | None = Field(
        default=None, ge=1, description="Cores a block asks for per node (Slurm --cpus-per-task)."
    )
    mem_per_node: int | None = Field(default=None, ge=1, description="GB per node (Slurm --mem).")
    exclusive: bool = Field(default=True, description="Slurm --exclusive for each block.")
    worker_init: str = Field(
        default="", description="Shell lines run before workers start (modules, venv, env)."
    )
    mpi_launcher: Literal["none", "mpiexec", "srun"] = Field(
        default="none",
        description="How a task starts a parallel code (DFT): none runs it as one process.",
    )
    mpi_launcher_options: list[str] = Field(
        default_factory=list,
        description="Extra words for the parallel code's launcher, e.g. --mpi=pmi2 for PyPI MPICH.",
    )
    ranks_per_task: int = Field(
        default=1,
        ge=1,
        le=100_000,
        description="MPI ranks of a parallel code, unless the campaign says.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ExecutorSpec:
        if self.kind == "threads" and self.provider != "local":
            raise ValueError(
                f"kind threads runs inside the driver process and cannot use provider "
                f"{self.provider}: use kind htex"
            )
        if (
            self.accelerators is not None
            and self.gpus_per_node
            and len(self.accelerators) != self.gpus_per_node
        ):
            raise ValueError(
                f"accelerators lists {len(self.accelerators)} devices but gpus_per_node is "
                f"{self.gpus_per_node}"
            )
        gpus = self.n_gpus()
        if gpus and self.workers != "auto" and int(self.workers) > gpus:
            raise ValueError(
                f"{self.workers} workers per node but only {gpus} GPUs per node: each worker is "
                f"pinned to one GPU, so set workers ≤ {gpus} (or auto)"
            )
        if gpus and self.kind == "threads":
            raise ValueError("GPU pinning needs worker processes: use kind htex with gpus_per_node")
        if self.launcher == "srun" and self.provider == "pbspro":
            raise ValueError("launcher srun needs Slurm; with provider pbspro use mpiexec")
        if self.min_blocks > self.max_blocks or self.init_blocks > self.max_blocks:
            raise ValueError("init_blocks and min_blocks must be ≤ max_blocks")
        return self

    def n_gpus(self) -> int:
        """GPUs per node: the listed accelerators if given, else ``gpus_per_node``."""
        return len(self.accelerators) if self.accelerators is not None else self.gpus_per_node

    def device_ids(self) -> list[str]:
        """The device ids Parsl pins one worker each to (``CUDA_VISIBLE_DEVICES``)."""
        return (
            list(self.accelerators)
            if self.accelerators is not None
            else [str(i) for i in range(self.gpus_per_node)]
        )

    def n_workers(self) -> int:
        """Workers per node (per process pool)."""
        if self.workers != "auto":
            return max(1, int(self.workers))
        if self.n_gpus():
            return self.n_gpus()
        cores = self.cores_per_node if self.provider != "local" and self.cores_per_node else None
        return max(1, (cores or os.cpu_count() or 1) // self.threads_per_worker)

    def total_workers(self) -> int:
        """Workers once every block runs: what the driver keeps busy."""
        if self.kind == "threads" or self.provider == "local":
            return self.n_workers() * (self.nodes_per_block if self.launcher != "single" else 1)
        return self.n_workers() * self.nodes_per_block * self.max_blocks

    def launch_prefix(self, ranks: int | None = None) -> list[str]:
        """The words put in front of a parallel code's command line."""
        n = ranks or self.ranks_per_task
        if self.mpi_launcher == "none":
            if n > 1:
                raise SiteError(
                    f"{n} MPI ranks asked for, but this executor's mpi_launcher is 'none': "
                    "set mpi_launcher (mpiexec or srun) in the site file"
                )
            return []
        if self.mpi_launcher == "srun":
            words = ["srun", "--ntasks", str(n), "--cpus-per-task", "1", "--exact"]
        else:
            words = ["mpiexec", "-n", str(n)]
        return [*words, *self.mpi_launcher_options]


class SubmitSpec(_Batch):
    """The driver job ``hts submit`` sends; fields left out come from the site.

    How the two combine is :func:`hts.execution.submit.driver_job`.
    """

    scheduler: Literal["slurm", "pbspro"] | None = Field(
        default=None, description="Default: the scheduler of the site's batch executors."
    )
    mode: Literal["pilot", "allocation", "mpi"] = Field(
        default="pilot",
        description="pilot: a small driver job, worker blocks as their own batch jobs; allocation: "
        "one job of `nodes` nodes whose workers start inside it; mpi: one job, srun … --engine mpi.",
    )
    nodes: int = Field(default=1, ge=1, description="Nodes of the job (allocation and mpi modes).")
    cpus: int = Field(
        default=2,
        ge=1,
        description="Cores of the driver job (per node in allocation and MPI modes, where the "
        "worker executor's cores_per_node wins).",
    )
    ranks_per_node: int = Field(default=1, ge=1, description="MPI mode: ranks per node.")
    gpus_per_node: int = Field(default=0, ge=0, description="GPUs asked for per node.")
    srun_mpi: str = Field(
        default="pmi2", description="srun --mpi= plugin in MPI mode (pmi2 for PyPI MPICH)."
    )
    init: str = Field(
        default="", description="Shell lines before the driver starts: modules, venv activation."
    )
    stop_before_s: int = Field(
        default=120,
        ge=0,
        description="Seconds before the walltime at which the driver is told to stop cleanly "
        "(Slurm --signal; 0: only the scheduler's own SIGTERM at the walltime).",
    )


class Site(Strict):
    """One machine: its executors per resource label, scheduler defaults and driver job.

    Top-level ``account``, ``partition``, … are defaults that every batch
    executor inherits unless it sets its own, so a cluster's site file says
    them once.
    """

    name: str
    description: str = ""
    account: str | None = Field(default=None, description="Default for every batch executor.")
    partition: str | None = None
    qos: str | None = None
    constraint: str | None = None
    queue: str | None = None
    address: str | None = Field(
        default=None,
        description="Address workers reach the driver at: an IP, 'interface:NAME' (e.g. "
        "interface:hsn0), or unset to let workers try every address of the driver's host.",
    )
    strategy_period: float = Field(
        default=5.0, gt=0, description="Seconds between Parsl's checks for blocks to add or drop."
    )
    max_idletime: float = Field(
        default=120.0, ge=0, description="Seconds a batch block may idle before it is released."
    )
    container: Container | None = None
    submit: SubmitSpec = Field(default_factory=SubmitSpec)
    executors: dict[Label, ExecutorSpec] = Field(min_length=1)
    monitoring: bool = Field(
        default=False,
        description="Parsl monitoring into <store>.parsl/monitoring.db: tasks, workers and blocks "
        "for `hts dashboard`.",
    )
    monitoring_interval: float = Field(
        default=10.0, gt=0, description="Seconds between resource samples of each task."
    )

    @model_validator(mode="before")
    @classmethod
    def _inherit(cls, data: Any) -> Any:
        """Batch executors take account, partition, … from the top level unless they set them."""
        if not isinstance(data, dict) or not isinstance(data.get("executors"), dict):
            return data
        data = dict(data)
        execs = {}
        for label, spec in data["executors"].items():
            if isinstance(spec, dict) and spec.get("provider", "local") != "local":
                spec = {**{k: data[k] for k in INHERITED if data.get(k) is not None}, **spec}
            execs[label] = spec
        data["executors"] = execs
        return data

    @model_validator(mode="after")
    def _schedulable(self) -> Site:
        for label, e in self.executors.items():
            if e.provider == "slurm" and not (e.partition or e.constraint):
                raise ValueError(
                    f"executors.{label}: provider slurm needs a partition (or a constraint, on "
                    f"systems that pick nodes by constraint): set executors.{label}.partition or "
                    "the site's partition"
                )
            if e.provider == "pbspro" and not e.queue:
                raise ValueError(
                    f"executors.{label}: provider pbspro needs a queue: set executors.{label}.queue "
                    "or the site's queue"
                )
        return self

    def label_for(self, label: str) -> str:
        """The executor a resource's tasks go to: its own, else ``cpu`` for ``gpu`` and ``dft``
        (a laptop runs the GPU stages on its cores, so one campaign file runs everywhere)."""
        if label in self.executors:
            return label
        if label in ("gpu", "dft") and "cpu" in self.executors:
            return "cpu"
        raise SiteError(
            f"site {self.name!r} has no executor for resource {label!r} "
            f"(it has: {', '.join(self.executors)}); add executors.{label} to the site file"
        )

    def executor(self, label: str) -> ExecutorSpec:
        """The executor spec a resource's tasks run on (see :meth:`label_for`)."""
        return self.executors[self.label_for(label)]

    def scheduler(self) -> Literal["slurm", "pbspro"] | None:
        """The batch system ``hts submit`` talks to: ``submit.scheduler``, else the one
        scheduler the batch executors use; None on a site without (or with mixed) schedulers."""
        if self.submit.scheduler:
            return self.submit.scheduler
        kinds = {e.provider for e in self.executors.values()} - {"local"}
        return kinds.pop() if len(kinds) == 1 else None
