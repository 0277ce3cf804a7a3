"""What the dashboard shows, computed from a store: one JSON snapshot and a few SVG plots.

Reads go through :class:`hts.dashboard.cache.RowCache` (committed rows only,
read-only, no lock), so a store that a run is writing is never touched, and a
refresh reads only what the last commits changed: a page polling every few
seconds costs one small read of the root attributes until something is
committed, and then O(new rows), not O(store).
"""

from __future__ import annotations

import io
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np

from hts.audit import funnel_of
from hts.candidates.record import chemist_formula
from hts.dashboard.cache import RowCache
from hts.report import (
    characterisation_entry,
    characterise_row,
    dft_parity,
    final_candidates,
    stage_table,
)

__all__ = ["StoreViews", "parsl_monitoring"]

PLOTS = ("hull", "parity", "throughput")
LAB_FILES = {"png": "image/png", "csv": "text/csv; charset=utf-8", "cif": "chemical/x-cif"}
LAB_TOP = 20  # candidates characterised for the lab table: each costs ~0.1 s, once


class StoreViews:
    """The dashboard's data for one store, brought up to date on each request."""

    def __init__(self, path: str | Path, top: int = 50) -> None:
        self.path = Path(path)
        self.top = top
        self.cache = RowCache(self.path, top=top)
        self._lock = threading.Lock()
        self._snapshot: dict = {}
        self._plots: dict[str, bytes] = {}
        self._dft_key: tuple | None = None
        self._dft: dict | None = None
        self._description: str | None = None
        self._lab_key: tuple | None = None
        self._lab: dict | None = None
        self._lab_rows: dict[str, int] = {}  # id -> row of the lab table's candidates
        self._characterised: dict[tuple, object] = {}  # (id, generation) -> Characterisation

    # -- the snapshot ----------------------------------------------------------

    def snapshot(self) -> dict:
        with self._lock:
            if self.cache.refresh() or not self._snapshot:
                self._snapshot = self._compute()
                self._plots = {}
            snap = dict(self._snapshot)
        snap["served_at"] = time.time()
        return snap

    def _compute(self) -> dict:
        r = self.cache.reader
        assert r is not None
        names, models = r.stages, r.stage_models()
        counters = r.counters()
        recent = self.cache.committed_since(time.time() - 60) / 60.0
        per_stage_time = {}
        for st, (n, total) in zip(names, self.cache.time_totals, strict=True):
            per_stage_time[st] = {
                "n": int(n),
                "total_s": float(total),
                "mean_s": float(total / n) if n else None,
            }
        wall_s = float(r.ledger.get("wall_s", 0.0))
        return {
            "campaign": r.attrs.get("campaign_name", "?"),
            "description": self._campaign_description(r.attrs.get("campaign", "")),
            "store": str(self.path),
            "rows": r.n_rows,
            "stages": stage_table(counters, models),
            "stage_names": names,
            # the audit, the economics and the warning, as `hts status` shows them: the ledger only
            "funnel": funnel_of(r),
            "failures": counters.failures(15),
            "best": self.cache.best(),
            "dft": self._dft_parity(r) if "validate" in names else None,
            "lab": self._lab_table(r),
            "finalized": r.finalized,
            "wall_s": wall_s,
            "updated_at": float(r.ledger.get("updated_at", 0.0)),
            "rate_overall": r.n_rows / wall_s if wall_s else 0.0,
            "rate_last_minute": recent,
            "time_per_stage": per_stage_time,
            "parsl": parsl_monitoring(Path(f"{self.path}.parsl")),
        }

    def _campaign_description(self, text: str) -> str:
        if self._description is None:
            try:
                import yaml

                self._description = str((yaml.safe_load(text) or {}).get("description", ""))
            except Exception:  # an unreadable description is not worth a failed page
                self._description = ""
        return self._description

    def _dft_parity(self, r) -> dict:
        """The DFT table, read again only when DFT rows were committed or rewritten."""
        key = (r.generation, int(self.cache.logged[r.stages.index("validate")]))
        if key != self._dft_key:
            self._dft, self._dft_key = dft_parity(r), key
        return self._dft

    # -- for the lab: XRD, space group, conventional cell --------------------------

    def _lab_table(self, r) -> dict | None:
        """Space group, conventional cell and strongest peaks of the validated (or final)
        candidates, the :data:`LAB_TOP` most stable; each computed once per store generation."""
        names = r.stages
        if not names:
            return None
        k = names.index("validate") if "validate" in names else len(names) - 1
        key = (r.generation, r.n_rows, int(self.cache.logged[k]))
        if key == self._lab_key:
            return self._lab
        rows, stage = final_candidates(r, self.cache.cols)
        chosen = rows[:LAB_TOP]
        c = r.read(["id", "formula", "e_above_hull"], chosen)
        entries, self._lab_rows = [], {}
        for j, row in enumerate(chosen):
            cid = str(c["id"][j])
            formula = chemist_formula(str(c["formula"][j]))
            try:
                ch = self._characterise(r, cid, int(row))
            except Exception as err:  # one odd structure does not take the page down
                entries.append({"id": cid, "formula": formula, "error": repr(err)})
                continue
            entries.append(characterisation_entry(ch, cid, formula, stage, c["e_above_hull"][j, k]))
            self._lab_rows[cid] = int(row)
        self._lab_key = key
        self._lab = {"stage": stage, "total": int(len(rows)), "candidates": entries}
        return self._lab

    def _characterise(self, r, cid: str, row: int):
        key = (cid, r.generation)
        if key not in self._characterised:
            if len(self._characterised) > 4 * LAB_TOP:  # forget other generations' results
                self._characterised.clear()
            self._characterised[key] = characterise_row(r, row)
        return self._characterised[key]

    def lab_file(self, cid: str, kind: str) -> bytes:
        """A lab-table candidate's pattern plot (png), peaks (csv) or conventional cell (cif)."""
        from hts.analysis.xrd import peaks_csv, plot_pattern

        if kind not in LAB_FILES:
            raise KeyError(kind)
        self.snapshot()
        with self._lock:
            r = self.cache.reader
            assert r is not None
            if cid not in self._lab_rows:
                raise KeyError(cid)
            ch = self._characterise(r, cid, self._lab_rows[cid])
            if kind == "cif":
                return ch.symmetry.cif().encode()
            if kind == "csv":
                return peaks_csv(ch.peaks).encode()
            entry = next(e for e in self._lab["candidates"] if e["id"] == cid)
            title = (
                f"{entry['formula']} ({cid}): {ch.symmetry.symbol} ({ch.symmetry.number}), Cu Kα"
            )
            buf = io.BytesIO()
            plot_pattern(ch.peaks, buf, title=title)  # matplotlib: one drawing at a time
            return buf.getvalue()

    # -- plots -----------------------------------------------------------------

    def plot(self, name: str) -> bytes:
        """An SVG of the current snapshot (cached until the next commit)."""
        if name not in PLOTS:
            raise KeyError(name)
        self.snapshot()
        with self._lock:
            if name not in self._plots:
                self._plots[name] = self._draw(name)
            return self._plots[name]

    def _draw(self, name: str) -> bytes:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        r = self.cache.reader
        assert r is not None
        names, models, cols = r.stages, r.stage_models(), self.cache.cols
        if name == "hull":
            fig = _hull_histograms(plt, cols, names, models)
        elif name == "parity":
            fig = _parities(plt, cols, names, models, self._snapshot.get("dft"))
        else:
            fig = _throughput(plt, cols["committed_at"])
        buf = io.BytesIO()
        fig.savefig(buf, format="svg")
        plt.close(fig)
        return buf.getvalue()

    # -- structures ------------------------------------------------------------

    def structure(self, cid: str, fmt: str = "cif") -> bytes:
        """One candidate's stored (relaxed) structure as CIF or extxyz text.

        The rows of every candidate the page lists (best, lab and DFT tables:
        the ones it offers to download or to view in 3-D) are at hand; any
        other id is looked up by a scan of the id column.
        """
        from ase import Atoms
        from ase.io import write

        self.snapshot()
        with self._lock:
            r = self.cache.reader
            assert r is not None
            row = self._listed_row(cid)
            if row is None:
                row = r.find_id(cid)
            if row is None:
                raise KeyError(cid)
            numbers, positions, cell = r.structure(row)  # a committed row: its atoms are too
        atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
        if fmt == "cif":  # ase writes CIF as bytes, extxyz as text
            raw = io.BytesIO()
            write(raw, atoms, format="cif")
            return raw.getvalue()
        text = io.StringIO()
        write(text, atoms, format="extxyz")
        return text.getvalue().encode()

    def _listed_row(self, cid: str) -> int | None:
        """The row of a candidate the snapshot lists, without reading the store; else None."""
        for row, b in zip(self.cache.best_rows, self._snapshot.get("best", []), strict=False):
            if str(b["id"]) == cid:
                return int(row)
        if cid in self._lab_rows:
            return self._lab_rows[cid]
        for c in (self._snapshot.get("dft") or {}).get("candidates", []):
            if c["id"] == cid:
                return int(c["row"])
        return None


