"""Sites: what differs between machines, as data, and one factory to a Parsl config.

A site file (``sites/<name>.yaml``) names, per resource label (``cpu``, ``gpu``,
``dft``), how tasks run there: the executor (Parsl's thread pool in the driver,
or a HighThroughputExecutor), the provider that brings nodes (the local machine,
Slurm, PBS Pro), the launcher that spreads workers over a block's nodes, workers
per node and GPUs per node (one worker per GPU, pinned through Parsl's
``available_accelerators``).  Its ``submit`` section says how ``hts submit``
sends the campaign's driver to the batch system.  String values may name
environment variables (``${HTS_ACCOUNT}``, ``${HTS_QOS:-regular}``), so one
shipped site file serves every project.  Nothing is built when this module is
imported; :func:`build_parsl_config` builds the Parsl objects on demand.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "Container",
    "ExecutorSpec",
    "Site",
    "SiteError",
    "SubmitSpec",
    "build_parsl_config",
    "load_site",
    "site_names",
]

Label = Literal["cpu", "gpu", "dft"]
_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?$")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^{}]*))?\}")
#: keys a batch executor inherits from the site's top level when it does not set them
_INHERITED = ("account", "partition", "qos", "constraint", "queue")


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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Container(_Strict):
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


class _Batch(_Strict):
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
        return len(self.accelerators) if self.accelerators is not None else self.gpus_per_node

    def device_ids(self) -> list[str]:
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
    """The driver job ``hts submit`` sends; fields left out come from the site (see :meth:`Site.job`)."""

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


class Site(_Strict):
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
                spec = {**{k: data[k] for k in _INHERITED if data.get(k) is not None}, **spec}
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
        return self.executors[self.label_for(label)]

    def scheduler(self) -> Literal["slurm", "pbspro"] | None:
        if self.submit.scheduler:
            return self.submit.scheduler
        kinds = {e.provider for e in self.executors.values()} - {"local"}
        return kinds.pop() if len(kinds) == 1 else None

    def job(self, mode: str | None = None) -> dict[str, Any]:
        """The driver job's resources for ``mode``: site defaults, then (allocation and MPI modes)
        the worker nodes' — the GPU executor's partition, GPUs and cores — then ``submit``'s own."""
        s = self.submit
        mode = mode or s.mode
        job: dict[str, Any] = {k: getattr(self, k) for k in _INHERITED}
        job.update(gpus_per_node=0, cpus=s.cpus, nodes=1)
        if mode != "pilot":
            batch = [e for e in self.executors.values() if e.provider != "local"]
            worker = next((e for e in batch if e.n_gpus()), batch[0] if batch else None)
            if worker is not None:
                job.update({k: getattr(worker, k) for k in _INHERITED if getattr(worker, k)})
                job["gpus_per_node"] = worker.n_gpus()
                if worker.cores_per_node:
                    job["cpus"] = worker.cores_per_node
            job["nodes"] = s.nodes
        for k in (*_INHERITED, "gpus_per_node", "walltime"):
            if k in s.model_fields_set or k not in job:
                job[k] = getattr(s, k)
        job.update(
            mode=mode,
            scheduler_options=list(s.scheduler_options),
            ranks_per_node=s.ranks_per_node,
        )
        return job


def site_dirs() -> list[Path]:
    here = Path(__file__).resolve()
    return [Path.cwd() / "sites", here.parents[2] / "sites", here.parents[1] / "data" / "sites"]


