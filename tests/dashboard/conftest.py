"""The finished two-stage campaign that the dashboard's view, server and report tests read."""

from __future__ import annotations

import pytest

from hts.spec import parse_campaign
from tests.conftest import lj_campaign, run_on_parsl


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    """A small finished store (prefilter, rescore), shared: every test here only reads it."""
    tmp = tmp_path_factory.mktemp("dash")
    data = lj_campaign(tmp, limits={"max_candidates": 40, "max_atoms": 2})
    data["stages"]["rescore"] = {"model": {"name": "lennard-jones"}, "keep": "e_above_hull <= 0.05"}
    c = parse_campaign(data)
    run_on_parsl(c, tmp / "runinfo")
    return c.store
