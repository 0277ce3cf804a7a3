"""Teacher-only screening against the funnel, side by side on the same candidates.

On a random part of ``workflows/screen.yaml`` — whole chemical systems drawn
with equal probability, with their subsystems, so every hull is complete —
this runs two campaigns with ``hts run``'s own driver on the same site:

- **teacher only**: SevenNet-0 relaxes every candidate and keeps
  ``e_above_hull <= 0.05`` on its hull;
- **the funnel**: the distilled student (``workflows/models/demo-student``)
  scores every candidate, ``keep: auto`` (its calibrated threshold) passes the
  survivors to the teacher, which keeps ``e_above_hull <= 0.05`` on its hull.

and prints the time of each phase, the teacher-stable candidates each finds
(recall: of those the teacher-only screen keeps, how many the funnel keeps; also
over the candidates the distillation never labelled), the share the student
discards, and each side's cost per candidate extrapolated to 10⁵ and 10⁶
candidates, where the distillation's labels and training are paid once:

    funnel(N)      = L·t_label + W_train + N·t_student + N·k·t_teacher'
    teacher-only(N) = N·t_teacher

(``L`` teacher relaxations labelled, ``W_train`` the training time, ``k`` the kept
share; core-seconds measured here, the distillation's from its report.)

The funnel runs with ``audit`` (default 0.02): the recall it estimates for
itself from its audited rejects (:mod:`hts.audit`, with its 95 % interval) is
printed next to the true recall measured against the teacher-only screen, with
the audit's cost in teacher time.

    python benchmarks/funnel.py [--candidates 600] [--seed 11] [--site workstation] [--audit 0.02]

``--out-of-space`` screens what the student never trained on instead: every
candidate of the chemical systems of a prototype outside its space
(``--prototype``, default ``heusler``: A2BX, charge-balanced, with every
candidate of those systems in the space's own prototypes so its hull is
complete) and whole chemical systems among the distillation's held-out share
(never trained on).  Recall is reported for each part, next to what the audit
(use a larger ``--audit``, e.g. 0.2) estimates for the whole run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _campaign(base: dict, path: Path, prefilter: dict, rescore: dict | None, store: Path):
    from hts.spec import parse_campaign

    data = json.loads(json.dumps(base))
    data["candidates"] = {"kind": "files", "path": str(path)}
    data["stages"] = {"prefilter": prefilter, **({"rescore": rescore} if rescore else {})}
    data["store"] = str(store)
    data["name"] = f"funnel-bench-{'funnel' if rescore else 'teacher'}"
    return parse_campaign(data, base_dir=str(ROOT / "workflows"))


def _run(campaign, site: str, run_dir: Path) -> dict:
    from hts.campaign import run_campaign
    from hts.execution import make_engine
    from hts.store import open_dataset

    eng = make_engine("parsl", site, run_dir)
    t0 = time.perf_counter()
    try:
        stats = run_campaign(campaign, eng)
    finally:
        eng.close()
    wall = time.perf_counter() - t0
    ds = open_dataset(campaign.store)
    return {"wall_s": wall, "stats": stats, "ds": ds}


def _out_of_space(screen, base: dict, distill: dict, args):
    """Systems of an unseen prototype (complete hulls) and whole held-out systems of the space."""
    from hts.candidates import open_source
    from hts.candidates.sampling import SystemSample, systems
    from hts.distill.sample import held_out_system
    from hts.spec import parse_campaign

    data = json.loads(json.dumps(base))
    data["candidates"]["prototypes"] = [*data["candidates"]["prototypes"], args.prototype]
    wider = parse_campaign(data, base_dir=str(ROOT / "workflows"))
    src = open_source(wider)
    new = [c for c in src if c.prototype == args.prototype]
    names = sorted({c.chemsys for c in new})
    out, seen = SystemSample(), set()
    for name in names:  # every candidate of those systems and of their subsystems
        elements = name.split("-")
        for k in range(1, len(elements) + 1):
            for sub in itertools.combinations(elements, k):
                for a in src.system_assignments(frozenset(sub)):
                    c = src.candidate(a)
                    if c.id in seen or c.error:
                        continue
                    seen.add(c.id)
                    (out.primary if len(sub) == len(elements) else out.closure).append(c)
    out.systems = names
    share = distill["dataset"]["held_out_share"]
    seed = int(distill["dataset"].get("seed", 0))
    held = systems(
        screen, args.candidates, args.seed, keep=lambda s: held_out_system(s, share, seed)
    )
    primary = {c.id for c in held.primary}
    for c in [*held.primary, *held.closure]:
        if c.id not in seen:
            seen.add(c.id)
            (out.primary if c.id in primary else out.closure).append(c)
    out.systems += held.systems
    parts = {
        f"unseen prototype {args.prototype}": {c.id for c in new},
        "held-out systems": {c.id for c in held.primary},
    }
    return out, parts


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--campaign", type=Path, default=ROOT / "workflows" / "screen.yaml")
    ap.add_argument("--candidates", type=int, default=600, help="Candidates of drawn systems.")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--site", default="workstation")
    ap.add_argument("--keep", type=Path, default=None, help="Keep the stores in this folder.")
    ap.add_argument("--audit", type=float, default=0.02, help="The funnel's audit share.")
    ap.add_argument("--out-of-space", action="store_true", help="See above.")
    ap.add_argument("--prototype", default="heusler", help="The unseen prototype (out of space).")
    args = ap.parse_args()

    import yaml
    from ase.io import write

    from hts.candidates.sampling import systems
    from hts.spec import load_campaign

    screen = load_campaign(args.campaign)
    base = yaml.safe_load(args.campaign.read_text())
    pre = screen.stages.prefilter
    link = pre.distillation
    report_path = screen.resolve_input(link.report)
    distill = json.loads(report_path.read_text())
    labelled_root = report_path.parent / distill["dataset"]["path"] / "index.json"
    # what the teacher computed for the distillation: relaxations and single points
    index = json.loads(labelled_root.read_text()) if labelled_root.is_file() else {}
    labelled = set(index.get("candidates", {})) | set(index.get("points", {}))

    parts: dict[str, set[str]] = {}
    if args.out_of_space:
        sample, parts = _out_of_space(screen, base, distill, args)
    else:
        sample = systems(screen, args.candidates, args.seed)
    cands = [*sample.primary, *sample.closure]
    work = args.keep or Path(tempfile.mkdtemp(prefix="hts-funnel-"))
    work.mkdir(parents=True, exist_ok=True)
    xyz = work / "candidates.extxyz"
    write(xyz, [c.to_atoms() for c in cands], format="extxyz")
    print(
        f"{len(sample.systems)} chemical systems: {len(sample.primary)} candidates "
        f"+ {len(sample.closure)} of their subsystems; {sum(c.id in labelled for c in cands)} "
        "labelled by the distillation",
        flush=True,
    )
    rescore = base["stages"]["rescore"]
    teacher_pre = {k: rescore[k] for k in ("model", "relax", "keep") if k in rescore}
    t_only = _campaign(base, xyz, teacher_pre, None, work / "teacher.zarr")
    prefilter = {**base["stages"]["prefilter"], "audit": args.audit}
    funnel = _campaign(base, xyz, prefilter, rescore, work / "funnel.zarr")
    runs = {}
    for name, c in (("funnel", funnel), ("teacher_only", t_only)):
        print(f"running {name} ...", flush=True)
        runs[name] = _run(c, args.site, work / f"parsl-{name}")
        print(f"  {runs[name]['wall_s']:.0f} s", flush=True)

    t, f = runs["teacher_only"]["ds"], runs["funnel"]["ds"]
    n = int(t.sizes["candidate"])
    t_ids = t.id.values.astype(str)
    stable = t_ids[t.kept.values[:, 0]]
    f_ids = f.id.values.astype(str)
    survived = f_ids[f.kept.values[:, 0]]
    found = f_ids[f.kept.values[:, 1]]
    fresh = {i for i in t_ids if i not in labelled}
    stable_fresh = [i for i in stable if i in fresh]
    recall = np.isin(stable, found).mean() if len(stable) else float("nan")
    recall_pre = np.isin(stable, survived).mean() if len(stable) else float("nan")
    recall_fresh = np.isin(stable_fresh, found).mean() if stable_fresh else float("nan")
    kept_share = len(survived) / n
    # core-seconds per candidate (worker time from the stores, summed over workers)
    t_teacher = float(np.nansum(t.time_s.values[:, 0])) / n
    t_student = float(np.nansum(f.time_s.values[:, 0])) / n
    t_teacher_s = float(np.nansum(f.time_s.values[:, 1])) / max(len(survived), 1)
    timing = distill.get("timing", {})
    threads = distill.get("training", {}).get("threads", 2)
    labels = distill["dataset"]["teacher_relaxations"]
    # the rounds' own training times (a distillation that reused a finished training still
    # paid for it once)
    train_wall = sum(r.get("train_wall_s") or 0.0 for r in distill.get("rounds", []))
    train_core_s = (train_wall or timing.get("training_s", float("nan"))) * threads
    label_core_s = labels * t_teacher

    def cost(n_: float) -> tuple[float, float]:
        funnel_ = label_core_s + train_core_s + n_ * t_student + n_ * kept_share * t_teacher_s
        return funnel_, n_ * t_teacher

    from hts.audit import funnel_of
    from hts.store import StoreReader

    own = funnel_of(StoreReader(funnel.store))
    a, econ = own["audit"] or {}, own["economics"]
    audit_rows = f.audit.values
    audit_teacher_s = float(np.nansum(f.time_s.values[audit_rows, 1]))
    ci = a.get("recall_ci") or [float("nan"), float("nan")]
    rows = [
        {"quantity": "candidates", "value": n, "target": ""},
        {
            "quantity": "audit share / audited rejects (scored)",
            "value": f"{args.audit} / {a.get('audited')} ({a.get('scored')})",
            "target": "",
        },
        {
            "quantity": "audit: teacher-stable rejects found (missed)",
            "value": a.get("missed"),
            "target": "",
        },
        {
            "quantity": "recall, audited estimate (95 % CI)",
            "value": f"{a.get('recall') if a.get('recall') is not None else float('nan'):.3f} ({ci[0]:.3f}-{ci[1]:.3f})",
            "target": "",
        },
        {"quantity": "recall, true (against teacher only)", "value": recall, "target": ""},
        {
            "quantity": "audit teacher core-s (share of funnel worker time)",
            "value": f"{audit_teacher_s:.0f} ({audit_teacher_s / max(econ['worker_s'], 1e-9):.1%})",
            "target": "",
        },
        {
            "quantity": "teacher time saved (share)",
            "value": econ.get("teacher_saved_share"),
            "target": "",
        },
        {"quantity": "chemical_systems", "value": len(sample.systems), "target": ""},
        {"quantity": "teacher_stable (teacher only)", "value": len(stable), "target": ""},
        {"quantity": "teacher_only_wall_s", "value": runs["teacher_only"]["wall_s"], "target": ""},
        {
            "quantity": "funnel_wall_s (student + teacher)",
            "value": runs["funnel"]["wall_s"],
            "target": "",
        },
        {
            "quantity": "funnel/teacher_only wall time on this sample",
            "value": runs["funnel"]["wall_s"] / runs["teacher_only"]["wall_s"],
            "target": "<= 0.6",
        },
        {"quantity": "student_discarded_share", "value": 1 - kept_share, "target": ">= 0.5"},
        {"quantity": "recall_after_student", "value": recall_pre, "target": ""},
        {"quantity": "recall_funnel (found by both)", "value": recall, "target": ">= 0.98"},
        {"quantity": "recall_funnel_never_labelled", "value": recall_fresh, "target": ""},
        {"quantity": "teacher_stable_never_labelled", "value": len(stable_fresh), "target": ""},
        {"quantity": "core_s_per_candidate_teacher", "value": t_teacher, "target": ""},
        {"quantity": "core_s_per_candidate_student", "value": t_student, "target": ""},
        {"quantity": "core_s_per_survivor_teacher", "value": t_teacher_s, "target": ""},
        {
            "quantity": "speed_ratio_per_candidate",
            "value": t_teacher / t_student,
            "target": ">= 50",
        },
        {"quantity": "distillation_labels", "value": labels, "target": ""},
        {"quantity": "distillation_label_core_s", "value": label_core_s, "target": ""},
        {"quantity": "distillation_training_core_s", "value": train_core_s, "target": ""},
    ]
    for n_ in (n, 10**4, 10**5, 10**6):
        fu, to = cost(n_)
        rows.append(
            {
                "quantity": f"funnel/teacher_only at N={n_:.0e}",
                "value": fu / to,
                "target": "<= 0.6" if n_ == 10**6 else "",
            }
        )
        rows.append(
            {
                "quantity": f"hours on 2 cores at N={n_:.0e} (funnel, teacher only)",
                "value": f"{fu / 2 / 3600:.2f}, {to / 2 / 3600:.2f}",
                "target": "",
            }
        )
    for part, ids in parts.items():  # out of space: recall on each unseen part
        mine = [i for i in stable if i in ids]
        rows.append({"quantity": f"{part}: candidates", "value": len(ids), "target": ""})
        rows.append({"quantity": f"{part}: teacher-stable", "value": len(mine), "target": ""})
        rows.append(
            {
                "quantity": f"{part}: recall (funnel)",
                "value": np.isin(mine, found).mean() if mine else float("nan"),
                "target": "",
            }
        )
        rows.append(
            {
                "quantity": f"{part}: discarded by the student",
                "value": 1 - np.isin(sorted(ids), survived).mean() if ids else float("nan"),
                "target": "",
            }
        )
    report(
        f"funnel vs teacher only on {n} candidates of {args.campaign.name} ({args.site})",
        ["quantity", "value", "target"],
        rows,
        {"work": str(work), "seed": args.seed, "audit": a, "economics": econ},
    )
    if args.keep is None:
        print(f"stores kept in {work}")


if __name__ == "__main__":
    main()
