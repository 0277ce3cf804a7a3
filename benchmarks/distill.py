"""Which student, from how many teacher labels: the learning curve that picks ``hts distill``'s default.

Every design is trained on nested prefixes of one uniform draw of training
candidates (400 ⊂ 1,600 ⊂ 6,400 teacher relaxations by default) of the space
``workflows/distill-demo.yaml`` samples (``workflows/screen.yaml``: 29,410
candidates), and judged on the same held-out *whole* chemical systems (the
distillation's calibration systems with their subsystems, never trained on),
as a campaign would use it: the student's ``e_above_hull`` on its own hull
(elemental references fitted on its training candidates) against the
teacher's on the teacher's hull.  Per cell:

- ``eh_mae``: mean |student − teacher| ``e_above_hull`` (meV/atom); ``p98_stable``:
  the 98th percentile of that error on teacher-stable candidates (the tail
  decides recall);
- Spearman ρ of ``e_above_hull``;
- ``oracle_098``: the share discarded at the best threshold that keeps recall
  ≥ 0.98 of teacher-stable candidates (teacher ``e_above_hull`` ≤ 0.05);
- ``auto``: what ``keep: auto`` does — the smallest threshold whose 95 %
  Clopper–Pearson lower bound on recall reaches 0.95 — *cross-fitted*: chosen
  on half of the systems and applied to the other half, both ways, so the
  recall and discarded share are out of sample (``auto_in`` is the in-sample
  figure the distillation report gives);
- ``cost``: a teacher relaxation's time per candidate over the student's, both
  measured in this run on the same candidates (``ratio_per_candidate``);
- training wall time and epochs.

Designs (``--designs``): ``scratch`` (the small MACE direct student trained from
scratch, the old default), ``trunk-K`` (SevenNet-0's embedding and first K of
its 5 blocks, a new readout, energy labels only), ``trunk`` (every block, starting
from the teacher's readout), and ``+atoms`` / ``+features`` suffixes (the
teacher's per-atom energies / readout features at its minimum as extra targets).

    python benchmarks/distill.py [--sizes 400 1600 6400] [--designs scratch trunk-2 trunk+atoms]
                                 [--label] [--out bench-distill] [--epochs N]

``--label`` first has the teacher relax whatever of the calibration systems and
the largest training prefix the dataset lacks (about 1 candidate/s on 2
cores); without it only what is labelled is used.  Training runs are cached in
``--out`` by their data and settings, so a rerun only trains what is new.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# student / training overrides per design (on top of the distillation file's)
SCRATCH = {
    "student": {"kind": "direct"},
    "training": {"lr": 0.01, "epochs": 80, "patience": 15, "atom_weight": 0.0},
}
TRUNK = {
    "student": {"kind": "trunk"},
    "training": {"atom_weight": 0.0, "feature_weight": 0.0},
}


def design(name: str) -> dict:
    """The overrides of a design name: scratch, trunk, trunk-K, with +atoms / +features."""
    base, *extras = name.split("+")
    if base == "scratch":
        if extras:
            raise SystemExit(f"{name}: extras are for trunk designs")
        return json.loads(json.dumps(SCRATCH))
    if not base.startswith("trunk"):
        raise SystemExit(f"unknown design {name!r}")
    d = json.loads(json.dumps(TRUNK))
    if base != "trunk":
        d["student"]["blocks"] = int(base.split("-")[1])
    for e in extras:
        if e == "atoms":
            d["training"]["atom_weight"] = 1.0
        elif e == "features":
            d["training"]["feature_weight"] = 1.0
        elif e == "noaug":
            d["training"]["augment"] = False
        elif e == "frozen":
            d["training"]["freeze_blocks"] = 20
        elif e.startswith("heads"):
            d["student"]["heads"] = int(e[len("heads") :])
        elif e.startswith("h") and e[1:].isdigit():
            d["student"]["readout_hidden"] = int(e[1:])
        elif e.startswith("ep") and e[2:].isdigit():
            d["training"]["epochs"] = int(e[2:])
        elif e.startswith("freeze"):
            d["training"]["freeze_blocks"] = int(e[len("freeze") :])
        elif e.startswith("lr"):  # +lr5: the readout at 5e-3
            d["training"]["lr"] = float(e[2:]) * 1e-3
        elif e.startswith("tlr"):  # +tlr0.3: the trunk at 0.3 x the readout's rate
            d["training"]["trunk_lr"] = float(e[3:])
        else:
            raise SystemExit(f"unknown extra {e!r} in {name!r}")
    return d


def _fold(system: str) -> int:
    return int(hashlib.sha1(f"fold:{system}".encode()).hexdigest()[:8], 16) % 2


def oracle_discard(t: np.ndarray, s: np.ndarray, stable: float, recall: float) -> float:
    """The largest share discarded by a threshold on ``s`` that keeps ``recall`` of teacher-stable."""
    st = np.sort(s[t <= stable + 1e-9])
    if not len(st):
        return float("nan")
    keep = int(np.ceil(recall * len(st)))
    thr = st[keep - 1]
    return float(np.mean(s > thr + 1e-12))


def judge(result: dict, run, stable: float, target: float, confidence: float) -> dict:
    """The cell's figures from :func:`evaluate_student`'s rows (held-out primary candidates)."""
    from hts.distill.screening import screening_metrics

    rows = [
        r
        for r in result["candidates"]
        if r["system"] == "primary"
        and not r["trained"]
        and r["teacher_e_above_hull"] is not None
        and r["student_e_above_hull"] is not None
    ]
    t = np.array([r["teacher_e_above_hull"] for r in rows])
    s = np.array([r["student_e_above_hull"] for r in rows])
    err = np.abs(s - t)
    is_stable = t <= stable + 1e-9
    folds = np.array([_fold(run.cands[r["id"]].chemsys) for r in rows])
    kept = found = 0
    for k in (0, 1):
        a, b = folds == k, folds != k
        thr = screening_metrics(t[a], s[a], stable, target, confidence)["threshold"]
        if thr is None:
            kept = found = -1
            break
        kept += int((s[b] <= thr + 1e-9).sum())
        found += int(((s[b] <= thr + 1e-9) & is_stable[b]).sum())
    cal = result["screening"]["calibration"]
    return {
        "n": len(rows),
        "n_stable": int(is_stable.sum()),
        "eh_mae": 1000 * float(err.mean()),
        "p98_stable": 1000 * float(np.percentile(err[is_stable], 98)) if is_stable.any() else None,
        "rho": cal["spearman_e_above_hull"],
        "energy_mae": result["errors"]["calibration"]["own_energy_mae_mev"],
        "oracle_098": oracle_discard(t, s, stable, 0.98),
        "auto_recall": found / max(int(is_stable.sum()), 1) if kept >= 0 else None,
        "auto_discard": 1 - kept / len(rows) if kept >= 0 else None,
        "auto_in_threshold": cal["threshold"],
        "auto_in_discard": cal["discarded_at_threshold"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", type=Path, default=ROOT / "workflows" / "distill-demo.yaml")
    ap.add_argument("--sizes", type=int, nargs="+", default=[400, 1600, 6400])
    ap.add_argument(
        "--designs",
        nargs="+",
        default=["scratch", "trunk-1", "trunk-2", "trunk-3", "trunk", "trunk+atoms"],
    )
    ap.add_argument("--label", action="store_true", help="Label what the dataset lacks first.")
    ap.add_argument("--epochs", type=int, default=None, help="Override every design's epochs.")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="Training threads (default the file's); 1 while something else uses the cores.",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench-distill")
    ap.add_argument("--cost-candidates", type=int, default=16)
    ap.add_argument(
        "--existing",
        nargs="*",
        default=[],
        metavar="NAME=FILE:LABELS",
        help="Also judge student files trained elsewhere (e.g. the old shipped student), "
        "given the teacher relaxations they cost.",
    )
    args = ap.parse_args()

    from hts.distill.calibration import evaluate_student
    from hts.distill.config import load_distill
    from hts.distill.context import DistillRun, rescore_threshold
    from hts.distill.dataset import LabelStore
    from hts.distill.labelling import label, sample, teacher_references
    from hts.distill.speed import candidate_cost
    from hts.distill.training import train_round
    from hts.execution import make_engine
    from hts.models import load_model

    cfg0 = load_distill(args.config)
    campaign = cfg0.load_campaign()
    teacher = cfg0.resolved_teacher(campaign)
    relax = (campaign.stages.rescore or campaign.stages.prefilter).relax
    cfg0 = cfg0.model_copy(
        update={
            "sampling": cfg0.sampling.model_copy(update={"relax": relax}),
            "student": cfg0.student.model_copy(update={"kind": cfg0.student_kind(teacher)}),
        }
    )
    labels = LabelStore(
        cfg0.path(cfg0.output) / "dataset" / cfg0.dataset_key(teacher),
        {
            "teacher": teacher.model_dump(mode="json"),
            "sampling": cfg0.sampling.model_dump(mode="json"),
        },
    )
    args.out.mkdir(parents=True, exist_ok=True)
    engine = make_engine("parsl", campaign.site, args.out / "parsl")
    phase = {"name": ""}

    def progress(p) -> None:
        if p.phase != phase["name"]:
            phase["name"] = p.phase
            print(f"\n{time.strftime('%H:%M:%S')} {p.phase}", end="", flush=True)
        if p.total:
            print(f"\r{p.phase} {p.done}/{p.total} {p.detail}".ljust(100), end="", flush=True)

    run = DistillRun(cfg0, campaign, teacher, engine, labels, args.out, progress)
    results_file = args.out / "curve.json"
    # earlier runs' cells stay (a rerun of a cell replaces it): the table grows run by run
    cells: list[dict] = json.loads(results_file.read_text()) if results_file.exists() else []

    def keep(cell: dict) -> None:
        cells[:] = [
            c for c in cells if (c["design"], c["labels"]) != (cell["design"], cell["labels"])
        ]
        cells.append(cell)
        results_file.write_text(json.dumps(cells, indent=1))

    try:
        sample(run)
        draw = list(run.train)
        calibration = set(run.primary) | set(run.closure)
        if args.label:
            label(run, [run.cands[c] for c in [*run.primary, *run.closure]], "calibration")
            label(run, [run.cands[c] for c in draw[: max(args.sizes)]], "training")
        teacher_references(run)
        stable = cfg0.evaluation.stable_threshold or rescore_threshold(campaign)
        ev = cfg0.evaluation
        teacher_model = load_model(teacher)
        pick = [run.cands[c] for c in run.primary[: args.cost_candidates]]
        for item in args.existing:  # students trained elsewhere: judged, not trained
            name, rest = item.split("=", 1)
            path, n = rest.rsplit(":", 1)
            # its elemental references are fitted on labelled training candidates, as for any
            run.train = [c for c in draw if run.ok(c) and c not in calibration][:1600]
            result = evaluate_student(run, Path(path).resolve())
            spec = result.pop("student_spec")
            cost = candidate_cost(
                teacher_model, teacher, relax, load_model(spec), spec, pick, True, None, 3
            )
            cell = {
                "design": name,
                "labels": int(n),
                "trained_on": None,
                **judge(result, run, stable, ev.target_recall, ev.confidence),
                "cost_ratio": cost["ratio_per_candidate"],
                "student_ms": 1000 * cost["student_s_per_candidate"],
                "train_s": None,
                "epochs": None,
                "wall_s": None,
            }
            keep(cell)
            print(f"\n{json.dumps(cell)}", flush=True)
        for name in args.designs:
            d = design(name)
            student = cfg0.student.model_copy(update=d["student"])
            training = cfg0.training.model_copy(update=d["training"])
            if args.epochs:
                training = training.model_copy(update={"epochs": args.epochs})
            if args.threads:
                training = training.model_copy(update={"threads": args.threads})
            cfg = cfg0.model_copy(update={"student": student, "training": training})
            run.cfg = cfg
            for n in sorted(args.sizes):
                prefix = draw[:n]
                have = [c for c in prefix if run.ok(c) and c not in calibration]
                missing = sum(1 for c in prefix if c not in labels.candidates)
                if missing > 0.02 * n:
                    print(
                        f"\n{name} @ {n}: {missing} of {n} not labelled yet (use --label): skipped"
                    )
                    continue
                run.train = have
                t0 = time.time()
                file, trained = train_round(run, 0, None)
                result = evaluate_student(run, file)
                spec = result.pop("student_spec")
                cost = candidate_cost(
                    teacher_model, teacher, relax, load_model(spec), spec, pick, True, None, 3
                )
                cell = {
                    "design": name,
                    "labels": n,
                    "trained_on": len(have),
                    **judge(result, run, stable, ev.target_recall, ev.confidence),
                    "cost_ratio": cost["ratio_per_candidate"],
                    "student_ms": 1000 * cost["student_s_per_candidate"],
                    "train_s": trained["wall_s"],
                    "epochs": trained["epochs"],
                    "wall_s": time.time() - t0,
                }
                keep(cell)
                print(f"\n{json.dumps(cell)}", flush=True)
    finally:
        engine.close()
    print()
    rows = [
        {
            "design": c["design"],
            "labels": c["labels"],
            "eh_mae": c["eh_mae"],
            "p98_stable": c["p98_stable"],
            "rho": c["rho"],
            "oracle_098": c["oracle_098"],
            "auto_recall": c["auto_recall"],
            "auto_discard": c["auto_discard"],
            "auto_in": c["auto_in_discard"],
            "cost": f"1/{c['cost_ratio']:.0f}",
            "train_s": c["train_s"],
        }
        for c in cells
    ]
    report(
        "distill",
        list(rows[0]) if rows else ["design"],
        rows,
        {"cells": cells, "n_held_out": cells[0]["n"] if cells else 0},
    )
    if cells:
        plot(cells, args.out / "curve.png")
        print(f"plot: {args.out / 'curve.png'}")


def plot(cells: list[dict], path: Path) -> None:
    """e_above_hull MAE and share discarded at recall 0.98 against teacher labels, per design."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    def series(design: str) -> str:  # +ep300 at 400 and +ep100 at 6,400: one budget of steps
        return re.sub(r"\+ep\d+", " (long)", design)

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5))
    names = list(dict.fromkeys(series(c["design"]) for c in cells))
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(names), 2)))
    for name, colour in zip(names, colours, strict=False):
        mine = sorted((c for c in cells if series(c["design"]) == name), key=lambda c: c["labels"])
        x = [c["labels"] for c in mine]
        a.loglog(x, [c["eh_mae"] for c in mine], "o-", color=colour, label=name)
        b.semilogx(x, [c["oracle_098"] for c in mine], "o-", color=colour, label=name)
    a.axhline(30, color="k", ls=":", lw=1)
    b.axhline(0.5, color="k", ls=":", lw=1)
    a.set(xlabel="teacher relaxations", ylabel="e_above_hull MAE (meV/atom), held-out systems")
    b.set(xlabel="teacher relaxations", ylabel="discarded at recall 0.98 (oracle)")
    sizes = sorted({c["labels"] for c in cells if c.get("train_s") is not None})  # the curve's
    for ax in (a, b):
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
    a.yaxis.set_major_formatter(ScalarFormatter())
    a.yaxis.set_minor_formatter(ScalarFormatter())
    b.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
