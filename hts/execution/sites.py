"""Sites: what differs between machines, as data, and one factory to a Parsl config.

A site file (``sites/<name>.yaml``) names, per resource label (``cpu``,
``gpu``), how tasks run there.  Stages ask for a label; the site supplies an
executor for it.  Nothing is built when this module is imported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["ExecutorSpec", "Site", "SiteError", "build_parsl_config", "load_site"]


class SiteError(ValueError):
    """A site that cannot be loaded; the message names the file and field."""


class ExecutorSpec(BaseModel):
    """How one resource label's tasks run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["threads", "htex"] = Field(
        description="threads: Parsl ThreadPoolExecutor in the driver; htex: local HighThroughputExecutor."
    )
    workers: int | Literal["auto"] = Field(
        default="auto", description="Concurrent tasks; auto = cores // threads_per_worker."
    )
    threads_per_worker: int = Field(default=1, ge=1, le=256)
    worker_init: str = Field(default="", description="Shell lines run before HTEX workers start.")
    mpi_launcher: Literal["none", "mpiexec", "srun"] = Field(
        default="none",
        description="How a task starts a parallel code (DFT): none runs it as one process.",
    )
    ranks_per_task: int = Field(
        default=1,
        ge=1,
        le=100_000,
        description="MPI ranks of a parallel code, unless the campaign says.",
    )

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
            return ["srun", "--ntasks", str(n), "--cpus-per-task", "1", "--exact"]
        return ["mpiexec", "-n", str(n)]

    def n_workers(self) -> int:
        if self.workers == "auto":
            return max(1, (os.cpu_count() or 1) // self.threads_per_worker)
        return max(1, int(self.workers))


class Site(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    executors: dict[Literal["cpu", "gpu", "dft"], ExecutorSpec] = Field(min_length=1)
    monitoring: bool = Field(
        default=False,
        description="Parsl monitoring into <store>.parsl/monitoring.db: tasks, workers and blocks "
        "for `hts dashboard`.",
    )
    monitoring_interval: float = Field(
        default=10.0, gt=0, description="Seconds between resource samples of each task."
    )

    def executor(self, label: str) -> ExecutorSpec:
        if label not in self.executors:
            raise SiteError(
                f"site {self.name!r} has no executor for resource {label!r} "
                f"(it has: {', '.join(self.executors)}); add executors.{label} to the site file"
            )
        return self.executors[label]


def _site_dirs() -> list[Path]:
    here = Path(__file__).resolve()
    return [Path.cwd() / "sites", here.parents[2] / "sites", here.parents[1] / "data" / "sites"]


def load_site(name_or_path: str) -> Site:
    """A site by name (``sites/<name>.yaml`` in the working directory or the project) or by path."""
    p = Path(name_or_path)
    candidates = (
        [p] if p.suffix in (".yaml", ".yml") else [d / f"{name_or_path}.yaml" for d in _site_dirs()]
    )
    for c in candidates:
        if c.is_file():
            try:
                data = yaml.safe_load(c.read_text())
                return Site.model_validate(data)
            except ValidationError as err:
                problems = "; ".join(
                    f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in err.errors()
                )
                raise SiteError(f"{c}: {problems}") from None
            except yaml.YAMLError as err:
                raise SiteError(f"{c}: not valid YAML: {err}") from None
    raise SiteError(
        f"site {name_or_path!r} not found (looked for {', '.join(str(c) for c in candidates)})"
    )


def build_parsl_config(site: Site, run_dir: Path, retries: int = 0):
    """One Parsl executor per resource label of the site."""
    import sys

    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor
    from parsl.providers import LocalProvider

    # Parsl's interchange and worker pool are console scripts of this environment:
    # make sure they are found even when the venv was never activated.
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    executors = []
    for label, spec in site.executors.items():
        if spec.kind == "threads":
            executors.append(ThreadPoolExecutor(label=label, max_threads=spec.n_workers()))
        else:
            t = spec.threads_per_worker
            init = "\n".join(
                [
                    f"export PATH={bindir}:$PATH",
                    f"export OMP_NUM_THREADS={t} MKL_NUM_THREADS={t}",
                    "export TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1",
                    spec.worker_init,
                ]
            )
            executors.append(
                HighThroughputExecutor(
                    label=label,
                    address="127.0.0.1",
                    max_workers_per_node=spec.n_workers(),
                    cores_per_worker=t,
                    provider=LocalProvider(
                        init_blocks=1, min_blocks=1, max_blocks=1, worker_init=init
                    ),
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
        strategy="none",
    )
