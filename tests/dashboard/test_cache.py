"""The dashboard's incremental cache equals a full read of the store after every kind of commit."""

from __future__ import annotations

import numpy as np
import pytest

from hts.dashboard.views import StoreViews
from hts.store import Row, StageUpdate, Store

STAGES = ["prefilter", "rescore"]


def _row(k: int, rng) -> Row:
    ok = rng.random() > 0.1
    e = float(rng.normal(-3, 0.3))
    return Row(
        id=f"{k:016x}",
        formula=f"Na{k % 3 + 1}Cl",
        chemsys="Cl-Na",
        prototype="rocksalt",
        source="test",
        chunk=k // 50,
        status="ok" if ok else "failed",
        reason="" if ok else f"relaxation diverged at step {k}",
        stage_reached="prefilter",
        numbers=np.array([11, 17]),
        positions=rng.normal(size=(2, 3)),
        cell=np.eye(3) * 4,
        stage={
            "prefilter": {
                "energy_per_atom": e if ok else np.nan,
                "e_above_hull": float(abs(rng.normal(0, 0.2))) if ok else np.nan,
                "formation_energy": e + 2 if ok else np.nan,
                "kept": ok and bool(rng.random() < 0.3),
                "time_s": float(rng.random()),
            }
        },
    )


def _rescore(rows, rng, fail_share=0.2) -> list[StageUpdate]:
    out = []
    for r in rows:
        ok = rng.random() > fail_share
        values = (
            {
                "energy_per_atom": float(rng.normal(-3, 0.3)),
                "e_above_hull": float(abs(rng.normal(0, 0.1))),
                "formation_energy": float(rng.normal(-1, 0.3)),
                "kept": bool(rng.random() < 0.5),
                "time_s": float(rng.random() * 5),
            }
            if ok
            else {"time_s": 1.0}
        )
        out.append(
            StageUpdate(
                row=int(r),
                values=values,
                status="ok" if ok else "failed",
                reason="" if ok else "teacher: did not converge",
                stage_reached="rescore",
            )
        )
    return out


def _same(cached: StoreViews, path) -> None:
    a, b = cached.snapshot(), StoreViews(path, top=cached.top).snapshot()
    for key in ("rows", "stages", "failures", "best", "finalized"):
        assert a[key] == b[key], key
    for st, t in b["time_per_stage"].items():  # sums kept incrementally: equal to rounding
        assert a["time_per_stage"][st]["n"] == t["n"]
        assert a["time_per_stage"][st]["total_s"] == pytest.approx(t["total_s"], rel=1e-9)


@pytest.mark.parametrize("top", [5, 50])
def test_incremental_refresh_equals_a_full_read(tmp_path, top):
    path = tmp_path / "s.zarr"
    store = Store.open(
        path, campaign_name="t", campaign_hash="h", campaign_yaml="name: t\n", stages=STAGES
    )
    rng = np.random.default_rng(top)
    views = StoreViews(path, top=top)
    views.snapshot()
    k = 0
    for chunk in range(12):
        store.append([_row(k + i, rng) for i in range(50)], chunk)
        k += 50
        _same(views, path)
        # the teacher rescores a few earlier rows, often the best ones
        rows = rng.choice(store.n_rows, size=15, replace=False)
        rows = np.setdiff1d(rows, sorted(store.stage_done.get("rescore", set())))
        store.update("rescore", _rescore(rows, rng))
        _same(views, path)
    assert views.cache.full_reads == 1  # appends and first results: only new rows were read
    # a stage result replaced (a retried task) is a rewrite: read again, still equal
    again = sorted(store.stage_done["rescore"])[:3]
    store.update("rescore", _rescore(again, rng, fail_share=1.0))
    _same(views, path)
    assert views.cache.full_reads == 2
    # the final pass rewrites a column in place: generation bumps, everything is read again
    store.write_stage_column("e_above_hull", "prefilter", 0, np.zeros(store.n_rows))
    store.set_finalized(True)
    _same(views, path)
    assert views.cache.full_reads == 3
