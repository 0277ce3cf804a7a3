"""Where the time of a real campaign goes: model calls versus everything else.

Runs a campaign (default: the demo, SevenNet-0 on 208 candidates) through the
real engine and reports the share of worker time spent outside model calls
(FIRE steps, the cell filter, building structures, pickling), the share of
the screening phase's wall-clock capacity (workers × seconds) not spent in the
model, and the time of each phase.  Target (issue 2): under 10 % outside model
calls on the demo with SevenNet-0.

    python benchmarks/overhead.py [--campaign workflows/demo.yaml] [--site local]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mb, report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--campaign", type=Path, default=ROOT / "workflows" / "demo.yaml")
    ap.add_argument("--site", default=None)
    args = ap.parse_args()

    from hts.campaign import run_campaign
    from hts.execution import make_engine
    from hts.spec import load_campaign

    c = load_campaign(args.campaign)
    site = args.site or c.site
    work = Path(tempfile.mkdtemp(prefix="hts-overhead-"))
    phases: dict[str, float] = {}
    marks: dict[str, float] = {}

    def progress(s) -> None:
        now = time.perf_counter()
        if s.phase not in marks:
            marks[s.phase] = now

    t0 = time.perf_counter()
    engine = make_engine("parsl", site, work / "runinfo")
    workers = engine.workers(c.stages.prefilter.resource)
    t_engine = time.perf_counter() - t0
    try:
        stats = run_campaign(c, engine, store_path=work / "store.zarr", progress=progress)
    finally:
        engine.close()
    t_end = time.perf_counter()
    order = sorted(marks.items(), key=lambda kv: kv[1])
    for (name, start), nxt in zip(order, [*order[1:], ("end", t_end)], strict=True):
        key = (
            "references"
            if name.startswith("relaxing")
            else "screening"  # "screening; teacher rescoring the survivors" too
            if name.startswith("screening")
            else name
        )
        phases[key] = phases.get(key, 0.0) + nxt[1] - start
    screening_wall = phases.get("screening", 0.0)
    outside_worker = 1 - stats.model_s / stats.worker_s
    outside_capacity = (
        1 - stats.model_s / (workers * screening_wall) if screening_wall else float("nan")
    )
    rows = [
        {"quantity": "candidates", "value": stats.done},
        {"quantity": "workers", "value": workers},
        {"quantity": "wall_total_s", "value": t_end - t0},
        {"quantity": "engine_start_s", "value": t_engine},
        *({"quantity": f"phase_{k.replace(' ', '_')}_s", "value": v} for k, v in phases.items()),
        {"quantity": "worker_s", "value": stats.worker_s},
        {"quantity": "model_s", "value": stats.model_s},
        {"quantity": "outside_model_share_of_worker_time", "value": outside_worker},
        {"quantity": "outside_model_share_of_screening_capacity", "value": outside_capacity},
        {
            "quantity": "candidates_per_s_screening",
            "value": stats.done / screening_wall if screening_wall else 0.0,
        },
        {"quantity": "peak_rss_mb", "value": peak_rss_mb()},
    ]
    model = c.stages.prefilter.model.name
    report(f"engine overhead, {c.name} campaign, {model}, site {site}", ["quantity", "value"], rows)


if __name__ == "__main__":
    main()
