"""The writer's ranking of the best candidates equals a full ranking after every kind of commit."""

from __future__ import annotations

import numpy as np

from hts.store import StageUpdate, Store, StoreReader
from hts.store.best import KEPT, rank
from tests.dashboard.test_cache import STAGES, _rescore, _row


def _open(path):
    return Store.open(path, campaign_name="t", campaign_hash="h", campaign_yaml="", stages=STAGES)


def _full(path, top=KEPT):
    r = StoreReader(path)
    cols = r.read_range(["e_above_hull", "formation_energy"])
    return list(rank(cols["e_above_hull"], cols["formation_energy"], top)[0])


def test_ledger_ranking_follows_appends_updates_rewrites_and_reopening(tmp_path):
    path = tmp_path / "s.zarr"
    store = _open(path)
    rng = np.random.default_rng(1)
    for chunk in range(6):
        store.append([_row(50 * chunk + i, rng) for i in range(50)], chunk)
        assert list(StoreReader(path).best_rows(KEPT)) == _full(path)
        todo = np.setdiff1d(
            rng.choice(store.n_rows, 40, replace=False), list(store.stage_done.get("rescore", ()))
        )
        store.update("rescore", _rescore(todo, rng))
        assert list(StoreReader(path).best_rows(KEPT)) == _full(path)
    store.write_stage_column("e_above_hull", "prefilter", 0, rng.random(store.n_rows))
    store.set_finalized(True)
    assert list(StoreReader(path).best_rows(KEPT)) == _full(path)
    assert list(StoreReader(path).best_rows(7)) == _full(path, 7)
    _open(path)  # reopening ranks again from the arrays: the same list
    assert list(StoreReader(path).best_rows(KEPT)) == _full(path)


def test_a_best_row_that_gets_worse_lets_the_next_one_in(tmp_path):
    """Rows appended with a later stage's values, then given that stage's first result (worse):
    no rewrite, yet a row of the old top falls behind rows outside it — ranked again."""
    path = tmp_path / "s.zarr"
    store = _open(path)
    rng = np.random.default_rng(0)
    rows = [_row(i, rng) for i in range(KEPT + 20)]
    for i, r in enumerate(rows):
        r.status = "ok"
        r.stage["rescore"] = {"e_above_hull": 0.001 * i, "formation_energy": -1.0}
    store.append(rows, 0)
    assert list(StoreReader(path).best_rows(3)) == [0, 1, 2]
    worse = StageUpdate(0, {"e_above_hull": 0.5, "formation_energy": -1.0}, "ok", "", "rescore")
    store.update("rescore", [worse])
    assert list(StoreReader(path).best_rows(KEPT)) == _full(path)
    assert KEPT in StoreReader(path).best_rows(KEPT)  # the first row outside the old list
