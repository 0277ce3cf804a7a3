"""Finding and reading site files: names, ``${VAR}`` expansion, validation.

A site is looked up by name (``sites/<name>.yaml`` in the working directory,
the project checkout, or the installed package's data) or by path.  String
values may name environment variables (``${HTS_ACCOUNT}``,
``${HTS_QOS:-regular}``), so one shipped site file serves every project; the
expansion happens between reading the YAML and validating it, so a missing
variable is reported with the field it fills.  Reading goes through
:func:`hts.config.read_mapping`, the reader campaign files use: a key given
twice or a file that is not UTF-8 is an error, not a silent surprise.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from hts.config import read_mapping, validate
from hts.execution.site_schema import Site, SiteError

__all__ = ["expand_env", "load_site", "site_dirs", "site_file", "site_names"]

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^{}]*))?\}")


def site_dirs() -> list[Path]:
    """Where site names are looked up, first match wins: ./sites, the checkout, the package."""
    here = Path(__file__).resolve()
    return [Path.cwd() / "sites", here.parents[2] / "sites", here.parents[1] / "data" / "sites"]


def site_names() -> list[str]:
    """Every site name found in :func:`site_dirs`, sorted."""
    names: set[str] = set()
    for d in site_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def expand_env(obj: Any, missing: list[str], path: str = "") -> Any:
    """``${VAR}`` and ``${VAR:-default}`` in every string of ``obj``.

    Unset (or empty) variables without a default are appended to ``missing``
    as ``"<dotted.path>: environment variable NAME is not set"`` and left as
    ``<NAME>``, so a caller can either refuse the file or show every gap at
    once (``hts sites check``).  A value that is nothing but an empty
    expansion becomes None, so ``${HTS_ACCOUNT:-}`` means "not set".
    """
    if isinstance(obj, dict):
        return {
            k: expand_env(v, missing, f"{path}.{k}" if path else str(k)) for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [expand_env(v, missing, f"{path}[{i}]") for i, v in enumerate(obj)]
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
    """The file of a site given by name or by path (``.yaml``/``.yml``), or SiteError."""
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
    """A validated site by name (``sites/<name>.yaml``) or by path.

    Parameters
    ----------
    name_or_path
        A site name looked up in :func:`site_dirs`, or a path to a YAML file.
    missing
        Unset environment variables named in the file are an error, unless
        this list is given: then they are collected there (for
        ``hts sites check``) and left as ``<NAME>``.

    Raises
    ------
    SiteError
        The file is not found, not UTF-8, not YAML, repeats a key, names an
        unset variable, or does not validate; the message names the file and
        every bad field.
    """
    c = site_file(name_or_path)
    data = read_mapping(c, "site file", SiteError)
    unset: list[str] = []
    data = expand_env(data, unset)
    if unset and missing is None:
        raise SiteError(
            f"{c}: {'; '.join(unset)} (export it, or write the value into the site file)"
        )
    if missing is not None:
        missing.extend(unset)
    return validate(Site, data, str(c), "site file", SiteError)
