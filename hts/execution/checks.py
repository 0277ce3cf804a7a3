"""``hts sites check``: what a site resolves to here, and what is missing to use it.

The check is business logic, kept out of the CLI so it can be tested and
reused (a dashboard, a pre-submission hook): :func:`check_site` returns a
:class:`SiteCheck` and never prints; ``hts sites check`` only renders it.
Every gap is collected rather than raised, so one run shows them all: unset
environment variables, a network interface this host lacks, scheduler tools
not on PATH, a container runtime or image not found.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hts.execution.parsl_config import build_parsl_config, describe_config
from hts.execution.site_files import load_site
from hts.execution.site_schema import Site, SiteError
from hts.execution.submit import driver_job

__all__ = ["SiteCheck", "check_site"]

_TOOLS = {"slurm": ("sbatch", "squeue", "scancel"), "pbspro": ("qsub", "qstat", "qdel")}


@dataclass
class SiteCheck:
    """The outcome of :func:`check_site`.

    Attributes
    ----------
    site
        The site as loaded (unset variables left as ``<NAME>``).
    executors
        ``(label, description)`` of each executor of the resolved Parsl config;
        empty when the config could not be built (the reason is in ``missing``).
    strategy, strategy_period
        Parsl's scaling strategy and its period (s); None without a config.
    scheduler
        ``slurm``, ``pbspro`` or None (a site ``hts submit`` cannot use).
    job
        The driver job's resources for the mode checked (see
        :func:`hts.execution.submit.driver_job`); None without a scheduler.
    missing
        Every problem found, one sentence each; empty when the site is usable here.
    """

    site: Site
    executors: list[tuple[str, str]] = field(default_factory=list)
    strategy: str | None = None
    strategy_period: float | None = None
    scheduler: str | None = None
    job: dict[str, Any] | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is missing."""
        return not self.missing

    def job_fields(self) -> list[tuple[str, Any]]:
        """The driver job's fields worth showing: set, non-empty, not the mode itself."""
        if self.job is None:
            return []
        return [(k, v) for k, v in self.job.items() if v not in (None, [], "", 0) and k != "mode"]


def check_site(name_or_path: str, mode: str | None = None) -> SiteCheck:
    """Resolve a site on this host and collect what is missing to run or submit with it.

    Parameters
    ----------
    name_or_path
        A site name or a site file's path.
    mode
        The submission mode to resolve the driver job for (default: the
        site's ``submit.mode``); ``allocation`` also builds the Parsl config
        the way an in-allocation driver does.

    Raises
    ------
    SiteError
        The site file cannot be found, read or validated (unset environment
        variables are not an error here; they are reported in ``missing``).
    """
    missing: list[str] = []
    site = load_site(name_or_path, missing=missing)
    result = SiteCheck(site=site, missing=missing)
    alloc = (mode or site.submit.mode) == "allocation"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            # unresolved first, so the config can be shown even where an interface is absent,
            # then resolved, so a missing interface is reported
            cfg = build_parsl_config(site, Path(tmp), allocation=alloc, resolve_address=False)
            result.executors = describe_config(cfg)
            result.strategy, result.strategy_period = cfg.strategy, cfg.strategy_period
            build_parsl_config(site, Path(tmp), allocation=alloc)
        except (SiteError, OSError, ValueError) as err:
            missing.append(str(err))
    result.scheduler = site.scheduler()
    if result.scheduler:
        result.job = driver_job(site, mode)
        for tool in _TOOLS[result.scheduler]:
            if shutil.which(tool) is None:
                missing.append(f"{tool} not on PATH (run hts submit on a login node)")
    if site.container is not None:
        if shutil.which(site.container.runtime) is None:
            missing.append(f"container runtime {site.container.runtime} not on PATH")
        if "://" not in site.container.image and not Path(site.container.image).exists():
            missing.append(f"container image {site.container.image} not found")
    return result
