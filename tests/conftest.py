"""Shared fixtures: small real campaigns on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]


def lj_campaign(tmp_path: Path, **overrides) -> dict:
    """A substitution campaign with the analytic potential: the whole engine in seconds."""
    data = {
        "name": "lj-test",
        "candidates": {
            "kind": "substitution",
            "prototypes": ["rocksalt", "zincblende", "cscl", "fluorite"],
            "elements": {"A": ["Li", "Na", "K", "Mg", "Ca", "Sr"], "X": ["O", "S", "F", "Cl"]},
        },
        "stages": {
            "prefilter": {"model": {"name": "lennard-jones"}, "keep": "e_above_hull <= 0.05"}
        },
        "store": str(tmp_path / "lj.zarr"),
        "chunk_size": 4,
    }
    for key, value in overrides.items():
        data[key] = value
    return data


def run_on_parsl(campaign, run_dir: Path):
    """Run (or resume) a campaign on the real Parsl engine of its site, always closing it."""
    from hts.campaign import run_campaign
    from hts.execution import make_engine

    eng = make_engine("parsl", campaign.site, run_dir)
    try:
        return run_campaign(campaign, eng)
    finally:
        eng.close()


def write_campaign(tmp_path: Path, data: dict, name: str = "campaign.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def sevennet0():
    """SevenNet-0 on the CPU, built once for the session (building it takes seconds): for tests
    that only predict with it; a test of loading itself calls ``load_model``."""
    from hts.models import load_model
    from hts.spec import ModelSpec

    return load_model(ModelSpec(name="sevennet-0", device="cpu"))


@pytest.fixture
def lj_campaign_file(tmp_path: Path) -> Path:
    return write_campaign(tmp_path, lj_campaign(tmp_path))


def hts_cmd(*args: str) -> list[str]:
    """``hts ARGS`` as a subprocess command line, with this interpreter."""
    import sys

    return [sys.executable, "-m", "hts.cli", *args]


def kill_run_after(campaign_file: Path, store: Path, rows: int, cwd: Path) -> int:
    """Start ``hts run`` and SIGKILL it once ``rows`` candidates are committed; returns how many were.

    The reader polls the store while the run writes (as a user's `hts status` would), so the kill
    lands mid-stream; fails if the run ends or errors first, or nothing is committed in 120 s.
    """
    import signal
    import subprocess
    import time

    from hts.store import open_dataset

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        hts_cmd("run", str(campaign_file), "-q"),
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    committed = 0
    while time.time() < deadline:
        try:
            committed = open_dataset(store).sizes["candidate"]
        except (FileNotFoundError, RuntimeError, KeyError):
            committed = 0
        if committed >= rows:
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return committed
