"""What ``hts`` prints: live progress, the status tables, the distillation summary, sites.

Kept apart from :mod:`hts.cli` (which parses options, calls into the package
and maps errors to exit codes) so that the commands read as what they do, and
so that rendering can change without touching them.  Everything here takes
plain data (summaries, reports, check results) and prints it with rich.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

__all__ = [
    "Display",
    "console",
    "hms",
    "out",
    "print_check",
    "print_distilled",
    "print_interrupted",
    "print_verified",
    "print_jobs",
    "print_sites",
    "print_status",
]

console = Console(stderr=True)  # progress, messages and errors
out = Console()  # results
# Not a terminal (a batch job's log, a pipe): rich would cut tables to 80 columns
# ("fo…"); widen to fit instead (tables take only the width their content needs).
for _c in (console, out):
    if not _c.is_terminal and "COLUMNS" not in os.environ:
        _c.width = 1000


class Display:
    """Live counts on a terminal; a plain line every few seconds otherwise (CI, log files)."""

    def __init__(self, name: str, quiet: bool) -> None:
        self.name = name
        self.quiet = quiet
        self.tty = console.is_terminal
        self.live = None
        self._last = 0.0

    def __enter__(self):
        if self.tty and not self.quiet:
            from rich.live import Live

            self.live = Live(console=console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.__exit__(*exc)

    def render(self, s):
        from rich.progress_bar import ProgressBar

        total = s.total_estimate
        done = s.done + s.resumed
        eta = s.eta_s
        t = Table.grid(padding=(0, 2))
        t.add_row(
            f"[bold]{self.name}[/] — {s.phase}",
            ProgressBar(total=float(total or max(done, 1)), completed=float(done), width=30),
        )
        t.add_row(
            f"done {done}{'/' + str(total) + ' (upper bound)' if total else ''}  "
            f"ok {s.ok}  failed {s.failed}  kept {s.kept}  in flight {s.in_flight} tasks",
            f"{s.rate:.2f} cand/s  ETA {hms(eta) if eta is not None else '?'}",
        )
        if s.rescored or s.rescore_waiting:
            t.add_row(
                f"teacher: rescored {s.rescored}  kept {s.rescore_kept}  waiting {s.rescore_waiting}"
                + (f"  (audit: {s.audited} rejects)" if s.audited else ""),
                "",
            )
        if s.validated or s.validate_waiting:
            t.add_row(
                f"DFT: finished {s.validated}  failed {s.validate_failed}  waiting {s.validate_waiting}",
                "",
            )
        return t

    def __call__(self, s) -> None:
        if self.quiet:
            return
        if self.live is not None:
            self.live.update(self.render(s))
            return
        now = time.time()
        if now - self._last >= 5 or s.phase in ("done",):
            self._last = now
            eta = s.eta_s
            console.print(
                f"\\[{self.name}] {s.phase}: done {s.done + s.resumed}"
                f"{'/' + str(s.total_estimate) if s.total_estimate else ''} ok {s.ok} failed {s.failed} "
                f"kept {s.kept}{_teacher(s)} | {s.rate:.2f} cand/s | ETA {hms(eta) if eta is not None else '?'}",
                highlight=False,
            )


def _teacher(s) -> str:
    text = ""
    if s.rescored or s.rescore_waiting:
        text += (
            f" | teacher: rescored {s.rescored} kept {s.rescore_kept} waiting {s.rescore_waiting}"
        )
        if s.audited:
            text += f" (audit: {s.audited} rejects)"
    if s.validated or s.validate_waiting:
        text += f" | DFT: finished {s.validated} failed {s.validate_failed} waiting {s.validate_waiting}"
    return text


def hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def print_jobs(store_path: Path) -> None:
    """The store's batch jobs (hts submit), when it has any."""
    from hts.execution.submit import job_states, jobs_dir

    if not (jobs_dir(store_path) / "jobs.json").is_file():
        return
    t = Table(title="batch jobs of this store")
    for col in ("job", "role", "state", "name", "elapsed", "nodes / reason"):
        t.add_column(col)
    for r in job_states(store_path):
        t.add_row(r["job_id"], r["role"], r["state"], r["name"], r["elapsed"], r["where"])
    out.print(t)


