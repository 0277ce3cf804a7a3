"""Engines and sites: the real Parsl executors, built from site files, and one protocol for all.

:func:`check_engine` is the conformance test of :class:`hts.execution.engine.Engine`:
the serial engine, Parsl's thread pool and (under ``mpiexec``, ``-m mpi``) the MPI
engine must all pass it alike.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path

import pytest
import yaml

from hts.campaign import run_campaign
from hts.execution import make_engine
from hts.execution.engine import Engine
from hts.execution.sites import SiteError, build_parsl_config, load_site
from hts.spec import parse_campaign
from hts.store import open_dataset
from tests.conftest import lj_campaign

ROOT = Path(__file__).resolve().parents[2]
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")


def _square(x):
    return x * x


def _boom(message):
    raise ValueError(message)


def _launches(words: list[str], ranks: int) -> bool:
    return Path(words[0]).name in ("mpiexec", "srun") and str(ranks) in words


def check_engine(eng, *, parallel_launch: bool) -> None:
    """The :class:`Engine` protocol, alike for every engine.

    ``parallel_launch``: whether this engine can start a parallel code on 4 ranks
    from its ``dft`` tasks (then ``launcher`` gives the words, ending in the
    rank count); otherwise it must refuse with a SiteError, never return ``[]``.
    """
    assert isinstance(eng, Engine)
    assert isinstance(eng.describe(), str) and eng.describe()
    assert eng.workers("cpu") >= 1 and eng.workers("gpu") >= 1
    futures = [eng.submit("cpu", _square, k) for k in range(8)]
    assert all(isinstance(f, Future) for f in futures)
    assert [f.result(timeout=60) for f in futures] == [k * k for k in range(8)]
    bad = eng.submit("cpu", _boom, "boom in a task")
    err = bad.exception(timeout=60)
    assert isinstance(err, ValueError) and "boom in a task" in str(err)
    with pytest.raises(ValueError, match="boom in a task"):
        bad.result()
    # no launcher configured (cpu): one plain process; one rank: none, or the site's on 1 rank
    assert eng.launcher("cpu", None) == []
    one = eng.launcher("dft", 1)
    assert one == [] or _launches(one, 1)
    if parallel_launch:
        assert _launches(eng.launcher("dft", 4), 4)
    else:
        with pytest.raises(SiteError):
            eng.launcher("dft", 4)
    eng.close()
    eng.close()  # idempotent


def _thread_site(tmp_path: Path) -> Path:
    p = tmp_path / "threads.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "name": "threads",
                "executors": {
                    "cpu": {"kind": "threads", "workers": 2},
                    "dft": {"kind": "threads", "workers": 1, "mpi_launcher": "mpiexec"},
                },
            }
        )
    )
    return p


@pytest.mark.parametrize("kind", ["serial", "parsl-threads"])
def test_engine_conformance(kind, tmp_path):
    if kind == "serial":
        eng = make_engine("serial", "local", tmp_path)
    else:
        eng = make_engine("parsl", str(_thread_site(tmp_path)), tmp_path / "run")
    try:
        check_engine(eng, parallel_launch=True)
    finally:
        eng.close()


def test_a_thread_pool_launcher_takes_mpiexec_from_this_environment(tmp_path):
    """Tasks in the driver's process start the venv's mpiexec, without touching its PATH."""
    path = os.environ.get("PATH")
    eng = make_engine("parsl", str(_thread_site(tmp_path)), tmp_path / "run")
    try:
        words = eng.launcher("dft", 2)
        bindir = Path(sys.executable).parent
        if (bindir / "mpiexec").is_file():
            assert words == [str(bindir / "mpiexec"), "-n", "2"]
        else:
            assert words == ["mpiexec", "-n", "2"]
    finally:
        eng.close()
    assert os.environ.get("PATH") == path


_MPI_CHECK = """
from hts.execution.mpi import MPIEngine
from tests.execution.test_engine import check_engine
eng = MPIEngine()
if eng.rank == 0:
    check_engine(eng, parallel_launch=False)
    print("conformant:", eng.describe())
else:
    eng.serve()
"""


@pytest.mark.mpi
def test_mpi_engine_conformance():
    proc = subprocess.run(
        [MPIEXEC, "-n", "3", sys.executable, "-c", _MPI_CHECK],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "conformant: mpi: 3 ranks" in proc.stdout


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
    with pytest.raises(
        SiteError, match=r"bad.yaml: 1 problem\(s\) in the site file\n  executors.cpu.kind: "
    ):
        load_site(str(p))
    with pytest.raises(SiteError, match="not found"):
        load_site("nosuchsite")


def test_parsl_config_has_one_executor_per_label(tmp_path):
    path = os.environ.get("PATH")
    cfg = build_parsl_config(load_site("workstation"), tmp_path)
    assert os.environ.get("PATH") == path  # the driver's environment is left alone
    assert [e.label for e in cfg.executors] == ["cpu", "dft"]
    assert type(cfg.executors[0]).__name__ == "HighThroughputExecutor"
    init = cfg.executors[0].provider.worker_init
    assert "OMP_NUM_THREADS=1" in init
    assert f"export PATH={Path(sys.executable).parent}:$PATH" in init  # what workers need
    assert Path(cfg.executors[0].interchange_launch_cmd[0]).is_absolute()
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


_DRIVER = """
import subprocess, sys, time
from hts.execution import make_engine
eng = make_engine("parsl", "workstation", sys.argv[1])
eng.submit("cpu", subprocess.call, ["true"]).result(timeout=120)  # the pool is up and serving
eng.submit("cpu", subprocess.call, ["sleep", "300"])
print("ready", flush=True)
time.sleep(600)
"""


def _watched(pid: int) -> list[int]:
    """The driver's interchange, the pool watchdogs started for it, and their children."""
    groups = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if f"hts.execution.watchdog {pid} " in cmd or (ppid == pid and "interchange" in cmd):
            groups.add(int(entry.name))
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) in groups or int(stat[2]) in groups or int(entry.name) in groups:
                found.append(int(entry.name))  # parent or process group is a watchdog's
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie is gone, only not yet reaped


def test_a_killed_driver_leaves_no_interchange_or_worker_pool_behind(tmp_path):
    """SIGKILL of the driver on a local HTEX: its interchange and worker pool go within seconds,
    instead of living on for minutes and racing the next run for the cores."""
    import signal
    import time

    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(tmp_path / "runinfo")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = driver.stdout.readline()  # the driver prints one line, or dies and closes it
        assert line.strip() == "ready", line
        before = _watched(driver.pid)
        assert len(before) >= 3  # the interchange; the worker pool under its watchdog
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        deadline = time.time() + 20
        while _watched(driver.pid) and time.time() < deadline:
            time.sleep(0.5)
        left = [p for p in before if _running(p)]
        assert not left, f"still running after the driver died: {left}"
    finally:
        if driver.poll() is None:
            driver.kill()
