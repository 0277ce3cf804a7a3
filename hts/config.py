"""One way to read a settings file: YAML in, a validated pydantic model out, or one clear error.

Campaign, distillation and site files all go through :func:`read_mapping` and
:func:`validate`, so a bad file reads the same whichever kind it is: the file,
then every problem with its dotted path (``stages.prefilter.fmax: …``).  YAML's
own silent habits are refused here: a key given twice in one mapping (YAML
keeps the last one without a word) and a file that is not text.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["ConfigError", "Strict", "format_errors", "read_mapping", "validate"]

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """The base of every settings model: unknown fields are errors, and settings never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """A settings file that cannot be read or does not validate; the message names file and field."""


def _loader():
    import yaml

    class _UniqueKeys(yaml.SafeLoader):
        """A SafeLoader that refuses a key repeated within one mapping."""

    def construct_mapping(loader, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is given twice (first on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    _UniqueKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return _UniqueKeys


def read_mapping(path: str | Path, what: str, error: type[ValueError] = ConfigError) -> dict:
    """The top-level mapping of a YAML file, or ``error`` naming the file and what is wrong.

    ``what`` says which kind of file it is ("campaign file", "site file", …)
    in the messages.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise error(
            f"{path}: a {what} must be UTF-8 text ({err.reason} at byte {err.start})"
        ) from None
    except OSError as err:
        raise error(f"{path}: cannot read {what} ({err.strerror or err})") from None
    try:
        data = yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: a {what} must be a mapping of fields, got {type(data).__name__}")
    return data


def format_errors(err: ValidationError, source: str, what: str) -> str:
    """Every problem of a validation, one line each, with its path in the file."""
    lines = [f"{source}: {err.error_count()} problem(s) in the {what}"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "tagged-")))
        # pydantic puts the discriminated union member name into the path; drop it
        loc = re.sub(r"\.(substitution|files|structures)(?=\.|$)", "", loc, count=1)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see the README for the fields)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif "input" in e and e["type"] not in ("value_error", "assertion_error"):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  {loc or '<top level>'}: {msg}")
    return "\n".join(lines)


def validate(
    model: type[M],
    data: object,
    source: str,
    what: str,
    error: type[ValueError] = ConfigError,
    **extra: Any,
) -> M:
    """``model`` validated from ``data`` (plus ``extra`` fields), or ``error`` listing every problem."""
    if not isinstance(data, dict):
        raise error(f"{source}: a {what} must be a mapping of fields, got {type(data).__name__}")
    try:
        return model.model_validate({**data, **extra})
    except ValidationError as err:
        raise error(format_errors(err, source, what)) from None
