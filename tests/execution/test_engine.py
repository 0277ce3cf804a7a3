"""Engines and sites: the real Parsl executors, built from site files."""

from __future__ import annotations

import pytest

from hts.campaign import run_campaign
from hts.execution import make_engine
from hts.execution.sites import SiteError, build_parsl_config, load_site
from hts.spec import parse_campaign
from hts.store import open_dataset
from tests.conftest import lj_campaign


def test_shipped_sites_load():
    local = load_site("local")
    assert local.executor("cpu").kind == "threads"
    ws = load_site("workstation")
    assert ws.executor("cpu").kind == "htex"
    # GPU and DFT stages run on a site's cpu executor when it has no other: one campaign file
    assert local.label_for("gpu") == "cpu" and local.label_for("dft") == "dft"
    only_dft = local.model_copy(update={"executors": {"dft": local.executors["dft"]}})
    with pytest.raises(SiteError, match="no executor for resource 'gpu'"):
        only_dft.executor("gpu")


def test_bad_site_names_the_field(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: bad\nexecutors:\n  cpu:\n    kind: mpi\n")
    with pytest.raises(SiteError, match=r"bad.yaml: executors.cpu.kind"):
        load_site(str(p))
    with pytest.raises(SiteError, match="not found"):
        load_site("nosuchsite")


def test_parsl_config_has_one_executor_per_label(tmp_path):
    cfg = build_parsl_config(load_site("workstation"), tmp_path)
    assert [e.label for e in cfg.executors] == ["cpu", "dft"]
    assert type(cfg.executors[0]).__name__ == "HighThroughputExecutor"
    assert "OMP_NUM_THREADS=1" in cfg.executors[0].provider.worker_init
    # DFT tasks only wait on their job process: threads in the driver
    assert type(cfg.executors[1]).__name__ == "ThreadPoolExecutor"


def test_campaign_on_local_htex(tmp_path):
    """The workstation site: worker processes that keep their model across tasks."""
    c = parse_campaign(lj_campaign(tmp_path, limits={"max_candidates": 16}, site="workstation"))
    eng = make_engine("parsl", "workstation", tmp_path / "runinfo")
    try:
        stats = run_campaign(c, eng)
    finally:
        eng.close()
    assert stats.done == stats.ok == 16
    assert open_dataset(c.store).sizes["candidate"] == 16