def _hull_histograms(plt, cols, names, models):
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.2), squeeze=False)
    eh = cols["e_above_hull"]
    kept = cols["kept"]
    for k, (ax, st) in enumerate(zip(axes[0], names, strict=True)):
        v = eh[:, k]
        m = np.isfinite(v)
        hi = max(float(np.nanpercentile(v[m], 98)) if m.any() else 0.5, 0.05)
        bins = np.linspace(0, hi, 30)
        ax.hist(np.clip(v[m], 0, hi), bins=bins, color="0.75", label="scored")
        ax.hist(np.clip(v[m & kept[:, k]], 0, hi), bins=bins, color="tab:green", label="kept")
        ax.set_title(f"{st} ({models[k]}): {int(m.sum())} scored")
        ax.set_xlabel("e_above_hull (eV/atom)")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("candidates")
    fig.tight_layout()
    return fig


def _parities(plt, cols, names, models, dft):
    from hts.report import plot_dft_parity

    panels = (["rescore"] if "rescore" in names else []) + (
        ["validate"] if "validate" in names else []
    )
    fig, axes = plt.subplots(
        1, max(1, len(panels)), figsize=(4.6 * max(1, len(panels)), 3.8), squeeze=False
    )
    eh = cols["e_above_hull"]
    for ax, panel in zip(axes[0], panels, strict=False):
        if panel == "rescore":
            k = names.index("rescore")
            rows = np.flatnonzero(np.isfinite(eh[:, 0]) & np.isfinite(eh[:, k]))
            shown = _sample(rows)
            ax.scatter(eh[shown, k], eh[shown, 0], s=10, color="tab:blue")
            lim = float(np.nanmax(eh[rows][:, [0, k]])) if len(rows) else 1.0
            ax.plot([0, lim], [0, lim], "k--", lw=0.8)
            ax.set_xlabel(f"teacher e_above_hull ({models[k]})")
            ax.set_ylabel(f"student e_above_hull ({models[0]})")
            some = f" ({len(shown):,} shown)" if len(shown) < len(rows) else ""
            ax.set_title(f"student vs teacher: {len(rows):,} candidates{some}")
        else:
            plot_dft_parity(ax, cols["formation_energy"], _formulas(dft), names, models)
    if not panels:
        axes[0][0].text(0.5, 0.5, "one MLIP stage: no parity to show", ha="center", va="center")
        axes[0][0].set_axis_off()
    fig.tight_layout()
    return fig


