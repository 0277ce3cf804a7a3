"""``hts submit`` against a real Slurm (``make test-slurm`` starts a single-node one).

Each test submits with the real CLI, watches ``squeue``, and checks the store the
batch job wrote.  The LJ potential keeps the science cheap; everything else is
the production path: sbatch, Parsl's SlurmProvider blocks, srun, the walltime.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from hts.campaign import run_campaign
from hts.candidates import chunks, open_source
from hts.execution import make_engine
from hts.execution.sites import store_key
from hts.report import summarize
from hts.spec import load_campaign
from hts.store import open_dataset
from tests.conftest import lj_campaign, write_campaign

pytestmark = pytest.mark.slurm

HTS = [sys.executable, "-m", "hts.cli"]


@pytest.fixture(scope="module", autouse=True)
def slurm_up():
    if shutil.which("sbatch") is None:
        pytest.fail("no sbatch on PATH: start the test cluster with `.ci/slurm.sh start`")
    r = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        pytest.fail(f"Slurm does not answer (SLURM_CONF set?): {r.stderr.strip()}")


def ci_site(tmp_path: Path, launcher: str = "single", **submit) -> Path:
    """The test cluster: one node, partition debug; driver and one 1-core block side by side."""
    data = {
        "name": "ci-slurm",
        "description": "the single-node Slurm of .ci/slurm.sh",
        "partition": "debug",
        "address": "127.0.0.1",
        "strategy_period": 1,
        "max_idletime": 5,
        "submit": {"cpus": 1, "walltime": "00:10:00", "stop_before_s": 0, **submit},
        "executors": {
            "cpu": {
                "kind": "htex",
                "provider": "slurm",
                "launcher": launcher,
                "workers": 1,
                "cores_per_node": 1,
                "exclusive": False,
                "walltime": "00:10:00",
                # the tests' checkout, for the workers' imports (the venv is added by hts)
                "worker_init": f"cd {Path.cwd()}",
            }
        },
    }
    p = tmp_path / "ci-slurm.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def long_campaign(tmp_path: Path, site: Path) -> Path:
    """~950 LJ candidates relaxed to a tight fmax in small steps: several minutes of one core, far longer
    than a 1-min walltime (the engine got faster: the previous settings finished inside it)."""
    data = lj_campaign(
        tmp_path,
        name="long-lj",
        site=str(site),
        chunk_size=8,
        candidates={
            "kind": "substitution",
            "prototypes": [
                "rocksalt",
                "zincblende",
                "wurtzite",
                "cscl",
                "fluorite",
                "perovskite",
                "spinel",
                "rutile",
            ],
            "elements": {
                "A": [
                    "Li",
                    "Na",
                    "K",
                    "Rb",
                    "Cs",
                    "Mg",
                    "Ca",
                    "Sr",
                    "Ba",
                    "Zn",
                    "Cd",
                    "Mn",
                    "Fe",
                    "Co",
                    "Ni",
                    "Cu",
                ],
                "B": ["Ti", "Zr", "Hf", "Sn", "Ge", "Si", "Al", "Ga", "In", "V", "Cr", "Nb"],
                "X": ["O", "S", "Se", "Te", "F", "Cl", "Br", "I"],
            },
        },
        stages={
            "prefilter": {
                "model": {"name": "lennard-jones"},
                "keep": "e_above_hull <= 0.05",
                "relax": {"fmax": 0.0002, "max_steps": 6000, "max_step": 0.01},
            }
        },
    )
    return write_campaign(tmp_path, data, "long.yaml")


def hts(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([*HTS, *args], capture_output=True, text=True, cwd=cwd, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(
            f"hts {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        )
    return r


def submit(campaign: Path, *args: str) -> str:
    r = hts("submit", str(campaign), *args, cwd=campaign.parent)
    return r.stdout.split(" as slurm job ")[1].split()[0]


def jobs_of(store: Path) -> list[tuple[str, str, str]]:
    """(job id, state, name) of every queued/running job carrying the store's key."""
    r = subprocess.run(
        ["squeue", "--noheader", "--format=%i|%T|%j|%k"], capture_output=True, text=True, check=True
    )
    key = store_key(store)
    return [
        tuple(line.split("|")[:3]) for line in r.stdout.splitlines() if line.split("|")[3] == key
    ]


