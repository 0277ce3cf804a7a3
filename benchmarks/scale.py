"""Candidates/s and peak RSS of whole campaigns with the analytic potential, at growing size.

Each size runs in a fresh process (so its peak RSS is its own) through the real
engine: the lazy generator, the Parsl pool, the hull, the Zarr writer.  The
target (issue 2): peak RSS under 1.5 GB and flat from 10⁴ to 10⁵ candidates.

    python benchmarks/scale.py                 # 10,000 and 100,000
    python benchmarks/scale.py --sizes 1000 10000
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mb, report, wide_campaign  # noqa: E402


def one(n: int, workdir: Path, site: str, chunk: int) -> dict:
    from hts.campaign import run_campaign
    from hts.execution import make_engine
    from hts.spec import parse_campaign
    from hts.store import open_dataset

    store = workdir / f"scale-{n}.zarr"
    c = parse_campaign(
        wide_campaign(str(store), n, {"name": "lennard-jones"}, chunk_size=chunk, site=site)
    )
    engine = make_engine("parsl", site, workdir / "runinfo")
    t0 = time.perf_counter()
    try:
        stats = run_campaign(c, engine)
    finally:
        engine.close()
    wall = time.perf_counter() - t0
    peak = peak_rss_mb()  # before the check below, which loads every id on purpose
    ds = open_dataset(store)
    ids = ds.id.values.tolist()
    return {
        "candidates": n,
        "stored": len(ids),
        "unique": len(set(ids)),
        "wall_s": wall,
        "cand_per_s": n / wall,
        "peak_rss_mb": peak,
        "model_share": stats.model_s / stats.worker_s if stats.worker_s else 0.0,
        "store_mb": sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--site", default="local")
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.workdir, args.site, args.chunk)))
        return
    rows = []
    for n in args.sizes:
        work = Path(tempfile.mkdtemp(prefix="hts-scale-"))
        try:
            res = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    str(n),
                    "--workdir",
                    str(work),
                    "--site",
                    args.site,
                    "--chunk",
                    str(args.chunk),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(
            f"  {n}: {rows[-1]['cand_per_s']:.1f} cand/s, peak RSS {rows[-1]['peak_rss_mb']:.0f} MB",
            file=sys.stderr,
        )
    report(
        "campaign scale, Lennard-Jones potential (relaxed with FIRE + UnitCellFilter)",
        [
            "candidates",
            "stored",
            "unique",
            "wall_s",
            "cand_per_s",
            "peak_rss_mb",
            "store_mb",
            "model_share",
        ],
        rows,
        {"site": args.site, "chunk_size": args.chunk},
    )


if __name__ == "__main__":
    main()