def site_names() -> list[str]:
    names: set[str] = set()
    for d in site_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def _expand(obj: Any, missing: list[str], path: str = "") -> Any:
    """``${VAR}`` and ``${VAR:-default}`` in strings; unset variables go to ``missing``."""
    if isinstance(obj, dict):
        return {k: _expand(v, missing, f"{path}.{k}" if path else str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_expand(v, missing, f"{path}[{i}]") for i, v in enumerate(obj)]
    if not isinstance(obj, str):
        return obj

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ and os.environ[name] != "":
            return os.environ[name]
        if default is not None:
            return default
        missing.append(f"{path}: environment variable {name} is not set")
        return f"<{name}>"

    value = obj
    while _ENV.search(value):  # innermost first: ${A:-${B}} falls back to B
        value = _ENV.sub(sub, value)
    return None if value == "" and obj.startswith("${") and obj.endswith("}") else value


def site_file(name_or_path: str) -> Path:
    p = Path(name_or_path)
    candidates = (
        [p] if p.suffix in (".yaml", ".yml") else [d / f"{name_or_path}.yaml" for d in site_dirs()]
    )
    for c in candidates:
        if c.is_file():
            return c
    raise SiteError(
        f"site {name_or_path!r} not found (looked for {', '.join(str(c) for c in candidates)}; "
        f"known sites: {', '.join(site_names())})"
    )


def load_site(name_or_path: str, *, missing: list[str] | None = None) -> Site:
    """A site by name (``sites/<name>.yaml`` in the working directory or the project) or by path.

    Unset environment variables named in the file are an error, unless ``missing`` is given:
    then they are collected there (for ``hts sites check``) and left as ``<NAME>``.
    """
    c = site_file(name_or_path)
    try:
        data = yaml.safe_load(c.read_text())
    except yaml.YAMLError as err:
        raise SiteError(f"{c}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SiteError(f"{c}: a site file is a mapping (name, executors, …)")
    unset: list[str] = []
    data = _expand(data, unset)
    if unset and missing is None:
        raise SiteError(
            f"{c}: {'; '.join(unset)} (export it, or write the value into the site file)"
        )
    if missing is not None:
        missing.extend(unset)
    try:
        return Site.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'site'}: {e['msg'].removeprefix('Value error, ')}"
            for e in err.errors()
        )
        raise SiteError(f"{c}: {problems}") from None


def store_key(store: Path | str) -> str:
    """A short tag for every batch job of one store (``hts cancel`` finds them by it)."""
    import hashlib

    return "hts-" + hashlib.sha1(str(Path(store).resolve()).encode()).hexdigest()[:10]


def _address(site: Site, spec: ExecutorSpec, resolve: bool = True) -> str | None:
    if spec.provider == "local" and spec.launcher == "single":
        return "127.0.0.1"
    if site.address and site.address.startswith("interface:"):
        if not resolve:
            return site.address
        from parsl.addresses import address_by_interface

        name = site.address.split(":", 1)[1]
        try:
            return address_by_interface(name)
        except OSError:
            raise SiteError(
                f"site {site.name!r}: network interface {name!r} not found on this host "
                "(run on the cluster's login or compute nodes, or set the site's address)"
            ) from None
    return site.address


def _launcher(spec: ExecutorSpec, allocation: bool):
    from parsl.launchers import MpiExecLauncher, SingleNodeLauncher, SrunLauncher

    if spec.launcher == "srun":
        opts = spec.launcher_options
        if allocation:  # several executors share the job's nodes: each step overlaps the others
            cores = spec.cores_per_node or "$SLURM_CPUS_ON_NODE"
            opts = f"--overlap --ntasks-per-node=1 --cpus-per-task={cores} {opts}".strip()
        return SrunLauncher(overrides=opts)
    if spec.launcher == "mpiexec":
        return MpiExecLauncher(
            bind_cmd="--bind-to", overrides=f"--ppn 1 {spec.launcher_options}".strip()
        )
    return SingleNodeLauncher()


def _allocation_nodes(default: int) -> int:
    for var in ("SLURM_JOB_NUM_NODES", "SLURM_NNODES"):
        if os.environ.get(var):
            return int(os.environ[var])
    nodefile = os.environ.get("PBS_NODEFILE")
    if nodefile and Path(nodefile).is_file():
        return len(set(Path(nodefile).read_text().split()))
    return default


def _provider(site: Site, label: str, spec: ExecutorSpec, init: str, key: str, allocation: bool):
    from parsl.providers import LocalProvider, PBSProProvider, SlurmProvider

    launcher = _launcher(spec, allocation)
    if spec.provider == "local" or allocation:
        nodes = (
            _allocation_nodes(site.submit.nodes)
            if allocation and spec.provider != "local"
            else spec.nodes_per_block
        )
        if spec.launcher == "single":
            nodes = 1
        return LocalProvider(
            nodes_per_block=nodes,
            init_blocks=1,
            min_blocks=1,
            max_blocks=1,
            worker_init=init,
            launcher=launcher,
        )
    common = dict(
        nodes_per_block=spec.nodes_per_block,
        init_blocks=spec.init_blocks,
        min_blocks=spec.min_blocks,
        max_blocks=spec.max_blocks,
        walltime=spec.walltime,
        worker_init=init,
        launcher=launcher,
    )
    if spec.provider == "slurm":
        return SlurmProvider(
            partition=spec.partition,
            account=spec.account,
            qos=spec.qos,
            constraint=spec.constraint,
            cores_per_node=spec.cores_per_node,
            mem_per_node=spec.mem_per_node,
            gpus_per_node=spec.n_gpus() or None,
            exclusive=spec.exclusive,
            scheduler_options="\n".join([f"#SBATCH --comment={key}", *spec.scheduler_options]),
            **common,
        )
    select = f":ngpus={spec.n_gpus()}" if spec.n_gpus() else ""
    return PBSProProvider(
        account=spec.account,
        queue=spec.queue,
        cpus_per_node=spec.cores_per_node or 1,
        select_options=select,
        scheduler_options="\n".join(spec.scheduler_options),
        **common,
    )


