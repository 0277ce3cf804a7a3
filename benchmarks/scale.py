"""Candidates/s and peak memory of whole campaigns with the analytic potential, at growing size.

Each size runs as ``hts run`` in its own process — the real CLI with its live
progress lines, the lazy generator, the site's Parsl pool, the hull, the Zarr
writer — while this script samples the resident memory of that process and
all its children (HTEX workers included) twice a second.  Afterwards the store
is opened with ``xarray.open_zarr`` and every candidate is checked to be there
exactly once.  Target (issue 7): 10⁶ candidates on 2 cores with the whole
run's peak RSS under 1.5 GB.

    python benchmarks/scale.py                           # 10⁴ and 10⁵, local thread pool
    python benchmarks/scale.py --sizes 1000000 --site workstation --steps 0 --keep /scratch/scale
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, wide_campaign  # noqa: E402


class TreeRSS(threading.Thread):
    """Peak of the summed RSS of a run, sampled every ``period`` s: the driver, its
    descendants, and the worker pools Parsl started detached (found by ``marker``, the
    run's folder, on their command line) with theirs."""

    def __init__(self, pid: int, marker: str, period: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.marker, self.period, self.peak, self.driver_peak = pid, marker, period, 0, 0
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        import psutil

        t0 = time.time()
        root = psutil.Process(self.pid)
        while not self._halt.is_set():
            try:
                driver = root.memory_info().rss
            except psutil.Error:
                break
            roots = [root]
            for p in psutil.process_iter(["cmdline"]):
                if p.pid != self.pid and self.marker in " ".join(p.info["cmdline"] or []):
                    roots.append(p)
            procs: dict[int, psutil.Process] = {}
            for r in roots:
                with contextlib.suppress(psutil.Error):
                    for p in [r, *r.children(recursive=True)]:
                        procs[p.pid] = p
            rss = []
            for p in procs.values():
                with contextlib.suppress(psutil.Error):
                    rss.append(p.memory_info().rss)
            self.driver_peak = max(self.driver_peak, driver)
            self.peak = max(self.peak, sum(rss))
            self.samples.append((time.time() - t0, sum(rss)))
            self._halt.wait(self.period)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def one(n: int, workdir: Path, site: str, chunk: int, steps: int, log) -> dict:
    import numpy as np
    import xarray as xr

    store = workdir / f"scale-{n}.zarr"
    campaign = workdir / f"scale-{n}.yaml"
    for old in (store, Path(f"{store}.parsl")):  # a fresh run, never a resume
        shutil.rmtree(old, ignore_errors=True)
    data = wide_campaign(
        str(store), n, {"name": "lennard-jones"}, chunk_size=chunk, site=site, max_steps=steps
    )
    campaign.write_text(yaml.safe_dump(data, sort_keys=False))
    hts = Path(sys.executable).parent / "hts"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(hts), "run", str(campaign), "--top", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=workdir,
    )
    mem = TreeRSS(proc.pid, marker=f"{store}.parsl")
    mem.start()
    tail: list[str] = []
    for line in proc.stdout:  # the CLI's progress lines (a plain line every 5 s off a terminal)
        log.write(line)
        log.flush()
        tail = (tail + [line])[-40:]
    rc = proc.wait()
    wall = time.perf_counter() - t0
    mem.stop()
    if rc != 0:
        raise SystemExit(f"hts run failed ({rc}):\n{''.join(tail)}")
    ds = xr.open_zarr(store, consolidated=False)
    ids = ds["id"].values
    worker = next((line for line in tail if line.startswith("worker time")), "")
    # RSS at 10 %, 50 % and 100 % of the run: flat memory means these stay put
    times = np.array([t for t, _ in mem.samples]) if mem.samples else np.zeros(1)
    rss = np.array([r for _, r in mem.samples]) if mem.samples else np.zeros(1)
    at = {
        f"rss_at_{p}pct_mb": float(
            rss[np.searchsorted(times, p / 100 * times[-1]).clip(0, len(rss) - 1)]
        )
        / 2**20
        for p in (10, 50, 100)
    }
    return {
        "candidates": n,
        "stored": int(len(ids)),
        "unique": int(len(np.unique(ids))),
        "wall_s": round(wall, 1),
        "cand_per_s": round(n / wall, 1),
        "peak_rss_mb": round(mem.peak / 2**20),
        "driver_peak_rss_mb": round(mem.driver_peak / 2**20),
        **{k: round(v) for k, v in at.items()},
        "store_mb": round(
            sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**20, 1
        ),
        "model_share": worker.split("(")[-1].split(")")[0] if worker else "",
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--site", default="local")
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--keep", type=Path, help="Keep the stores and logs in this folder.")
    ap.add_argument(
        "--steps",
        type=int,
        default=100,
        help="FIRE steps per candidate (0: single points, so the engine is what is measured).",
    )
    args = ap.parse_args()
    rows = []
    for n in args.sizes:
        work = args.keep or Path(tempfile.mkdtemp(prefix="hts-scale-"))
        work.mkdir(parents=True, exist_ok=True)
        try:
            with open(work / f"scale-{n}.log", "w") as log:
                rows.append(one(n, work, args.site, args.chunk, args.steps, log))
        finally:
            if args.keep is None:
                shutil.rmtree(work, ignore_errors=True)
        print(
            f"  {n}: {rows[-1]['cand_per_s']} cand/s, peak RSS {rows[-1]['peak_rss_mb']} MB "
            f"(driver {rows[-1]['driver_peak_rss_mb']} MB)",
            file=sys.stderr,
        )
    report(
        "campaign scale, Lennard-Jones potential (FIRE + UnitCellFilter), whole process tree",
        list(rows[0]),
        rows,
        {"site": args.site, "chunk_size": args.chunk, "fire_steps": args.steps},
    )


if __name__ == "__main__":
    main()
