"""The dashboard's refresh on a large store: server time per snapshot while a run commits.

Builds (once, then reuses) a store of ``--rows`` candidates through the real
writer — two stages, a tenth of the rows rescored, failures among them — and
then plays a running campaign against a dashboard's views: each step commits
one chunk of new rows and one batch of teacher results, then times the
dashboard's refresh (``StoreViews.snapshot``: what the page polls every 2 s).
Also timed: the first snapshot (everything read once), a poll with nothing
new, the plots redrawn after a commit, and ``hts status``'s summary.

    python benchmarks/dashboard.py                  # 10⁶ rows (the store: ~1 min to build)
    python benchmarks/dashboard.py --rows 100000 --steps 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mb, report  # noqa: E402

STAGES = ["prefilter", "rescore"]
CHUNK = 4096


def _rows(start: int, m: int, rng):
    from hts.store import Row

    e = rng.normal(-3.0, 0.4, m)
    eh = np.abs(rng.normal(0.0, 0.15, m))
    ok = rng.random(m) > 0.02
    kept = ok & (eh < 0.1)
    out = []
    for j in range(m):
        k = start + j
        out.append(
            Row(
                id=f"{k:016x}",
                formula=f"Na{k % 4 + 1}Cl{k % 3 + 1}",
                chemsys="Cl-Na",
                prototype="rocksalt",
                source="bench",
                chunk=k // CHUNK,
                status="ok" if ok[j] else "failed",
                reason="" if ok[j] else f"relaxation diverged at step {k % 97}",
                stage_reached="prefilter",
                numbers=np.array([11, 17]),
                positions=np.array([[0.0, 0.0, 0.0], [2.8, 2.8, 2.8]]),
                cell=np.eye(3) * 5.6,
                stage={
                    "prefilter": {
                        "energy_per_atom": float(e[j]) if ok[j] else np.nan,
                        "e_above_hull": float(eh[j]) if ok[j] else np.nan,
                        "formation_energy": float(e[j] + 2.0) if ok[j] else np.nan,
                        "kept": bool(kept[j]),
                        "time_s": 0.01,
                    }
                },
            )
        )
    return out


def _rescore(rows, rng):
    from hts.store import StageUpdate

    eh = np.abs(rng.normal(0.0, 0.08, len(rows)))
    return [
        StageUpdate(
            row=int(r),
            values={
                "energy_per_atom": -3.0,
                "e_above_hull": float(eh[j]),
                "formation_energy": -1.0 - float(eh[j]),
                "kept": bool(eh[j] < 0.05),
                "time_s": 1.7,
            },
            status="ok",
            reason="",
            stage_reached="rescore",
        )
        for j, r in enumerate(rows)
    ]


def _open(path: Path):
    from hts.store import Store

    return Store.open(
        path,
        campaign_name="bench",
        campaign_hash="bench",
        campaign_yaml="name: bench\n",
        stages=STAGES,
    )


def build(path: Path, n: int, rng) -> None:
    """A store of ``n`` rows through the writer, a tenth of them rescored, chunk by chunk."""
    store = _open(path)
    t0 = time.time()
    while store.n_rows < n:
        n0 = store.n_rows
        m = min(CHUNK, n - n0)
        store.append(_rows(n0, m, rng), n0 // CHUNK)
        store.update("rescore", _rescore(np.arange(n0, n0 + m, 10), rng))
        if (n0 // CHUNK) % 25 == 0:
            print(f"  building: {store.n_rows:,} rows, {time.time() - t0:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=10, help="commits played after the first snapshot")
    ap.add_argument("--new-rows", type=int, default=1024, help="rows per commit")
    ap.add_argument("--rescored", type=int, default=128, help="teacher results per commit")
    ap.add_argument("--store", type=Path, default=None, help="reuse (or build) this store")
    ap.add_argument(
        "--spread",
        choices=["recent", "uniform"],
        default="recent",
        help="teacher results for rows of the last 16 chunks (as the rescore queue follows "
        "the prefilter) or anywhere in the store (the worst case for reading)",
    )
    args = ap.parse_args()

    from hts.dashboard.views import PLOTS, StoreViews
    from hts.report import summarize
    from hts.store import read_ledger

    rng = np.random.default_rng(7)
    path = args.store or Path(tempfile.gettempdir()) / f"hts-bench-dashboard-{args.rows}.zarr"
    if int(read_ledger(path).get("n_rows", 0)) < args.rows:
        if path.exists():
            import shutil

            shutil.rmtree(path)
        print(f"building {path} ({args.rows:,} rows)", flush=True)
        build(path, args.rows, rng)

    views = StoreViews(path)
    t0 = time.perf_counter()
    views.snapshot()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    views.snapshot()
    idle = time.perf_counter() - t0

    store = _open(path)
    refresh, plots = [], []
    for step in range(args.steps):
        n0 = store.n_rows
        store.append(_rows(n0, args.new_rows, rng), 10**6 + n0)
        lo = 0 if args.spread == "uniform" else max(0, n0 - 16 * args.new_rows)
        todo = np.setdiff1d(
            rng.choice(np.arange(lo, n0), size=4 * args.rescored, replace=False),
            np.fromiter(store.stage_done.get("rescore", ()), dtype=np.int64),
        )[: args.rescored]
        store.update("rescore", _rescore(todo, rng))
        t0 = time.perf_counter()
        snap = views.snapshot()
        refresh.append(time.perf_counter() - t0)
        if step < 3:
            t0 = time.perf_counter()
            for name in PLOTS:
                views.plot(name)
            plots.append(time.perf_counter() - t0)
    full_reads = views.cache.full_reads
    t0 = time.perf_counter()
    fresh = StoreViews(path).snapshot()
    full = time.perf_counter() - t0
    assert fresh["best"] == snap["best"] and fresh["stages"] == snap["stages"]
    t0 = time.perf_counter()
    summarize(path, top=10)
    status = time.perf_counter() - t0

    ms = 1000.0
    rows = [
        {"what": "refresh after a commit (median)", "ms": ms * statistics.median(refresh)},
        {"what": "refresh after a commit (max)", "ms": ms * max(refresh)},
        {"what": "poll, nothing committed", "ms": ms * idle},
        {"what": "first snapshot (everything read)", "ms": ms * first},
        {"what": "a full read again (new views)", "ms": ms * full},
        {"what": "the three plots redrawn (median)", "ms": ms * statistics.median(plots)},
        {"what": "hts status summary", "ms": ms * status},
    ]
    report(
        f"dashboard on a {snap['rows']:,}-row store: {args.new_rows} new rows + "
        f"{args.rescored} teacher results ({args.spread} rows) per commit",
        ["what", "ms"],
        rows,
        {
            "rows": snap["rows"],
            "steps": args.steps,
            "full_reads_while_following": full_reads,
            "refresh_ms": [round(ms * t, 1) for t in refresh],
            "peak_rss_mb": peak_rss_mb(),
        },
    )


if __name__ == "__main__":
    main()
