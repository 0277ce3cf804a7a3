"""What the dashboard shows, computed from a store: one JSON snapshot and a few SVG plots.

Every read goes through :func:`hts.store.open_dataset` (committed rows only,
read-only, no lock), so a store that a run is writing is never touched.
Snapshots are cached per ledger state: a page polling every few seconds
costs one small read of the root attributes until something is committed.
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np

from hts.report import summarize

__all__ = ["StoreViews", "parsl_monitoring"]

PLOTS = ("hull", "parity", "throughput")


def _ledger_key(path: Path) -> str:
    """Changes whenever the writer commits (the ledger lives in the root zarr.json)."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return ""
    ledger = meta.get("attributes", {}).get("ledger", {})
    return json.dumps(ledger, sort_keys=True)


class StoreViews:
    """The dashboard's data for one store, recomputed only when the ledger changes."""

    def __init__(self, path: str | Path, top: int = 50) -> None:
        self.path = Path(path)
        self.top = top
        self._lock = threading.Lock()
        self._key = None
        self._snapshot: dict = {}
        self._plots: dict[str, bytes] = {}
        self._rows: dict[str, int] = {}

    # -- the snapshot ----------------------------------------------------------

    def snapshot(self) -> dict:
        with self._lock:
            key = _ledger_key(self.path)
            if key != self._key or not self._snapshot:
                self._snapshot = self._compute()
                self._plots = {}
                self._key = key
            snap = dict(self._snapshot)
        snap["served_at"] = time.time()
        return snap

    def _compute(self) -> dict:
        from hts.store import open_dataset

        s = summarize(self.path, top=self.top)
        ds = open_dataset(
            self.path,
            variables=["id", "committed_at", "time_s", "status", "stage_model", "energy_per_atom"],
        )
        self._rows = {str(x): i for i, x in enumerate(ds.id.values.astype(object))}
        names = s["stage_names"]
        ledger = ds.attrs.get("ledger", {})
        committed = ds.committed_at.values if "committed_at" in ds else np.zeros(0)
        times = committed[np.isfinite(committed)]
        now = time.time()
        recent = float((times > now - 60).sum()) / 60.0 if len(times) else 0.0
        per_stage_time = {}
        for k, st in enumerate(names):
            t = ds.time_s.values[:, k]
            t = t[np.isfinite(t)]
            per_stage_time[st] = {
                "n": int(len(t)),
                "total_s": float(t.sum()),
                "mean_s": float(t.mean()) if len(t) else None,
            }
        campaign = {}
        try:
            import yaml

            campaign = yaml.safe_load(ds.attrs.get("campaign", "")) or {}
        except Exception:
            pass
        return {
            "campaign": s["campaign"],
            "description": campaign.get("description", ""),
            "store": str(self.path),
            "rows": s["rows"],
            "stages": s["stages"],
            "stage_names": names,
            "failures": s["failures"],
            "best": s["best"],
            "dft": s.get("dft"),
            "finalized": s["finalized"],
            "wall_s": s["wall_s"],
            "updated_at": float(ledger.get("updated_at", 0.0)),
            "rate_overall": s["rows"] / s["wall_s"] if s["wall_s"] else 0.0,
            "rate_last_minute": recent,
            "time_per_stage": per_stage_time,
            "parsl": parsl_monitoring(Path(f"{self.path}.parsl")),
        }

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

        from hts.store import open_dataset

        ds = open_dataset(
            self.path,
            variables=[
                "e_above_hull",
                "formation_energy",
                "kept",
                "stage_model",
                "committed_at",
                "formula",
            ],
        )
        names = list(ds.stage.values.astype(object))
        if name == "hull":
            fig = _hull_histograms(plt, ds, names)
        elif name == "parity":
            fig = _parities(plt, ds, names)
        else:
            fig = _throughput(plt, ds)
        buf = io.BytesIO()
        fig.savefig(buf, format="svg")
        plt.close(fig)
        return buf.getvalue()

    # -- structures ------------------------------------------------------------

    def structure(self, cid: str, fmt: str = "cif") -> bytes:
        """One candidate's stored structure as CIF or extxyz text."""
        import zarr
        from ase import Atoms
        from ase.io import write

        self.snapshot()
        if cid not in self._rows:
            raise KeyError(cid)
        i = self._rows[cid]  # a committed row: its atoms are committed too
        g = zarr.open_group(self.path, mode="r", use_consolidated=False)
        s, n = int(g["atom_start"][i]), int(g["n_atoms"][i])  # one slice, not the atom arrays
        atoms = Atoms(
            numbers=g["species"][s : s + n].astype(int),
            positions=g["positions"][s : s + n],
            cell=g["cell"][i],
            pbc=True,
        )
        if fmt == "cif":  # ase writes CIF as bytes, extxyz as text
            raw = io.BytesIO()
            write(raw, atoms, format="cif")
            return raw.getvalue()
        text = io.StringIO()
        write(text, atoms, format="extxyz")
        return text.getvalue().encode()