def status_json(store_path: Path, top: int = 10) -> str:
    """``hts status --json``: the summary, the audit and economics, the store's batch jobs."""
    import json

    from hts.execution.submit import job_states, jobs_dir
    from hts.report import summarize

    s = summarize(store_path, top=top)
    s["audit"] = s["funnel"]["audit"]
    s["economics"] = s["funnel"]["economics"]
    s["warning"] = s["funnel"]["warning"]
    del s["funnel"]
    has_jobs = (jobs_dir(store_path) / "jobs.json").is_file()
    s["jobs"] = job_states(store_path) if has_jobs else []
    s["store"] = str(store_path)

    def plain(x):
        if isinstance(x, float) and x != x:
            return None  # NaN is not JSON
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [plain(v) for v in x]
        if hasattr(x, "item"):  # numpy scalars
            return plain(x.item())
        return x

    return json.dumps(plain(s), indent=1, allow_nan=False)


def _fmt(x: float | None, spec: str, none: str = "–") -> str:
    return none if x is None else format(x, spec)


def print_funnel(f: dict) -> None:
    """The audit's recall with its interval, and the discovery economics, under the funnel table."""
    a, e = f["audit"], f["economics"]
    if a is not None:
        ci = a["recall_ci"]
        mci = a["miss_rate_ci"]
        out.print(
            f"audit ({a['share']:.1%} of rejects to the teacher): {a['scored']} of {a['audited']} "
            f"audited rejects scored, {a['missed']} teacher-stable (missed); miss rate "
            f"{_fmt(a['miss_rate'], '.3f')}"
            + (f" [{mci[0]:.3f}, {mci[1]:.3f}]" if mci and a["scored"] else "")
            + f"; recall of teacher-stable {_fmt(a['recall'], '.3f')}"
            + (f" (95 % CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
            + (
                f"; enrichment over random {a['enrichment']:.1f}×"
                if a["enrichment"] is not None
                else ""
            ),
            highlight=False,
        )
    if f.get("warning"):
        out.print(f"[bold yellow]warning:[/] {f['warning']}", highlight=False)
    parts = [
        f"{st['stage']} {st['kept']}/{e['screened']} ({st['discovery_rate']:.2%})"
        for st in e["stages"]
        if st["discovery_rate"] is not None and st["in"]
    ]
    if parts:
        line = "discovery rate (kept / screened): " + ", ".join(parts)
        if e.get("s_per_stable_hit") is not None:
            line += f"; {e['s_per_stable_hit']:.1f} worker-s per teacher-stable hit"
        if e.get("s_per_dft_hit") is not None:
            line += f", {e['s_per_dft_hit']:.0f} per DFT-confirmed hit"
        out.print(line, highlight=False)
    if e.get("teacher_only_s") is not None:
        share = e.get("teacher_saved_share")
        out.print(
            f"teacher time saved: {e['teacher_saved_s']:.0f} worker-s of "
            f"{e['teacher_only_s']:.0f} for the teacher alone"
            + (f" ({share:.0%})" if share is not None else "")
            + (
                f"; the audit cost ~{e['audit_teacher_s']:.0f} s of teacher time"
                if e.get("audit_teacher_s")
                else ""
            ),
            highlight=False,
        )


def print_status(store_path: Path, top: int = 10) -> None:
    from hts.report import summarize

    s = summarize(store_path, top=top)
    funnel = Table(title=f"funnel — {s['campaign']} ({store_path})")
    for col in ("stage", "model", "in", "ok", "failed", "kept"):
        funnel.add_column(col, justify="left" if col in ("stage", "model") else "right")
    funnel.add_row("candidates", "", str(s["rows"]), "", "", "")
    for st in s["stages"]:
        funnel.add_row(
            st["stage"],
            st["model"],
            str(st["in"]),
            str(st["ok"]),
            str(st["failed"]),
            str(st["kept"]),
        )
    out.print(funnel)
    print_funnel(s["funnel"])
    if s["wall_s"]:
        out.print(
            f"rate: {s['rows'] / s['wall_s']:.2f} candidates/s over {s['wall_s']:.0f} s of run time"
            f"{'' if s['finalized'] else '  (run in progress or interrupted: e_above_hull values are running values)'}",
            highlight=False,
        )
    if s["failures"]:
        t = Table(title="failures by reason")
        t.add_column("count", justify="right")
        t.add_column("reason")
        t.add_column("example ids")
        for f in s["failures"]:
            t.add_row(str(f["count"]), f["reason"], ", ".join(f["ids"]))
        out.print(t)
    if s.get("dft"):
        _print_dft(s["dft"])
    if s["best"]:
        names = s["stage_names"]
        t = Table(title="most stable candidates (deepest stage first; energies in eV/atom)")
        t.add_column("id", no_wrap=True, min_width=16)
        for col in ("formula", "prototype", "E_form", *(f"E_hull {n}" for n in names), "kept"):
            t.add_column(col, no_wrap=True)
        for b in s["best"]:
            t.add_row(
                b["id"],
                b["formula"],
                b["prototype"] or b["source"],
                energy(b["formation_energy"]),
                *(energy(b["e_above_hull_by_stage"][n]) for n in names),
                f"yes ({b['stage']})" if b["kept"] else "",
            )
        out.print(t)


def _print_dft(d: dict) -> None:
    """The validated candidates, DFT next to each MLIP stage, and the MLIP-vs-DFT error."""

    f = energy
    mlip = list(d["mae"])
    t = Table(title=f"DFT validation ({d['code']}): formation energy and e_above_hull, eV/atom")
    for col in ("id", "formula", "prototype", *(f"E_form {st}" for st in mlip), "E_form DFT"):
        t.add_column(col, no_wrap=True)
    for col in ("E_hull DFT", "converged", "time", "status"):
        t.add_column(col, no_wrap=True)
    for c in d["candidates"]:
        t.add_row(
            c["id"],
            c["formula"],
            c["prototype"],
            *(f(c["formation_energy"][st]) for st in mlip),
            f(c["formation_energy"]["validate"]),
            f(c["e_above_hull"]["validate"]),
            "yes" if c["converged"] else "no",
            "" if c["time_s"] is None else hms(c["time_s"]),
            c["status"] if c["status"] == "ok" else c["reason"][:80],
        )
    out.print(t)
    for st, m in d["mae"].items():
        if m["n"]:
            out.print(
                f"MLIP vs DFT, {st}: formation energy MAE {1000 * m['formation_energy']:.0f} meV/atom, "
                f"e_above_hull MAE {1000 * m['e_above_hull']:.0f} meV/atom over {m['n']} candidates",
                highlight=False,
            )
    for x in d.get("disagreements", []):  # first in the table too: what to look at first
        out.print(
            f"[bold yellow]teacher vs DFT:[/] {x['formula']} ({x['id']}): {x['kind']} "
            f"(e_above_hull {d['teacher']} {f(x['teacher_e_above_hull'])}, "
            f"DFT {f(x['dft_e_above_hull'])} eV/atom)",
            highlight=False,
        )


def energy(x: float | None) -> str:
    """An energy in eV/atom to 3 decimals; a value that rounds to zero prints as 0.000, never -0.000."""
    if x is None:
        return ""
    text = f"{x:.3f}"
    return "0.000" if text == "-0.000" else text


def print_distilled(report: dict, out_dir: Path, dtype: str, elapsed: float) -> None:
    """The distillation's closing summary and how to use the student in a campaign."""
    cal = report["screening"]["calibration"]
    err = report["errors"]["calibration"]
    sp = report["speed"]

    def pct(x) -> str:
        return "n/a" if x is None else f"{100 * x:.0f} %"

    out.print(
        f"finished in {hms(elapsed)}\n"
        f"calibration ({cal['n_candidates']} candidates never trained on, "
        f"{cal['n_teacher_stable']} teacher-stable): energy MAE {err['own_energy_mae_mev']:.1f} "
        f"meV/atom, Spearman ρ(e_above_hull) {cal['spearman_e_above_hull']:.2f}\n"
        f"keep: auto → e_above_hull <= {cal['threshold']}: keeps {pct(cal['recall_at_threshold'])} "
        f"of teacher-stable ({cal['confidence']:.0%} lower bound "
        f"{pct(cal['recall_lower_bound_at_threshold'])}), discards {pct(cal['discarded_at_threshold'])}\n"
        f"speed: student {sp['ratio_batched']:.1f}× faster than the teacher per structure "
        f"({sp['atoms_min']}–{sp['atoms_max']} atoms, {report['device']})"
        + (
            f"; a candidate's verdict costs 1/{sp['ratio_per_candidate']:.0f} of a teacher "
            "relaxation"
            if "ratio_per_candidate" in sp
            else ""
        ),
        highlight=False,
    )
    direct = report["student"]["kind"] in ("direct", "trunk")  # one forward pass, no relaxing
    out.print(
        f"student: {out_dir / 'student.model'}\nreport:  {out_dir / 'report.md'}\n"
        "use it in a campaign:\n  prefilter:\n    model: {name: student, path: "
        f"{out_dir / 'student.model'}, dtype: {dtype}}}\n"
        + ("    direct: true\n" if direct else "")
        + "    keep: auto\n"
        f"    distillation: {{report: {out_dir / 'report.json'}}}",
        highlight=False,
        soft_wrap=True,
    )


def print_sites(rows: list[tuple[str, str, str]]) -> None:
    """``hts sites list``: name, description (or why the file is invalid), file."""
    t = Table(title="sites")
    for col in ("name", "description", "file"):
        t.add_column(col)
    for row in rows:
        t.add_row(*row)
    out.print(t)


def print_check(r) -> None:
    """``hts sites check``: the resolved Parsl config, the driver job, and what is missing."""
    out.print(f"[bold]{r.site.name}[/]: {r.site.description}", highlight=False)
    if r.executors:
        t = Table(title="resolved Parsl config", show_lines=True)
        t.add_column("label")
        t.add_column("executor / provider / launcher")
        for label, text in r.executors:
            t.add_row(label, text)
        out.print(t)
        out.print(f"strategy {r.strategy}, every {r.strategy_period} s", highlight=False)
    if r.job is not None:
        out.print(
            f"driver job ({r.scheduler}, {r.job['mode']} mode): "
            + ", ".join(f"{k}={v}" for k, v in r.job_fields()),
            highlight=False,
        )
    if not r.ok:
        out.print("[bold yellow]missing:[/]", highlight=False)
        for m in r.missing:
            out.print(f"  - {m}", highlight=False)
        return
    out.print("[green]ok[/]: nothing missing", highlight=False)


def print_interrupted(store_path: Path) -> None:
    """Ctrl-C or SIGTERM: what is kept and how to go on."""
    from hts.store import read_ledger

    n = int(read_ledger(store_path).get("n_rows", 0))
    console.print(
        f"\ninterrupted: {n} candidates are committed in {store_path} and kept; run the same "
        "command again to resume from there",
        highlight=False,
    )


def print_verified(store: Path, damage: list) -> bool:
    """``hts verify``: each damaged part, or that the store is whole (True)."""
    for d in damage:
        out.print(f"[red]damaged[/] {d}", highlight=False)
    if not damage:
        out.print(
            f"[green]ok[/] {store}: every committed chunk present and readable", highlight=False
        )
    return not damage
