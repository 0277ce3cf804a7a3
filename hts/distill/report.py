"""The distillation report: written by ``hts distill``, read back by a campaign's ``keep: auto``.

:func:`build_report` gathers a finished run's figures (with the speed of
student and teacher, timed here) into ``report.json``; :func:`markdown` renders
it as ``report.md``.  A campaign whose prefilter names the report reads only
three things back: the calibrated keep threshold (:func:`auto_keep_rule`), the
student's kind (:func:`student_kind`) and its fitted elemental references
(:func:`fitted_references`); a report that cannot answer is a
:class:`ReportError` naming the file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hts.distill.screening import stable_needed, threshold_for

if TYPE_CHECKING:
    from hts.distill.context import DistillRun

__all__ = [
    "ReportError",
    "auto_keep_rule",
    "build_report",
    "fitted_references",
    "markdown",
    "student_kind",
]


class ReportError(ValueError):
    """A distillation report that is missing or cannot answer the question asked."""


def _report_section(path: Path, *keys: str):
    """One section of a distillation report, or a :class:`ReportError` naming the file."""
    try:
        data = json.loads(path.read_text())
        for k in keys:
            data = data[k]
    except FileNotFoundError:
        raise ReportError(
            f"{path}: no such distillation report (run `hts distill` first)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ReportError(f"{path}: not a readable hts distillation report ({err})") from None
    return data


def auto_keep_rule(report: str | Path, target_recall: float):
    """``e_above_hull <= t``: the smallest ``t`` whose calibrated recall bound reaches the target.

    The bound is the report's one-sided Clopper–Pearson lower bound on recall
    of teacher-stable calibration candidates (held out from training).  Too few
    of them for any threshold to show the target is an error naming the fix.
    """
    from hts.spec import KeepRule

    path = Path(report)
    cal = _report_section(path, "screening", "calibration")
    curve = cal["curve"]
    t = threshold_for(curve["threshold"], curve["recall_lower_bound"], target_recall)
    if t is None:
        n, conf = cal["n_teacher_stable"], cal.get("confidence", 0.95)
        need = stable_needed(target_recall, conf)
        if n < need:
            raise ReportError(
                f"{path}: its calibration set holds {n} teacher-stable candidates, and a "
                f"{conf:.0%} lower bound of {target_recall} on recall needs at least {need} "
                "(with none missed): raise sampling.calibration in the distillation file and "
                "run hts distill again, or lower distillation.target_recall"
            )
        raise ReportError(
            f"{path}: no threshold up to {curve['threshold'][-1]} eV/atom shows recall "
            f"{target_recall} at {conf:.0%} confidence on its {n} teacher-stable calibration "
            "candidates; lower distillation.target_recall or improve the student"
        )
    return KeepRule.parse(f"e_above_hull <= {t:g}")


def student_kind(report: str | Path) -> str | None:
    """``direct`` or ``relax`` from a distillation report (None: a report from before kinds)."""
    try:
        return str(_report_section(Path(report), "student", "kind"))
    except ReportError:
        _report_section(Path(report))  # a missing or unreadable file still says so
        return None


def fitted_references(report: str | Path) -> dict[str, float]:
    """The student's fitted elemental references from a distillation report (eV/atom)."""
    table = _report_section(Path(report), "references", "student_fitted")
    return {el: float("nan") if e is None else float(e) for el, e in table.items()}


def build_report(run: DistillRun, result: dict, rounds: list[dict]) -> dict:
    """The report of a finished run: its last evaluation, its rounds, and the speed measured now.

    ``result`` is :func:`hts.distill.calibration.evaluate_student`'s last
    answer (its ``student_spec`` is taken out); the plots are drawn into the
    run's output folder and named in the report.
    """
    from hts.distill.plots import plot_report
    from hts.distill.speed import candidate_cost, speed_cells, speed_ratio
    from hts.models import load_model
    from hts.models.base import resolve_device

    cfg = run.cfg
    spec = result.pop("student_spec")
    student = load_model(spec)
    teacher_model = load_model(run.teacher)
    cal_ids = [c["id"] for c in result["candidates"]]
    cells = speed_cells(
        [run.cands[c].to_atoms() for c in cal_ids],
        n=cfg.evaluation.speed_cells,
        seed=cfg.seed,
    )
    speed = speed_ratio(teacher_model, student, cells, cfg.evaluation.speed_repeats)
    # per candidate as the funnel spends it: the student's verdict vs a teacher relaxation
    pick = np.random.default_rng(cfg.seed).permutation(len(cal_ids))[: cfg.evaluation.speed_cells]
    speed |= candidate_cost(
        teacher_model,
        run.teacher,
        cfg.sampling.relax,
        student,
        spec,
        [run.cands[cal_ids[int(i)]] for i in pick],
        run.direct,
        run.campaign.stages.prefilter.relax,
        cfg.evaluation.speed_repeats,
    )
    labelled = sum(1 for c in run.labels.candidates.values() if c["file"])
    report = {
        "name": cfg.name,
        "teacher": f"{run.teacher.name} ({teacher_model.version})",
        "student": {
            "kind": cfg.student.kind,
            "file": "student.model",
            "n_parameters": int(sum(p.numel() for p in student.model.parameters())),
            "architecture": cfg.student.model_dump(mode="json"),
        },
        "training": cfg.training.model_dump(mode="json"),
        "device": resolve_device("auto"),
        "space": {"candidates": int(run.timing.get("space_size", 0))},
        "dataset": {
            "path": str(run.labels.root.relative_to(run.out)),
            "teacher_relaxations": labelled,
            "training_candidates": len(run.train),
            "single_points": len(run.points),
            "calibration_systems": len(run.systems),
            "calibration_candidates": len(run.primary),
            "subsystem_candidates": len(run.closure),
            # what a calibration "system" and a held-out one is: a chemical system, or in a
            # space of one chemistry a composition (the hull then over every teacher label)
            "calibration_by": "composition" if run.by == "formula" else "chemical system",
            "held_out_share": cfg.sampling.holdout_systems,
            "seed": cfg.seed,  # with the share, which chemical systems were never trained on
        },
        "rounds": rounds,
        "screening": result["screening"],
        "errors": result["errors"],
        "speed": speed,
        "references": result["references"],
        "timing": {k: v for k, v in run.timing.items() if k.endswith("_s")},
        # candidates the student could not score in the last evaluation, and why
        "student_failures": {
            "n": sum(run.failures.values()),
            "reasons": dict(run.failures.most_common(5)),
        },
        "candidates": result["candidates"],
    }
    report["plots"] = plot_report(report, run.out)
    return report


