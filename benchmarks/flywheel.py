"""The flywheel end to end: student v1 → a campaign with an audit → student v2 from its store.

1. Round 1: on random whole chemical systems of ``workflows/screen.yaml``
   (with their subsystems, so hulls are complete), the shipped demo student
   (v1, ``workflows/models/demo-student``) prefilters with ``keep: auto``,
   SevenNet-0 rescores the survivors, and ``stages.prefilter.audit`` sends a
   seeded share of the rejects to SevenNet-0 too.
2. ``hts distill`` with ``data.stores: [round1.zarr]`` and ``student.init``: v1
   fine-tuned on the store's teacher rows (a seeded share held out by id), no
   new teacher labels (``sampling.train/calibration: 0``).
3. The report's comparison of v1 and v2 on the held-out rows, survivors and
   audited rejects weighted as the samples they are: recall of teacher-stable
   candidates with its Clopper-Pearson bound and the share discarded, at the
   threshold calibrated there, at each student's own threshold and at v1's.

    python benchmarks/flywheel.py [--candidates 250] [--audit 0.25] [--site workstation] [--keep DIR]

Round 2 is then the same campaign file naming v2 and a new store (README,
*Distilling a student*).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "workflows" / "models" / "demo-student"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--candidates", type=int, default=250, help="Candidates of drawn systems.")
    ap.add_argument("--audit", type=float, default=0.25, help="Share of rejects audited.")
    ap.add_argument("--holdout", type=float, default=0.4, help="data.holdout")
    ap.add_argument("--epochs", type=int, default=20, help="Fine-tuning epochs (rounds.epochs).")
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--site", default="workstation")
    ap.add_argument("--keep", type=Path, default=None, help="Keep everything in this folder.")
    args = ap.parse_args()

    from ase.io import write

    from hts.campaign import run_campaign
    from hts.candidates.sampling import systems
    from hts.distill.config import load_distill
    from hts.distill.pipeline import run_distill
    from hts.execution import make_engine
    from hts.spec import load_campaign

    screen_file = ROOT / "workflows" / "screen.yaml"
    screen = load_campaign(screen_file)
    work = args.keep or Path(tempfile.mkdtemp(prefix="hts-flywheel-"))
    work.mkdir(parents=True, exist_ok=True)
    sample = systems(screen, args.candidates, args.seed)
    cands = [*sample.primary, *sample.closure]
    write(work / "candidates.extxyz", [c.to_atoms() for c in cands], format="extxyz")
    print(f"{len(sample.systems)} chemical systems, {len(cands)} candidates in {work}", flush=True)

    base = yaml.safe_load(screen_file.read_text())
    pre = base["stages"]["prefilter"]
    pre["model"]["path"] = str(DEMO / "student.model")
    pre["distillation"] = {"report": str(DEMO / "report.json"), "target_recall": 0.95}
    pre["audit"] = args.audit
    base |= {
        "name": "flywheel-round1",
        "candidates": {"kind": "files", "path": "candidates.extxyz"},
        "store": str(work / "round1.zarr"),
        "site": args.site,
        "chunk_size": 16,
    }
    (work / "round1.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    t0 = time.perf_counter()
    eng = make_engine("parsl", args.site, work / "parsl-round1")
    try:
        run_campaign(load_campaign(work / "round1.yaml"), eng)
    finally:
        eng.close()
    t_campaign = time.perf_counter() - t0
    print(f"round 1: {t_campaign:.0f} s", flush=True)

    distill = {
        "name": "flywheel-v2",
        "campaign": "round1.yaml",
        "student": {"kind": "auto", "init": str(DEMO / "student.model")},
        "sampling": {"train": 0, "calibration": 0, "points": 0},
        "data": {"stores": ["round1.zarr"], "holdout": args.holdout},
        "rounds": {"max": 0, "epochs": args.epochs},
        "training": {"epochs": 2 * args.epochs, "batch_size": 16, "lr": args.lr, "threads": 2},
        "evaluation": {
            "target_recall": args.target_recall,
            "speed_cells": 4,
            "speed_repeats": 1,
        },
        "output": "v2",
    }
    (work / "distill.yaml").write_text(yaml.safe_dump(distill, sort_keys=False))
    t0 = time.perf_counter()
    eng = make_engine("parsl", args.site, work / "parsl-distill")
    try:
        rep = run_distill(load_distill(work / "distill.yaml"), eng)
    finally:
        eng.close()
    t_distill = time.perf_counter() - t0
    fw = rep["flywheel"]
    (st,) = fw["stores"]
    rows = []
    for name in ("before", "after"):
        e = fw[name]
        for key in ("calibrated", "own_report", "init_threshold"):
            a = e.get(key)
            rows.append(
                {
                    "student": f"{'v1' if name == 'before' else 'v2'} @ {key}",
                    "threshold": a["threshold"] if a else None,
                    "recall": a["recall"] if a else None,
                    "lower_bound": a["recall_lower_bound"] if a else None,
                    "discarded": a["discarded"] if a else None,
                    "audit_misses_kept": f"{a['audit_missed_found']}/{e['audit_missed']}"
                    if a
                    else None,
                    "spearman": e["spearman_e_above_hull"],
                    "mae_mev": e["own_energy_mae_mev"],
                    "n_eff": e["n_effective"],
                }
            )
    report(
        f"flywheel: v1 → round 1 ({st['rows']} candidates, audit {args.audit}) → v2, "
        f"held-out {fw['held_out_share']:.0%} of {st['teacher_rows']} teacher rows",
        [
            "student",
            "threshold",
            "recall",
            "lower_bound",
            "discarded",
            "audit_misses_kept",
            "spearman",
            "mae_mev",
            "n_eff",
        ],
        rows,
        {
            "store": st,
            "trained_on": fw["trained_on"],
            "population": fw["population"],
            "campaign_s": t_campaign,
            "distill_s": t_distill,
            "work": str(work),
        },
    )


if __name__ == "__main__":
    main()
