"""Site files → Parsl configs and batch scripts, and the errors users see before submitting.

Nothing here talks to a scheduler: the Slurm tests (``-m slurm``) do, against a real one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hts.execution import make_engine
from hts.execution.checks import check_site
from hts.execution.sites import (
    SiteError,
    build_parsl_config,
    load_site,
    site_names,
    store_key,
)
from hts.execution.submit import batch_script, driver_job

NAMED = ("slurm", "perlmutter", "frontier", "polaris")


@pytest.fixture
def cluster_env(monkeypatch):
    monkeypatch.setenv("HTS_ACCOUNT", "mat123")
    monkeypatch.setenv("HTS_PARTITION", "gpu")


def write_site(tmp_path: Path, data: dict, name: str = "site.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def slurm_site(**gpu) -> dict:
    return {
        "name": "c",
        "partition": "gpu",
        "executors": {"gpu": {"kind": "htex", "provider": "slurm", "gpus_per_node": 4, **gpu}},
    }


def test_every_shipped_site_builds(cluster_env, tmp_path):
    assert set(NAMED) | {"local", "workstation"} <= set(site_names())
    for name in NAMED:
        site = load_site(name)
        cfg = build_parsl_config(site, tmp_path / name, resolve_address=False)
        assert [e.label for e in cfg.executors] == list(site.executors)
        assert cfg.strategy == "htex_auto_scale"


def test_named_sites_have_their_node_layouts(cluster_env, tmp_path):
    pm = build_parsl_config(load_site("perlmutter"), tmp_path / "pm", resolve_address=False)
    gpu = pm.executors[0]
    assert type(gpu.provider).__name__ == "SlurmProvider"
    assert type(gpu.provider.launcher).__name__ == "SrunLauncher"
    assert list(gpu.available_accelerators) == ["0", "1", "2", "3"]
    assert gpu.max_workers_per_node == 4 and gpu.cores_per_worker == 16
    opts = gpu.provider.scheduler_options
    for line in ("--constraint=gpu", "--qos=regular", "--account=mat123", "--gpus-per-node=4"):
        assert line in opts
    assert "--comment=hts-" in opts  # hts cancel finds the blocks by it

    fr = build_parsl_config(load_site("frontier"), tmp_path / "fr", resolve_address=False)
    assert len(fr.executors[0].available_accelerators) == 8  # 4x MI250X = 8 GCDs
    assert "--partition=batch" in fr.executors[0].provider.scheduler_options

    po = build_parsl_config(load_site("polaris"), tmp_path / "po", resolve_address=False)
    p = po.executors[0].provider
    assert type(p).__name__ == "PBSProProvider" and p.queue == "prod" and p.account == "mat123"
    assert p.select_options == ":ngpus=4" and p.cpus_per_node == 32
    assert type(p.launcher).__name__ == "MpiExecLauncher"
    assert "filesystems=home:eagle" in p.scheduler_options


def test_environment_variables_fill_site_values(monkeypatch, tmp_path):
    monkeypatch.delenv("HTS_ACCOUNT", raising=False)
    with pytest.raises(
        SiteError, match=r"perlmutter.yaml: account: environment variable HTS_ACCOUNT"
    ):
        load_site("perlmutter")
    missing: list[str] = []
    site = load_site("perlmutter", missing=missing)  # what `hts sites check` shows
    assert site.account == "<HTS_ACCOUNT>" and len(missing) == 1
    monkeypatch.setenv("HTS_PARTITION", "gpuq")
    monkeypatch.setenv("HTS_CPU_PARTITION", "cpuq")
    s = load_site("slurm")
    assert s.executors["gpu"].partition == "gpuq" and s.executors["cpu"].partition == "cpuq"
    assert s.account is None  # ${HTS_ACCOUNT:-} is optional
    monkeypatch.delenv("HTS_CPU_PARTITION")
    assert load_site("slurm").executors["cpu"].partition == "gpuq"  # ${A:-${B}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {**slurm_site(), "partiton": "gpu"},
            r"site.yaml: 1 problem\(s\) in the site file\n  partiton: unknown field",
        ),
        (
            {
                "name": "c",
                "executors": {"gpu": {"kind": "htex", "provider": "slurm", "gpus_per_node": 4}},
            },
            r"executors.gpu: provider slurm needs a partition",
        ),
        (slurm_site(workers=8), r"executors.gpu: 8 workers per node but only 4 GPUs per node"),
        (slurm_site(walltime="1h"), r"executors.gpu.walltime: '1h' is not a walltime"),
        ({"name": "c", "executors": {"cpu": {"kind": "threads", "workers": 0}}}, r"workers"),
        ({"name": "c", "executors": {"cpu": {"kind": "threads", "workers": -2}}}, r"workers"),
        (
            {"name": "c", "executors": {"cpu": {"kind": "threads", "provider": "slurm"}}},
            r"kind threads runs inside the driver process",
        ),
        (
            {"name": "c", "executors": {"gpu": {"kind": "htex", "provider": "pbspro"}}},
            r"provider pbspro needs a queue",
        ),
        (
            slurm_site(scheduler_options=["--exclusive"]),
            r"'--exclusive' is not a '#SBATCH …' or '#PBS …' line",
        ),
    ],
)
def test_bad_site_files_fail_before_anything_is_submitted(tmp_path, data, message):
    p = write_site(tmp_path, data)
    with pytest.raises(SiteError, match=message):
        load_site(str(p))
    r = subprocess.run(
        [sys.executable, "-m", "hts.cli", "submit", "campaign.yaml", "--site", str(p), "--dry-run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert not (tmp_path / "campaign.yaml").exists() or "sbatch" not in r.stdout


def test_walltimes_are_normalised(tmp_path):
    for given, wanted in [("90", "01:30:00"), ("1:30", "01:30:00"), ("1-00:00:00", "24:00:00")]:
        s = load_site(str(write_site(tmp_path, slurm_site(walltime=given))))
        assert s.executors["gpu"].walltime == wanted


def test_inside_an_allocation_workers_start_on_its_nodes(cluster_env, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "3")
    cfg = build_parsl_config(
        load_site("perlmutter"), tmp_path, allocation=True, resolve_address=False
    )
    p = cfg.executors[0].provider
    assert type(p).__name__ == "LocalProvider" and p.nodes_per_block == 3
    assert "--overlap" in p.launcher.overrides and "--cpus-per-task=64" in p.launcher.overrides
    assert cfg.strategy == "none"  # no blocks to ask for


def test_container_wraps_the_worker_command(tmp_path):
    data = {
        **slurm_site(),
        "container": {"image": "/scratch/hts.sif", "bind": ["/scratch", "/models"]},
    }
    cfg = build_parsl_config(
        load_site(str(write_site(tmp_path, data))), tmp_path, resolve_address=False
    )
    ex = cfg.executors[0]
    assert ex.launch_cmd.startswith(
        "apptainer exec --nv --bind /scratch,/models /scratch/hts.sif process_worker_pool.py"
    )
    # inside the image, the image's environment is used, not the submitting venv's PATH
    assert "export PATH=" not in ex.provider.worker_init


def _script(site_path: Path, tmp_path: Path, **kw) -> str:
    return batch_script(
        load_site(str(site_path)),
        site_path,
        tmp_path / "c.yaml",
        tmp_path / "s.zarr",
        cwd=tmp_path,
        **kw,
    )


def test_slurm_batch_scripts_for_each_mode(tmp_path):
    data = {
        **slurm_site(cores_per_node=32),
        "account": "mat123",
        "submit": {"cpus": 4, "walltime": "12:00:00", "init": "module load cuda"},
    }
    site_path = write_site(tmp_path, data)
    pilot = _script(site_path, tmp_path)
    key = store_key(tmp_path / "s.zarr")
    for line in (
        "#SBATCH --time=12:00:00",
        "#SBATCH --nodes=1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=mat123",
        f"#SBATCH --comment={key}",
        "#SBATCH --signal=B:TERM@120",
        "module load cuda",
        f"--store {(tmp_path / 's.zarr').resolve()} --quiet\n",
    ):
        assert line in pilot
    assert "--gpus-per-node" not in pilot  # the driver needs no GPU; its blocks ask for them
    alloc = _script(site_path, tmp_path, mode="allocation", nodes=4)
    assert "#SBATCH --nodes=4" in alloc and "#SBATCH --gpus-per-node=4" in alloc
    assert "#SBATCH --cpus-per-task=32" in alloc and alloc.rstrip().endswith("--allocation")
    mpi = _script(site_path, tmp_path, mode="mpi", nodes=2, walltime="30")
    assert "exec srun --mpi=pmi2 --ntasks=2 " in mpi and mpi.rstrip().endswith("--engine mpi")
    assert "#SBATCH --time=00:30:00" in mpi


def test_pbs_batch_script(cluster_env, tmp_path):
    site = load_site("polaris")
    script = batch_script(
        site, Path("sites/polaris.yaml"), tmp_path / "c.yaml", tmp_path / "s.zarr"
    )
    for line in (
        "#PBS -l select=2:ncpus=32:ngpus=4",
        "#PBS -q prod",
        "#PBS -A mat123",
        "#PBS -l walltime=03:00:00",
        "#PBS -l filesystems=home:eagle",
        "module load conda",
    ):
        assert line in script
    assert script.rstrip().endswith("--allocation")


def test_a_site_without_a_scheduler_cannot_be_submitted(tmp_path):
    with pytest.raises(SiteError, match="has no batch scheduler"):
        batch_script(
            load_site("local"), Path("sites/local.yaml"), tmp_path / "c.yaml", tmp_path / "s"
        )


def test_sites_check_prints_config_and_missing(monkeypatch):
    env = {k: v for k, v in os.environ.items() if k != "HTS_ACCOUNT"}
    r = subprocess.run(
        [sys.executable, "-m", "hts.cli", "sites", "check", "frontier", "--mode", "pilot"],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200"},
    )
    assert r.returncode == 1
    assert "partition='batch'" in r.stdout and "account='<HTS_ACCOUNT>'" in r.stdout
    assert "HighThroughputExecutor(workers/node=8" in r.stdout
    assert "environment variable HTS_ACCOUNT is not set" in r.stdout
    assert "network interface 'hsn0' not found" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "hts.cli", "sites", "check", "workstation"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "nothing missing" in r.stdout


def test_one_worker_per_gpu(tmp_path):
    """Parsl pins each worker to its own device (CUDA_VISIBLE_DEVICES/ROCR_VISIBLE_DEVICES);
    checked with a local HTEX on this GPU-less machine: the pinning needs no GPU to observe."""
    data = {
        "name": "gpus",
        "executors": {
            "gpu": {
                "kind": "htex",
                "gpus_per_node": 2,
                "threads_per_worker": 1,
                "worker_init": f"export PYTHONPATH={Path(__file__).resolve().parents[2]}",
            }
        },
    }
    site_path = write_site(tmp_path, data)
    eng = make_engine("parsl", str(site_path), tmp_path / "run")
    try:
        assert eng.workers("gpu") == 2
        seen = {f.result() for f in [eng.submit("gpu", _visible_device) for _ in range(40)]}
    finally:
        eng.close()
    assert {dev for _, dev, _ in seen} == {"0", "1"}
    by_worker = {}
    for pid, dev, rocr in seen:
        assert rocr == dev
        by_worker.setdefault(pid, set()).add(dev)
    assert all(len(d) == 1 for d in by_worker.values())  # a worker keeps its device


def _visible_device():
    import time

    time.sleep(0.05)
    return (
        os.getpid(),
        os.environ.get("CUDA_VISIBLE_DEVICES"),
        os.environ.get("ROCR_VISIBLE_DEVICES"),
    )


def test_site_files_refuse_repeated_keys_and_non_utf8(tmp_path):
    p = tmp_path / "twice.yaml"
    p.write_text("name: a\nname: b\nexecutors:\n  cpu: {kind: threads}\n")
    with pytest.raises(SiteError, match=r"twice.yaml: not valid YAML: .*key 'name' is given twice"):
        load_site(str(p))
    p = tmp_path / "latin1.yaml"
    p.write_bytes("name: caf\xe9\nexecutors:\n  cpu: {kind: threads}\n".encode("latin-1"))
    with pytest.raises(SiteError, match=r"latin1.yaml: a site file must be UTF-8"):
        load_site(str(p))
    p = tmp_path / "list.yaml"
    p.write_text("- name: a\n")
    with pytest.raises(SiteError, match=r"list.yaml: a site file must be a mapping"):
        load_site(str(p))


def test_check_site_collects_every_gap(monkeypatch):
    """What `hts sites check` renders: a structured result, every problem collected."""
    monkeypatch.delenv("HTS_ACCOUNT", raising=False)
    r = check_site("frontier", mode="pilot")
    assert not r.ok and r.scheduler == "slurm"
    assert any("environment variable HTS_ACCOUNT is not set" in m for m in r.missing)
    assert any("network interface 'hsn0' not found" in m for m in r.missing)
    assert [label for label, _ in r.executors] == list(r.site.executors)
    assert r.strategy == "htex_auto_scale" and r.strategy_period == r.site.strategy_period
    assert dict(r.job_fields())["account"] == "<HTS_ACCOUNT>" and r.job["mode"] == "pilot"
    ws = check_site("workstation")
    assert ws.ok and ws.scheduler is None and ws.job is None and ws.job_fields() == []


def test_driver_job_layers_site_workers_and_submit(tmp_path):
    data = {
        **slurm_site(cores_per_node=32, partition="gpuq"),
        "account": "mat123",
        "partition": "login",
        "submit": {"cpus": 4, "nodes": 3},
    }
    site = load_site(str(write_site(tmp_path, data)))
    pilot = driver_job(site)
    assert pilot["mode"] == "pilot" and pilot["partition"] == "login" and pilot["nodes"] == 1
    assert pilot["cpus"] == 4 and pilot["gpus_per_node"] == 0
    alloc = driver_job(site, "allocation")
    assert alloc["partition"] == "gpuq" and alloc["gpus_per_node"] == 4
    assert alloc["cpus"] == 32 and alloc["nodes"] == 3 and alloc["account"] == "mat123"