_MAX_POINTS = 5000  # an SVG with 10⁶ markers weighs megabytes and says no more than 5,000


def _sample(rows: np.ndarray) -> np.ndarray:
    """At most :data:`_MAX_POINTS` of ``rows`` to draw, the same ones at every redraw."""
    if len(rows) <= _MAX_POINTS:
        return rows
    return np.sort(np.random.default_rng(0).choice(rows, _MAX_POINTS, replace=False))


def _formulas(dft: dict | None) -> dict[int, str]:
    """Row → formula of the DFT-validated candidates, for the parity plot's labels."""
    if not dft:
        return {}
    return {c["row"]: c["formula"] for c in dft["candidates"] if "row" in c}


def _throughput(plt, t):
    fig, ax = plt.subplots(figsize=(6.5, 3.0))
    t = np.sort(t[np.isfinite(t)])
    if len(t):
        t0 = t[0]
        span = max(t[-1] - t0, 1.0)
        width = max(span / 40, 1.0)
        bins = np.arange(0, span + width, width)
        counts, edges = np.histogram(t - t0, bins=bins)
        ax.bar(edges[:-1] / 60, counts / width, width=width / 60, align="edge", color="tab:blue")
        ax2 = ax.twinx()
        at = np.unique(np.linspace(0, len(t) - 1, min(len(t), _MAX_POINTS)).astype(int))
        ax2.plot((t[at] - t0) / 60, at + 1, color="k", lw=1)  # the curve, at most 5,000 points
        ax2.set_ylabel("candidates stored")
    else:
        ax.text(
            0.5,
            0.5,
            "no commit times yet (or a store from before hts kept them)",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_xlabel("minutes since the first result")
    ax.set_ylabel("candidates/s")
    ax.set_title("throughput")
    fig.tight_layout()
    return fig


def parsl_monitoring(run_dir: Path) -> dict | None:
    """Workers, blocks and task states from Parsl's monitoring database, if the run kept one.

    Opened read-only (``mode=ro``): the run's monitoring process owns it.
    """
    db = run_dir / "monitoring.db"
    if not db.is_file():
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
        try:
            run = con.execute(
                "SELECT run_id, time_began, time_completed, tasks_completed_count, tasks_failed_count "
                "FROM workflow ORDER BY time_began DESC LIMIT 1"
            ).fetchone()
            if run is None:
                return None
            rid = run[0]
            blocks = con.execute(
                "SELECT executor_label, block_id, job_id, status, MAX(timestamp) FROM block "
                "WHERE run_id = ? GROUP BY executor_label, block_id",
                (rid,),
            ).fetchall()
            nodes = con.execute(
                "SELECT hostname, block_id, worker_count, cpu_count, active, MAX(last_heartbeat) "
                "FROM node WHERE run_id = ? GROUP BY hostname, block_id",
                (rid,),
            ).fetchall()
            states = con.execute(
                "SELECT s.task_status_name, COUNT(*) FROM status s JOIN "
                "(SELECT task_id, MAX(timestamp) AS t FROM status WHERE run_id = ? GROUP BY task_id) last "
                "ON s.task_id = last.task_id AND s.timestamp = last.t WHERE s.run_id = ? "
                "GROUP BY s.task_status_name",
                (rid, rid),
            ).fetchall()
        finally:
            con.close()
    except sqlite3.Error as err:
        return {"error": f"{db}: {err}"}
    return {
        "run_id": rid,
        "began": str(run[1]),
        "completed": str(run[2] or ""),
        "tasks_completed": run[3],
        "tasks_failed": run[4],
        "task_states": dict(states),
        "blocks": [
            {"executor": b[0], "block": b[1], "job_id": b[2], "status": b[3], "at": str(b[4])}
            for b in blocks
        ],
        "workers": [
            {
                "host": n[0],
                "block": n[1],
                "workers": n[2],
                "cpus": n[3],
                "active": bool(n[4]),
                "heartbeat": str(n[5]),
            }
            for n in nodes
        ],
    }