def build_parsl_config(
    site: Site,
    run_dir: Path,
    retries: int = 0,
    *,
    store: Path | None = None,
    allocation: bool = False,
    resolve_address: bool = True,
):
    """One Parsl executor per resource label of the site.

    ``allocation=True`` is the in-allocation mode of ``hts submit``: the driver already holds
    its nodes, so batch executors become a local provider whose launcher (srun/mpiexec) spans
    the job's nodes instead of asking the scheduler for blocks.
    """
    import sys

    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor
    from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD

    # Parsl's interchange and worker pool are console scripts of this environment:
    # make sure they are found even when the venv was never activated.
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    key = store_key(store or run_dir)
    executors = []
    batch = False
    for label, spec in site.executors.items():
        if spec.kind == "threads":
            executors.append(ThreadPoolExecutor(label=label, max_threads=spec.total_workers()))
            continue
        batch |= spec.provider != "local" and not allocation
        t = spec.threads_per_worker
        init = "\n".join(
            line
            for line in [
                spec.worker_init,
                f"export PATH={bindir}:$PATH" if site.container is None else "",
                f"export OMP_NUM_THREADS={t} MKL_NUM_THREADS={t} OPENBLAS_NUM_THREADS={t}",
                "export TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1",
                f"export HTS_JOB_KEY={key}",
            ]
            if line
        )
        launch = DEFAULT_LAUNCH_CMD
        if site.container is not None:
            launch = f"{site.container.prefix()} {launch}"
        executors.append(
            HighThroughputExecutor(
                label=label,
                address=_address(site, spec, resolve_address),
                max_workers_per_node=spec.n_workers(),
                cores_per_worker=t,
                available_accelerators=spec.device_ids(),
                launch_cmd=launch,
                worker_logdir_root=str(Path(run_dir).resolve() / "workers"),
                provider=_provider(site, label, spec, init, key, allocation),
            )
        )
    monitoring = None
    if site.monitoring:
        from parsl.monitoring import MonitoringHub

        monitoring = MonitoringHub(
            logging_endpoint=f"sqlite:///{Path(run_dir).resolve() / 'monitoring.db'}",
            resource_monitoring_interval=site.monitoring_interval,
        )
    return Config(
        executors=executors,
        monitoring=monitoring,
        run_dir=str(run_dir),
        retries=retries,
        usage_tracking=0,
        initialize_logging=True,
        strategy="htex_auto_scale" if batch else "none",
        strategy_period=site.strategy_period,
        max_idletime=site.max_idletime,
    )


def describe_config(config) -> list[tuple[str, str]]:
    """The resolved Parsl config as (label, description) lines, for logs and ``hts sites check``."""
    rows = []
    for ex in config.executors:
        kind = type(ex).__name__
        if kind == "ThreadPoolExecutor":
            rows.append((ex.label, f"ThreadPoolExecutor(max_threads={ex.max_threads})"))
            continue
        p = ex.provider
        fields = {
            k: getattr(p, k, None)
            for k in (
                "partition",
                "account",
                "qos",
                "constraint",
                "queue",
                "nodes_per_block",
                "init_blocks",
                "min_blocks",
                "max_blocks",
                "walltime",
                "cores_per_node",
                "gpus_per_node",
                "exclusive",
            )
        }
        prov = ", ".join(f"{k}={v!r}" for k, v in fields.items() if v not in (None, ""))
        w = ex.max_workers_per_node
        rows.append(
            (
                ex.label,
                f"HighThroughputExecutor(workers/node={'all cores' if math.isinf(w) else w}, "
                f"accelerators={list(ex.available_accelerators) or '-'}, address={ex.address or 'any'}) "
                f"on {type(p).__name__}({prov}) with {type(p.launcher).__name__}",
            )
        )
    return rows
