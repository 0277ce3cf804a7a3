"""Container recipes cannot be built here (no container runtime): check them against the pins.

Every package a recipe installs with a version must carry the version that
``pyproject.toml`` (or the Makefile, for the build-order installs) pins, the
torch build must match its stack, and the image must run ``hts``.
"""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.conftest import REPO

RECIPES = {
    "cuda": REPO / "Singularityfile",
    "rocm": REPO / "containers" / "rocm.def",
}


def _pins() -> dict[str, str]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"])
    for extra in meta["optional-dependencies"].values():
        reqs += extra
    out = {}
    for r in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^;\s]+)", r.strip())
        if m:
            out[m[1].lower()] = m[2]
    return out


def _installs(text: str) -> dict[str, str]:
    """``name==version`` words of the recipe's pip install lines."""
    post = text.split("%post", 1)[1].split("%runscript", 1)[0]
    return {
        m[1].lower(): m[2]
        for m in re.finditer(r"\b([A-Za-z][A-Za-z0-9_.\-]*)==([0-9][^\s\"']*)", post)
    }


@pytest.mark.parametrize("stack", sorted(RECIPES))
def test_recipe_matches_the_pins(stack):
    text = RECIPES[stack].read_text()
    pins = _pins()
    installs = _installs(text)
    assert {"torch", "mpich", "gpaw"} <= set(installs), installs
    for name, version in installs.items():
        assert pins.get(name) == version, (
            f"{RECIPES[stack].name}: {name}=={version}, pyproject pins {pins.get(name)}"
        )
    assert (
        "Bootstrap: docker" in text and "python:3.11" in text
    )  # the interpreter the pins resolve for
    index = re.search(r"torch==\S+ --index-url (\S+)", text)
    assert index and index[1].rsplit("/", 1)[-1].startswith("cu" if stack == "cuda" else "rocm")
    assert (
        "containers/gpaw/siteconfig.py" in text
        and (REPO / "containers/gpaw/siteconfig.py").is_file()
    )
    assert re.search(r'pip install [^\n]*"/opt/hts-src\[dft\]"', text)  # hts itself, with its pins
    runscript = text.split("%runscript", 1)[1].split("%", 1)[0]
    assert "exec /opt/venv/bin/hts" in runscript


def test_cuda_recipe_is_the_singularityfile():
    assert (REPO / "containers" / "cuda.def").resolve() == (REPO / "Singularityfile").resolve()