def _f(x, fmt: str = ".1f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


_SPLITS = (
    ("calibration", "calibration"),
    ("seen systems", "seen_systems"),
    ("held-out systems", "held_out_systems"),
)


def _calibration_sentence(ds: dict) -> str:
    """What the calibration candidates are, and where their hull comes from."""
    if ds.get("calibration_by") == "composition":
        return (
            f"{ds['calibration_candidates']} from {ds['calibration_systems']} calibration "
            "compositions (whole up to a cap, weighted by how they were drawn; their hull is "
            "over every teacher relaxation here, a sample's hull, so e_above_hull errs low); "
            f"{ds.get('single_points', 0)} teacher single points of unrelaxed candidates; "
            f"{ds['held_out_share']:.0%} of compositions never trained on."
        )
    return (
        f"{ds['calibration_candidates']} in {ds['calibration_systems']} calibration "
        f"systems (+ {ds['subsystem_candidates']} subsystem candidates for their hulls); "
        f"{ds.get('single_points', 0)} teacher single points of unrelaxed candidates; "
        f"{ds['held_out_share']:.0%} of chemical systems never trained on."
    )


def markdown(report: dict) -> str:
    """``report.md``: the rounds, the screen on each split, where the error is, and the speed."""
    sp, ds = report["speed"], report["dataset"]
    st = report["student"]
    unit = "compositions" if ds.get("calibration_by") == "composition" else "systems"
    splits = [(label.replace("systems", unit), key) for label, key in _SPLITS]
    lines = [
        f"# Distillation report — {report['name']}",
        "",
        f"Teacher **{report['teacher']}** → {st['kind']} student **{st['file']}** "
        f"({st['n_parameters']} parameters).  Space: {report['space']['candidates']} candidates; "
        f"{ds['teacher_relaxations']} teacher relaxations: {ds['training_candidates']} for "
        f"training, " + _calibration_sentence(ds),
        "",
        "## Rounds",
        "",
        "| round | teacher relaxations | training candidates | threshold | recall | lower bound | "
        "discarded | Spearman ρ | energy MAE (meV/atom) | train (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rounds"]:
        lines.append(
            f"| {r['round']} | {r['teacher_relaxations']} | {r['training_candidates']} | "
            f"{_f(r['threshold'], '.3f')} | {_f(r['recall'], '.3f')} | "
            f"{_f(r['recall_lower_bound'], '.3f')} | {_f(r['discarded'], '.3f')} | "
            f"{_f(r['spearman'], '.3f')} | {_f(r['own_energy_mae_mev'])} | {_f(r['train_wall_s'], '.0f')} |"
        )
    lines += [
        "",
        f"## Screening (calibration {unit}, candidates never trained on)",
        "",
        "| candidates | n | teacher-stable | Spearman ρ | threshold | recall | lower bound | discarded |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, key in splits:
        m = report["screening"][key]
        lines.append(
            f"| {label} | {m['n_candidates']} | {m['n_teacher_stable']} | "
            f"{_f(m['spearman_e_above_hull'], '.3f')} | {_f(m['threshold'], '.3f')} | "
            f"{_f(m['recall_at_threshold'], '.3f')} | {_f(m['recall_lower_bound_at_threshold'], '.3f')} | "
            f"{_f(m['discarded_at_threshold'], '.3f')} |"
        )
    cal = report["screening"]["calibration"]
    lines += [
        "",
        f"Teacher-stable: teacher e_above_hull ≤ {cal['stable_threshold']} eV/atom.  `keep: auto` "
        f"takes the smallest threshold whose one-sided {cal['confidence']:.0%} Clopper-Pearson "
        f"lower bound on recall reaches {cal['target_recall']} "
        f"(needs ≥ {cal['stable_needed']} teacher-stable calibration candidates): "
        f"`e_above_hull <= {_f(cal['threshold'], '.3f')}`.",
        "",
        "## Where the error is (meV/atom)",
        "",
        "| candidates | at teacher's minimum | own − at teacher's (mean) | own vs teacher | "
        "own within 20 meV | polymorph Δ at teacher's | polymorph Δ own | e_above_hull |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, key in splits:
        e = report["errors"][key]
        lines.append(
            f"| {label} | {_f(e['energy_mae_at_teacher_minimum_mev'])} | "
            f"{_f(e['own_minus_at_teacher_mean_mev'])} | {_f(e['own_energy_mae_mev'])} | "
            f"{_f(e['own_within_20_mev'], '.2f')} | {_f(e['pair_difference_mae_at_teacher_minimum_mev'])} | "
            f"{_f(e['pair_difference_mae_own_mev'])} | {_f(e['ehull_mae_mev'])} |"
        )
    lines += [
        "",
        '"Own" is what the prefilter uses: a relaxing student\'s own relaxed energy, a direct '
        "student's prediction from the unrelaxed candidate.",
        "",
        "## Speed (same process, alternating)",
        "",
        f"{sp['n_cells']} cells of {sp['atoms_min']}–{sp['atoms_max']} atoms on {report['device']}: "
        f"teacher {1000 * sp['teacher_s_per_structure']:.1f} ms/structure, student "
        f"{1000 * sp['student_s_per_structure_batched']:.1f} ms batched "
        f"(**{sp['ratio_batched']:.1f}×**), {1000 * sp['student_s_per_structure_single']:.1f} ms one at a time "
        f"({sp['ratio_single']:.1f}×).",
        "",
        *(
            [
                f"Per candidate, as the funnel spends it ({sp['n_candidates']} calibration "
                f"candidates): a teacher relaxation {sp['teacher_relaxation_s_per_candidate']:.2f} s, "
                f"the student's verdict {1000 * sp['student_s_per_candidate']:.1f} ms: "
                f"**1/{sp['ratio_per_candidate']:.0f}** of a teacher relaxation.",
                "",
            ]
            if "ratio_per_candidate" in sp
            else []
        ),
        "Time: "
        + ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in report["timing"].items())
        + f"; {_f(report.get('wall_s'), '.0f')} s in all.",
        "",
        "![parity](parity.png)",
        "",
        "![screening](screening.png)",
        "",
        "![rounds](rounds.png)",
        "",
    ]
    if "flywheel" in report:
        lines += _flywheel_markdown(report["flywheel"])
    return "\n".join(lines)


def _flywheel_markdown(fw: dict) -> list[str]:
    """The flywheel: the student before and after fine-tuning on the stores' teacher rows."""
    lines = [
        "## Flywheel: before and after, on the stores' held-out teacher rows",
        "",
        f"{fw['trained_on']} store rows trained on; {fw['held_out_share']:.0%} held out by id. "
        f"Judged on: {fw['population']}.",
        "",
        "| store | rows | teacher rows | survivors | audited | audited the teacher keeps |",
        "|---|---|---|---|---|---|",
    ]
    for st in fw["stores"]:
        lines.append(
            f"| {st['path']} | {st['rows']} | {st['teacher_rows']} | {st['survivors']} | "
            f"{st['audited']} | {st.get('audit_missed', 'n/a')} |"
        )
    lines += [
        "",
        "| student | threshold | recall | lower bound | discarded | audited misses kept | "
        "Spearman ρ | energy MAE (meV/atom) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("before", "after"):
        e = fw.get(name)
        if not e:
            continue
        for key, label in (
            ("calibrated", "calibrated here"),
            ("own_report", "its report's"),
            ("init_threshold", "the first student's"),
        ):
            if key not in e:
                continue
            a = e[key]
            if not a:
                lines.append(
                    f"| {name} ({label}) | none: too few teacher-stable rows | | | | "
                    f"– / {e['audit_missed']} | {_f(e['spearman_e_above_hull'], '.3f')} | "
                    f"{_f(e['own_energy_mae_mev'])} |"
                )
                continue
            lines.append(
                f"| {name} ({label}) | {_f(a['threshold'], '.3f')} | {_f(a['recall'], '.3f')} | "
                f"{_f(a['recall_lower_bound'], '.3f')} | {_f(a['discarded'], '.3f')} | "
                f"{a['audit_missed_found']} / {e['audit_missed']} | "
                f"{_f(e['spearman_e_above_hull'], '.3f')} | {_f(e['own_energy_mae_mev'])} |"
            )
    lines += [
        "",
        "Recall of teacher-stable candidates and the share discarded are weighted: a held-out "
        "survivor stands for the survivors, a held-out audited reject for the rejects; the "
        "bound is Clopper-Pearson on the effective number of teacher-stable candidates.",
        "",
    ]
    return lines
