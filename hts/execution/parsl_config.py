"""One factory from a :class:`~hts.execution.site_schema.Site` to a Parsl config.

Parsl's three-way split is kept: per resource label an executor (the thread
pool in the driver, or a HighThroughputExecutor), a provider that brings nodes
(local, Slurm, PBS Pro) and a launcher that spreads one worker pool over a
block's nodes.  Parsl is imported inside the functions, never at module import,
and building a config has no side effect on the driver process: what workers
need (PATH to this environment's console scripts, thread counts, the job key)
goes into each executor's ``worker_init``.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
from pathlib import Path

from hts.execution.site_schema import ExecutorSpec, Site, SiteError

__all__ = ["build_parsl_config", "describe_config", "store_key"]


def store_key(store: Path | str) -> str:
    """A short tag for every batch job of one store (``hts cancel`` finds them by it)."""
    import hashlib

    return "hts-" + hashlib.sha1(str(Path(store).resolve()).encode()).hexdigest()[:10]


def _address(site: Site, spec: ExecutorSpec, resolve: bool = True) -> str | None:
    """The address workers reach the interchange at.

    A single-node local pool is always loopback; ``interface:NAME`` is resolved on
    this host (``resolve=False`` keeps it unresolved, for checking a site from a
    laptop); None lets workers try every address of the driver's host.
    """
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
    """How a block starts one worker pool per node (Parsl's launcher, not a task's MPI)."""
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
    """Nodes of the batch job this process runs in (Slurm or PBS), else ``default``."""
    for var in ("SLURM_JOB_NUM_NODES", "SLURM_NNODES"):
        if os.environ.get(var):
            return int(os.environ[var])
    nodefile = os.environ.get("PBS_NODEFILE")
    if nodefile and Path(nodefile).is_file():
        return len(set(Path(nodefile).read_text().split()))
    return default


def _provider(site: Site, spec: ExecutorSpec, init: str, key: str, allocation: bool):
    """Where an HTEX executor's nodes come from.

    Inside an allocation (or for a local provider) one fixed block on the nodes
    already held; otherwise Slurm or PBS blocks tagged with the store's ``key``,
    so ``hts cancel`` finds them.
    """
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

    Nothing in the driver process changes (its ``os.environ`` included): the
    environment workers need is written into each executor's ``worker_init``.

    ``allocation=True`` is the in-allocation mode of ``hts submit``: the driver
    already holds its nodes, so batch executors become a local provider whose
    launcher (srun/mpiexec) spans the job's nodes instead of asking the
    scheduler for blocks.  ``resolve_address=False`` leaves ``interface:NAME``
    unresolved, so a cluster's site can be checked from another host.
    """
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor
    from parsl.executors.high_throughput.executor import (
        DEFAULT_INTERCHANGE_LAUNCH_CMD,
        DEFAULT_LAUNCH_CMD,
    )

    # Parsl's interchange and worker pool are console scripts of this environment and
    # must be found even when the venv was never activated.  The driver's own PATH is
    # left alone: the interchange is started by absolute path, the workers get the
    # venv's bin directory through their worker_init.
    bindir = str(Path(sys.executable).parent)
    interchange = Path(bindir) / DEFAULT_INTERCHANGE_LAUNCH_CMD[0]
    # Both live and die with this driver (hts.execution.watchdog): a SIGKILLed driver
    # leaves no interchange or local worker pool behind to race the next run.
    watchdog, driver = [sys.executable, "-m", "hts.execution.watchdog"], str(os.getpid())
    watch = [*watchdog, driver]
    interchange_cmd = (
        [*watchdog, "--exec", driver, str(interchange)] if interchange.is_file() else None
    )
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
        if spec.provider == "local" and not allocation:  # the pool runs on this host
            launch = f"{shlex.join(watch)} {launch}"
        executors.append(
            HighThroughputExecutor(
                label=label,
                address=_address(site, spec, resolve_address),
                max_workers_per_node=spec.n_workers(),
                cores_per_worker=t,
                available_accelerators=spec.device_ids(),
                launch_cmd=launch,
                interchange_launch_cmd=interchange_cmd,
                worker_logdir_root=str(Path(run_dir).resolve() / "workers"),
                provider=_provider(site, spec, init, key, allocation),
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
