"""Sites: what differs between machines, as data, and one factory to a Parsl config.

A facade over three modules, each one job:

* :mod:`hts.execution.site_schema` — the pydantic models (:class:`Site`,
  :class:`ExecutorSpec`, :class:`SubmitSpec`, :class:`Container`) and
  :func:`parse_walltime`;
* :mod:`hts.execution.site_files` — finding a site by name, reading its YAML,
  ``${VAR}`` expansion, :func:`load_site`;
* :mod:`hts.execution.parsl_config` — :func:`build_parsl_config` and
  :func:`describe_config`.

Existing imports (``from hts.execution.sites import load_site``) keep working;
new code may import from the module that does the job.  Nothing is built when
this module is imported.
"""

from __future__ import annotations

from hts.execution.parsl_config import build_parsl_config, describe_config, store_key
from hts.execution.site_files import expand_env, load_site, site_dirs, site_file, site_names
from hts.execution.site_schema import (
    Container,
    ExecutorSpec,
    Site,
    SiteError,
    SubmitSpec,
    parse_walltime,
)

__all__ = [
    "Container",
    "ExecutorSpec",
    "Site",
    "SiteError",
    "SubmitSpec",
    "build_parsl_config",
    "describe_config",
    "expand_env",
    "load_site",
    "parse_walltime",
    "site_dirs",
    "site_file",
    "site_names",
    "store_key",
]
