"""A real million: workflows/alloys.yaml end to end, with the figures that say whether it paid.

Runs ``hts run`` on the alloys workflow — fcc Cu-Ag-Au-Pd orderings generated on
the workers, the distilled student (workflows/models/alloys-student) scoring every
one, SevenNet-0 relaxing the survivors plus a 0.1 % audit of the rejects, the hull
over everything — in a process of its own, and reports:

- wall time, candidates/s, and the peak resident memory of the whole process
  tree (the driver and every worker, sampled every 0.2 s);
- the store's size, and every candidate exactly once: as many unique ids as
  the space has orderings (counted by walking the space);
- the funnel: the share the student discards, the teacher's relaxations, what it keeps;
- the student's recall of teacher-stable orderings, twice: as the run's own audit
  estimates it, and against the teacher on an independent sample of whole
  compositions (every ordering of each drawn formula relaxed by the teacher, then
  judged on the hull of everything the run's teacher relaxed plus the sample);
- funnel / teacher-only cost in core-seconds, the distillation included
  (its labels at the teacher's measured cost and its training time, from its report).

Compositions are drawn with probability proportional to their orderings (so
the sample is uniform per ordering), among those with at most ``--max-orderings``
orderings: a composition of 5,000 orderings would cost hours of teacher time.
Which share of the space that leaves out is printed.

    python benchmarks/million.py                   # up to 8 atoms: 79,185 orderings
    python benchmarks/million.py --max-atoms 10    # all 1,189,299
    python benchmarks/million.py --site workstation --sample 400 --keep /tmp/alloys
    python benchmarks/million.py --student-only --max-atoms 8

``--student-only`` runs the prefilter alone (no rescore stage, no audit, ``keep: auto``
resolved from the distillation report to its threshold) over the whole space: the student's
throughput, memory, store and discarded share at a size the teacher cannot follow on a few
cores; the funnel's teacher cost is then its survivors (plus the 0.1 % audit) at the
teacher's measured cost per ordering from the distillation report.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contextlib

from _common import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _tree_rss(pid: int, work: Path) -> float:
    """MB resident in the run: the driver, its descendants, and every process whose command
    line names the run's folder (Parsl's worker pools are started detached from the driver)."""
    import psutil

    procs: dict[int, psutil.Process] = {}
    try:
        p = psutil.Process(pid)
        procs = {q.pid: q for q in [p, *p.children(recursive=True)]}
    except psutil.NoSuchProcess:
        return 0.0
    for q in psutil.process_iter(["cmdline"]):
        if str(work) in " ".join(q.info["cmdline"] or []):
            procs.setdefault(q.pid, q)
    total = 0
    for q in procs.values():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += q.memory_info().rss
    return total / 2**20


def _run(campaign_file: Path, site: str, cwd: Path) -> dict:
    cmd = [sys.executable, "-m", "hts.cli", "run", str(campaign_file), "--site", site]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = 0.0
    last = ""
    assert proc.stdout is not None
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while proc.poll() is None:
        for _key, _ in sel.select(timeout=0.2):
            line = proc.stdout.readline().decode(errors="replace").strip()
            if line:
                last = line
        peak = max(peak, _tree_rss(proc.pid, cwd))
    rest = proc.stdout.read().decode(errors="replace").strip().splitlines()
    if proc.returncode != 0:
        sys.exit(f"hts run failed ({proc.returncode}): {' | '.join([last, *rest][-15:])}")
    return {"wall_s": time.perf_counter() - t0, "peak_rss_mb": peak}


def _interval(value, ci) -> str:
    if value is None:
        return "n/a"
    lo, hi = ci or (float("nan"), float("nan"))
    return f"{value:.3f} ({lo:.3f}-{hi:.3f})"


def _du(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _sample_compositions(space, n: int, max_orderings: int, seed: int):
    """Whole compositions, drawn per ordering, until they hold ``n`` orderings."""
    rng = np.random.default_rng(seed)
    raws = space.strata()
    weights = np.asarray(raws, dtype=float) / sum(raws)
    drawn: dict[str, list] = {}
    refused: set[str] = set()
    total = 0
    tries = 0
    while total < n and tries < 20_000:
        tries += 1
        k = int(rng.choice(len(raws), p=weights))
        o = space.assignment_at(k, int(rng.integers(raws[k])))
        if o is None:
            continue
        f = space.candidate(o).formula
        if f in drawn or f in refused:
            continue
        members = space.formula_assignments(f)
        if len(members) > max_orderings:
            refused.add(f)
            continue
        if rng.random() < 1.0 / len(members):  # a composition per ordering, not per formula
            drawn[f] = members
            total += len(members)
    return {f: [space.candidate(o) for o in members] for f, members in drawn.items()}


def _teacher(cands, stage, site: str, run_dir: Path, chunk: int = 16) -> list:
    from hts.campaign.pool import TaskPool
    from hts.execution import make_engine
    from hts.stages.screen import run_stage

    eng = make_engine("parsl", site, run_dir)
    try:
        pool = TaskPool(eng)
        for i in range(0, len(cands), chunk):
            pool.submit(stage.resource, i, run_stage, i, cands[i : i + chunk], stage, 0)
        out: dict[int, list] = {}
        for d in pool.completed():
            if not d.ok:
                raise RuntimeError(f"teacher task failed: {d.describe_error()}")
            out[d.tag] = d.result.records
        return [r for i in sorted(out) for r in out[i]]
    finally:
        eng.close()


def _distill_core(distill: dict, per_teacher: float) -> float:
    """Core-seconds the distillation cost: its labels at the teacher's cost, and its training."""
    labels = distill.get("dataset", {}).get("teacher_relaxations", 0)
    threads = distill.get("training", {}).get("threads", 1)
    train_wall = sum(r.get("train_wall_s") or 0.0 for r in distill.get("rounds", []))
    train_core = (train_wall or distill.get("timing", {}).get("training_s", 0.0)) * threads
    return labels * per_teacher + train_core