def _hull_histograms(plt, ds, names):
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.2), squeeze=False)
    eh = ds.e_above_hull.values
    kept = ds.kept.values
    for k, (ax, st) in enumerate(zip(axes[0], names, strict=True)):
        v = eh[:, k]
        m = np.isfinite(v)
        hi = max(float(np.nanpercentile(v[m], 98)) if m.any() else 0.5, 0.05)
        bins = np.linspace(0, hi, 30)
        ax.hist(np.clip(v[m], 0, hi), bins=bins, color="0.75", label="scored")
        ax.hist(np.clip(v[m & kept[:, k]], 0, hi), bins=bins, color="tab:green", label="kept")
        ax.set_title(f"{st} ({ds.stage_model.values[k]}): {int(m.sum())} scored")
        ax.set_xlabel("e_above_hull (eV/atom)")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("candidates")
    fig.tight_layout()
    return fig


def _parities(plt, ds, names):
    from hts.report import _plot_dft_parity

    panels = (["rescore"] if "rescore" in names else []) + (
        ["validate"] if "validate" in names else []
    )
    fig, axes = plt.subplots(
        1, max(1, len(panels)), figsize=(4.6 * max(1, len(panels)), 3.8), squeeze=False
    )
    eh = ds.e_above_hull.values
    for ax, panel in zip(axes[0], panels, strict=False):
        if panel == "rescore":
            k = names.index("rescore")
            m = np.isfinite(eh[:, 0]) & np.isfinite(eh[:, k])
            ax.scatter(eh[m, k], eh[m, 0], s=10, color="tab:blue")
            lim = float(np.nanmax(eh[m][:, [0, k]])) if m.any() else 1.0
            ax.plot([0, lim], [0, lim], "k--", lw=0.8)
            ax.set_xlabel(f"teacher e_above_hull ({ds.stage_model.values[k]})")
            ax.set_ylabel(f"student e_above_hull ({ds.stage_model.values[0]})")
            ax.set_title(f"student vs teacher: {int(m.sum())} candidates")
        else:
            _plot_dft_parity(ax, ds, names)
    if not panels:
        axes[0][0].text(0.5, 0.5, "one MLIP stage: no parity to show", ha="center", va="center")
        axes[0][0].set_axis_off()
    fig.tight_layout()
    return fig


def _throughput(plt, ds):
    fig, ax = plt.subplots(figsize=(6.5, 3.0))
    t = ds.committed_at.values if "committed_at" in ds else np.zeros(0)
    t = np.sort(t[np.isfinite(t)])
    if len(t):
        t0 = t[0]
        span = max(t[-1] - t0, 1.0)
        width = max(span / 40, 1.0)
        bins = np.arange(0, span + width, width)
        counts, edges = np.histogram(t - t0, bins=bins)
        ax.bar(edges[:-1] / 60, counts / width, width=width / 60, align="edge", color="tab:blue")
        ax2 = ax.twinx()
        ax2.plot((t - t0) / 60, np.arange(1, len(t) + 1), color="k", lw=1)
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
