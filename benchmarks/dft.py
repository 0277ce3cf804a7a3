"""The whole funnel down to DFT, timed: MLIP stages, then each DFT job.

Runs a campaign with a validate stage (default: workflows/demo-dft.yaml) into
a fresh store and reports the wall time of the MLIP part and of the DFT part,
and per DFT job the time inside its job process (imports, atomate2 and
jobflow included) and its relaxation steps, and the MLIP-vs-DFT errors.  Target (issue 4): the
demo validates its best 2-3 candidates within about 15 minutes in all.

    python benchmarks/dft.py [--campaign workflows/demo-dft.yaml] [--site local]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--campaign", type=Path, default=ROOT / "workflows" / "demo-dft.yaml")
    ap.add_argument("--site", default=None)
    args = ap.parse_args()

    from hts.campaign import run_campaign
    from hts.execution import make_engine
    from hts.report import summarize
    from hts.spec import load_campaign

    c = load_campaign(args.campaign)
    if c.stages.validate_ is None:
        sys.exit(f"{args.campaign}: no validate stage")
    work = Path(tempfile.mkdtemp(prefix="hts-dft-"))
    store = work / "store.zarr"
    marks: dict[str, float] = {}

    def progress(s) -> None:
        key = "dft" if s.phase.startswith("DFT") else s.phase
        marks.setdefault(key, time.perf_counter())

    t0 = time.perf_counter()
    engine = make_engine("parsl", args.site or c.site, work / "runinfo")
    try:
        stats = run_campaign(c, engine, store_path=store, progress=progress)
    finally:
        engine.close()
    t_end = time.perf_counter()
    t_dft = marks.get("dft", t_end)
    rows = [
        {"job": "whole campaign", "wall_s": t_end - t0, "in_process_s": ""},
        {
            "job": "MLIP stages (and start-up)",
            "wall_s": t_dft - t0,
            "in_process_s": "",
        },
        {"job": "DFT phase", "wall_s": t_end - t_dft, "in_process_s": ""},
    ]
    jobs = sorted((work / "store.zarr.dft").glob("*/*/attempt-*/result.json"))
    for res_path in jobs:
        d = res_path.parent
        res = json.loads(res_path.read_text())
        request = json.loads((d / "request.json").read_text())
        label = request.get("label", d.parent.name).removeprefix("hts validate ")
        kind = "reference" if d.parent.parent.name == "references" else "candidate"
        rows.append(
            {
                "job": f"{kind} {label} ({d.name}, {res.get('n_steps', '-')} steps)",
                "wall_s": "",
                "in_process_s": res.get("elapsed_s", float("nan")),
            }
        )
    s = summarize(store)
    for st, m in (s["dft"] or {}).get("mae", {}).items():
        if m["n"]:
            rows.append(
                {
                    "job": f"MAE formation energy {st} vs DFT (meV/atom, n={m['n']})",
                    "wall_s": 1000 * m["formation_energy"],
                    "in_process_s": "",
                }
            )
    rows.append(
        {
            "job": "validated / failed",
            "wall_s": f"{stats.validated} / {stats.validate_failed}",
            "in_process_s": "",
        }
    )
    report(
        f"DFT funnel, {c.name} campaign, {c.stages.validate_.code}",
        ["job", "wall_s", "in_process_s"],
        rows,
    )


if __name__ == "__main__":
    main()