def _run_rows(expected, n, unique, run, store, kept_pre) -> list[dict]:
    """The rows every alloys run reports: the space, each once, time, memory, store, discard."""
    return [
        {"quantity": "orderings in the space", "value": expected, "target": ""},
        {
            "quantity": "rows in the store / unique ids",
            "value": f"{n} / {unique}",
            "target": "= space",
        },
        {"quantity": "wall_s", "value": run["wall_s"], "target": ""},
        {"quantity": "candidates/s", "value": n / run["wall_s"], "target": ""},
        {
            "quantity": "peak RSS, process tree (MB)",
            "value": run["peak_rss_mb"],
            "target": "<= 2048",
        },
        {"quantity": "store size (MB)", "value": _du(store), "target": ""},
        {"quantity": "student discarded share", "value": 1 - kept_pre.mean(), "target": ">= 0.9"},
    ]


def _student_only(args, ds, common: list[dict], kept_pre, distill: dict, audit_share) -> None:
    """The prefilter's own figures, and the funnel's cost with the teacher's measured per
    ordering (the distillation report's) for the survivors it would relax."""
    n = len(kept_pre)
    per_teacher = float(distill["speed"]["teacher_relaxation_s_per_candidate"])
    distill_core = _distill_core(distill, per_teacher)
    t_student = float(np.nansum(ds.time_s.values[:, 0]))
    survivors = int(kept_pre.sum())
    audited = audit_share * (n - survivors)
    teacher_core = (survivors + audited) * per_teacher
    funnel_core = distill_core + t_student + teacher_core
    teacher_only = n * per_teacher
    rows = [
        *common,
        {"quantity": "student core-s per ordering", "value": t_student / max(n, 1), "target": ""},
        {
            "quantity": "teacher relaxations the funnel makes (survivors + audit)",
            "value": round(survivors + audited),
            "target": "",
        },
        {"quantity": "teacher core-s per ordering (report)", "value": per_teacher, "target": ""},
        {
            "quantity": "distillation core-s (labels + training)",
            "value": distill_core,
            "target": "",
        },
        {"quantity": "funnel core-s (estimated)", "value": funnel_core, "target": ""},
        {"quantity": "teacher-only core-s (estimated)", "value": teacher_only, "target": ""},
        {
            "quantity": "funnel / teacher-only",
            "value": funnel_core / teacher_only,
            "target": "<= 0.2",
        },
    ]
    report(
        f"alloys, student only: fcc Cu-Ag-Au-Pd up to {args.max_atoms} atoms, {n} orderings "
        f"on {args.site}",
        ["quantity", "value", "target"],
        rows,
        {"summary": {r["quantity"]: r["value"] for r in rows}},
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--campaign", type=Path, default=ROOT / "workflows" / "alloys.yaml")
    ap.add_argument("--max-atoms", type=int, default=8)
    ap.add_argument("--site", default="workstation")
    ap.add_argument("--sample", type=int, default=300, help="Orderings of drawn compositions.")
    ap.add_argument("--max-orderings", type=int, default=150, help="Per drawn composition.")
    ap.add_argument("--seed", type=int, default=101)
    ap.add_argument("--keep", type=Path, default=None, help="Keep the store in this folder.")
    ap.add_argument(
        "--student-only",
        action="store_true",
        help="The prefilter alone (its keep: auto resolved); the teacher's cost estimated.",
    )
    args = ap.parse_args()

    import yaml

    from hts.audit import funnel_of
    from hts.candidates import open_source
    from hts.spec import parse_campaign
    from hts.stages.hull import HullTracker
    from hts.store import StoreReader, open_dataset

    base = yaml.safe_load(args.campaign.read_text())
    base["candidates"]["max_atoms"] = args.max_atoms
    base["name"] = f"alloys-{args.max_atoms}"
    work = args.keep or Path(tempfile.mkdtemp(prefix="hts-million-"))
    work.mkdir(parents=True, exist_ok=True)
    store = work / "alloys.zarr"
    base["store"] = str(store)
    # model paths stay relative to workflows/, as in the shipped file
    for stage in base["stages"].values():
        m = stage.get("model", {})
        if m.get("path"):
            m["path"] = str((args.campaign.parent / m["path"]).resolve())
        link = stage.get("distillation")
        if link:
            link["report"] = str((args.campaign.parent / link["report"]).resolve())
    if args.student_only:
        from hts.distill.report import auto_keep_rule

        pre = base["stages"]["prefilter"]
        if pre.get("keep") == "auto":
            pre["keep"] = auto_keep_rule(
                pre["distillation"]["report"], pre["distillation"].get("target_recall", 0.98)
            ).text
        audit_share = float(pre.get("audit", 0.0))
        pre["audit"] = 0.0
        base["stages"] = {"prefilter": pre}
        print(f"student only: keep {pre['keep']}")
    campaign_file = work / "alloys.yaml"
    campaign_file.write_text(yaml.safe_dump(base, sort_keys=False))
    campaign = parse_campaign(base, base_dir=str(work))
    space = open_source(campaign)

    t0 = time.perf_counter()
    expected = sum(1 for _ in space.assignments())
    print(f"{expected:,} orderings in the space (counted in {time.perf_counter() - t0:.0f} s)")
    print(f"running hts run on {args.site} ...", flush=True)
    run = _run(campaign_file, args.site, work)
    print(f"  {run['wall_s']:.0f} s, peak RSS {run['peak_rss_mb']:.0f} MB", flush=True)

    ds = open_dataset(store)
    n = int(ds.sizes["candidate"])
    ids = ds.id.values.astype(str)
    unique = len(set(ids.tolist()))
    kept_pre = ds.kept.values[:, 0]
    common = _run_rows(expected, n, unique, run, store, kept_pre)
    link = campaign.stages.prefilter.distillation
    distill = json.loads(Path(link.report).read_text()) if link else {}
    if args.student_only:
        _student_only(args, ds, common, kept_pre, distill, audit_share)
        return
    rescored = np.isfinite(ds.energy_per_atom.values[:, 1])
    kept_teacher = ds.kept.values[:, 1]
    own = funnel_of(StoreReader(store))
    audit = own["audit"] or {}

    # -- recall against the teacher on whole compositions ---------------------------
    rescore = campaign.stages.rescore
    sample = _sample_compositions(space, args.sample, args.max_orderings, args.seed)
    cands = [c for members in sample.values() for c in members]
    print(f"teacher relaxing {len(cands)} orderings of {len(sample)} compositions ...", flush=True)
    t1 = time.perf_counter()
    recs = _teacher(cands, rescore, args.site, work / "parsl-sample")
    sample_wall = time.perf_counter() - t1
    hull = HullTracker()
    refs = StoreReader(store).attrs.get("references", {}).get("rescore", {})
    for el, r in refs.items():
        if r.get("energy_per_atom") is not None and math.isfinite(r["energy_per_atom"]):
            hull.add_reference(el, float(r["energy_per_atom"]))
    e_t = ds.energy_per_atom.values[:, 1]
    hull.add(
        (str(f), float(e)) for f, e in zip(ds.formula.values, e_t, strict=True) if math.isfinite(e)
    )
    ok = [(c, r) for c, r in zip(cands, recs, strict=True) if r.status == "ok"]
    hull.add((c.formula, r.energy_per_atom) for c, r in ok)

    def teacher_keeps(c, r) -> bool:  # the rescore stage's own keep rule, on the sample's hull
        values = {
            "e_above_hull": hull.e_above_hull(c.formula, r.energy_per_atom),
            "energy_per_atom": r.energy_per_atom,
            "n_atoms": float(c.n_atoms),
            "converged": float(r.converged),
        }
        return bool(rescore.keep(values))

    stable = [c.id for c, r in ok if teacher_keeps(c, r)]
    where = {i: k for k, i in enumerate(ids)}
    found = [i for i in stable if i in where and kept_pre[where[i]]]
    recall_sample = len(found) / len(stable) if stable else float("nan")

    # -- costs (core-seconds) -----------------------------------------------------------
    t_student = float(np.nansum(ds.time_s.values[:, 0]))
    t_teacher_run = float(np.nansum(ds.time_s.values[rescored, 1]))
    per_teacher = float(np.mean([r.time_s for r in recs])) if recs else float("nan")
    distill_core = _distill_core(distill, per_teacher)
    funnel_core = distill_core + t_student + t_teacher_run
    teacher_only = n * per_teacher

    rows = [
        *common,
        {
            "quantity": "teacher relaxations (survivors + audit)",
            "value": int(rescored.sum()),
            "target": "",
        },
        {"quantity": "teacher-stable found", "value": int(kept_teacher.sum()), "target": ""},
        {
            "quantity": "recall, audited estimate (95 % CI)",
            "value": _interval(audit.get("recall"), audit.get("recall_ci")),
            "target": "",
        },
        {
            "quantity": "audited rejects scored / teacher-stable among them",
            "value": f"{audit.get('scored')} / {audit.get('missed')}",
            "target": "",
        },
        {
            "quantity": "sample: compositions / orderings",
            "value": f"{len(sample)} / {len(cands)}",
            "target": "",
        },
        {
            "quantity": "sample: teacher-stable / kept by the student",
            "value": f"{len(stable)} / {len(found)}",
            "target": "",
        },
        {
            "quantity": "recall against the teacher (sample)",
            "value": recall_sample,
            "target": ">= 0.98",
        },
        {"quantity": "teacher core-s per ordering", "value": per_teacher, "target": ""},
        {"quantity": "student core-s per ordering", "value": t_student / max(n, 1), "target": ""},
        {
            "quantity": "distillation core-s (labels + training)",
            "value": distill_core,
            "target": "",
        },
        {"quantity": "funnel core-s (distillation included)", "value": funnel_core, "target": ""},
        {"quantity": "teacher-only core-s (estimated)", "value": teacher_only, "target": ""},
        {
            "quantity": "funnel / teacher-only",
            "value": funnel_core / teacher_only,
            "target": "<= 0.2",
        },
        {"quantity": "sample teacher wall_s", "value": sample_wall, "target": ""},
    ]
    report(
        f"alloys: fcc Cu-Ag-Au-Pd up to {args.max_atoms} atoms, {n} orderings on {args.site}",
        ["quantity", "value", "target"],
        rows,
        {"summary": {r["quantity"]: r["value"] for r in rows}},
    )


if __name__ == "__main__":
    main()