def job_state(job_id: str) -> str:
    r = subprocess.run(
        ["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True
    )
    return next(w.split("=", 1)[1] for w in r.stdout.split() if w.startswith("JobState="))


def wait_for_end(job_id: str, store: Path, timeout: float, seen: list | None = None) -> str:
    """Poll until the driver leaves the queue; ``seen`` collects every squeue snapshot."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        snapshot = jobs_of(store)
        if seen is not None and snapshot:
            seen.append(snapshot)
        if not any(j[0] == job_id for j in snapshot):
            return job_state(job_id)
        time.sleep(1)
    subprocess.run(["scancel", job_id])
    raise AssertionError(f"job {job_id} still in the queue after {timeout} s")


def no_jobs_left(store: Path, timeout: float = 30) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if not jobs_of(store):
            return True
        time.sleep(1)
    return False


def expected_ids(campaign_path: Path) -> set[str]:
    c = load_campaign(campaign_path)
    return {cand.id for ch in chunks(open_source(c), c.chunk_size) for cand in ch.candidates}


@pytest.fixture
def cleanup():
    stores: list[Path] = []
    yield stores
    for store in stores:  # a failed test must not leave jobs running on the node
        ids = [j[0] for j in jobs_of(store)]
        if ids:
            subprocess.run(["scancel", *ids])


def test_pilot_submission_gets_worker_blocks_from_slurm(tmp_path, cleanup):
    site = ci_site(tmp_path)
    campaign = write_campaign(tmp_path, lj_campaign(tmp_path, site=str(site)))
    store = tmp_path / "lj.zarr"
    cleanup.append(store)
    job = submit(campaign)
    script = (tmp_path / "lj.zarr.jobs" / "driver-1.sh").read_text()
    assert (
        "#SBATCH --partition=debug" in script and f"#SBATCH --comment={store_key(store)}" in script
    )
    seen: list = []
    assert wait_for_end(job, store, timeout=240, seen=seen) == "COMPLETED"
    # the driver asked Slurm for a worker block through Parsl's SlurmProvider
    names = {name for snap in seen for _, _, name in snap}
    states = {(name.split(".")[0], state) for snap in seen for _, state, name in snap}
    assert any(n.startswith("parsl.cpu.block-0") for n in names), names
    assert ("parsl", "RUNNING") in states and ("hts-campaign", "RUNNING") in states
    assert no_jobs_left(store), "the driver left its block running"
    ds = open_dataset(store)
    assert ds.sizes["candidate"] == len(expected_ids(campaign))
    assert set(ds["id"].values) == expected_ids(campaign)
    status = hts("status", str(store), cwd=tmp_path).stdout
    assert "batch jobs of this store" in status and "COMPLETED" in status and job in status


def test_allocation_and_mpi_modes_equal_the_thread_pool(tmp_path, cleanup):
    """Inside one allocation (srun-launched workers) and under srun --mpi=pmi2 --engine mpi:
    the same rows and values as the local thread pool."""
    site = ci_site(tmp_path, launcher="srun", cpus=2, ranks_per_node=2)
    data = lj_campaign(tmp_path, site=str(site))
    ref = load_campaign(
        write_campaign(
            tmp_path, {**data, "site": "local", "store": str(tmp_path / "ref.zarr")}, "ref.yaml"
        )
    )
    eng = make_engine("parsl", "local", tmp_path / "ref.parsl")
    try:
        run_campaign(ref, eng)
    finally:
        eng.close()
    want = open_dataset(ref.store).load()
    order = np.argsort(want["id"].values)
    for mode in ("allocation", "mpi"):
        store = tmp_path / f"{mode}.zarr"
        cleanup.append(store)
        campaign = write_campaign(tmp_path, {**data, "store": str(store)}, f"{mode}.yaml")
        job = submit(campaign, "--mode", mode)
        assert wait_for_end(job, store, timeout=240) == "COMPLETED", (
            tmp_path / f"{mode}.zarr.jobs" / f"driver-{job}.out"
        ).read_text()[-3000:]
        log = (tmp_path / f"{mode}.zarr.jobs" / f"driver-{job}.out").read_text()
        assert ("mpi: 2 ranks" in log) if mode == "mpi" else ("SrunLauncher" in log)
        got = open_dataset(store).load()
        o = np.argsort(got["id"].values)
        assert list(got["id"].values[o]) == list(want["id"].values[order])
        for var in ("energy", "formation_energy", "e_above_hull"):
            np.testing.assert_allclose(got[var].values[o], want[var].values[order], atol=1e-9)
        np.testing.assert_array_equal(got["kept"].values[o], want["kept"].values[order])


@pytest.fixture
def long_run(tmp_path, cleanup) -> tuple[Path, Path]:
    """The long campaign on the test cluster, and its store (cleaned up after the test)."""
    campaign = long_campaign(tmp_path, ci_site(tmp_path))
    store = tmp_path / "lj.zarr"
    cleanup.append(store)
    return campaign, store


def test_walltime_kill_then_resubmit_resumes(tmp_path, long_run):
    campaign, store = long_run
    ids = expected_ids(campaign)
    first = submit(campaign, "--walltime", "1")  # Slurm's smallest: one minute
    assert wait_for_end(first, store, timeout=240) == "TIMEOUT"
    # on SIGTERM at the limit the driver cancelled its block and kept what it had committed
    assert no_jobs_left(store), "the killed driver left its block running"
    partial = open_dataset(store)
    n_first = partial.sizes["candidate"]
    assert 0 < n_first < len(ids), n_first
    assert len(set(partial["id"].values)) == n_first
    second = submit(campaign, "--walltime", "15")
    assert wait_for_end(second, store, timeout=600) == "COMPLETED"
    log = (tmp_path / "lj.zarr.jobs" / f"driver-{second}.out").read_text()
    assert "resumed from the store" in log
    ds = open_dataset(store)
    assert ds.sizes["candidate"] == len(ids)
    assert set(ds["id"].values) == ids  # each candidate exactly once
    funnel = summarize(store)["stages"][0]
    assert funnel["ok"] == len(ids) and funnel["failed"] == 0
    status = hts("status", str(store), cwd=tmp_path).stdout
    assert "TIMEOUT" in status and "COMPLETED" in status


def test_cancel_stops_the_driver_and_its_blocks(tmp_path, long_run):
    campaign, store = long_run
    job = submit(campaign)
    t0 = time.time()
    while not any(
        name.startswith("parsl.cpu") and state == "RUNNING" for _, state, name in jobs_of(store)
    ):
        assert time.time() - t0 < 120, "no worker block started"
        time.sleep(1)
    again = hts("submit", str(campaign), cwd=tmp_path, check=False)
    assert again.returncode == 2 and "two drivers must never write one store" in again.stderr
    out = hts("cancel", str(store), cwd=tmp_path).stdout
    assert job in out
    assert no_jobs_left(store)
    assert job_state(job) == "CANCELLED"
    ds = open_dataset(store)  # what was committed is intact
    assert len(set(ds["id"].values)) == ds.sizes["candidate"]
