"""One writer per store: a second is refused, a killed one leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from hts.store import Store, StoreLockedError

_HOLD = """
import sys, time
from hts.store import Store
Store.open(sys.argv[1], campaign_name="t", campaign_hash="h", campaign_yaml="", stages=["prefilter"])
print("open", flush=True)
time.sleep(600)
"""


def _open(path):
    return Store.open(
        path, campaign_name="t", campaign_hash="h", campaign_yaml="", stages=["prefilter"]
    )


def test_a_second_writer_is_refused_until_the_first_is_killed(tmp_path):
    path = tmp_path / "s.zarr"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreLockedError, match=f"PID {holder.pid} on"):
            _open(path)
        os.kill(holder.pid, signal.SIGKILL)  # no chance to clean up
        holder.wait(timeout=30)
        store = _open(path)  # the kernel dropped the lock with the process
        store.close()
    finally:
        if holder.poll() is None:
            holder.kill()


def test_a_second_hts_run_on_the_same_store_is_refused(tmp_path):
    """The issue's repro: `hts run c.yaml & sleep; hts run c.yaml` — the second exits 2, the first completes."""
    from tests.conftest import lj_campaign, write_campaign
    from tests.test_cli import _hts

    data = lj_campaign(tmp_path, chunk_size=4)
    data["stages"]["prefilter"]["relax"] = {"max_steps": 300, "fmax": 0.0001}  # a few seconds
    path = write_campaign(tmp_path, data)
    first = subprocess.Popen(
        [sys.executable, "-m", "hts.cli", "run", str(path), "-q"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not (tmp_path / "lj.zarr" / "zarr.json").exists() and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, "the first run ended before the second began: lengthen it"
        second = _hts("run", str(path), "-q", cwd=tmp_path)
        out, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2 and "another hts run is writing this store" in second.stderr
    assert first.returncode == 0, err
