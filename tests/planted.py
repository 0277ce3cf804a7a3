"""A store with DFT results planted through the store API, for the views that read DFT.

Real GPAW on two-atom cells costs minutes (``tests/dft``); what the report,
the dashboard and the export do with DFT results needs only results in a real
store.  This writes them the way the campaign's validate phase does — the
campaign's own store (``open_store``), rows appended per chunk, the DFT
stage's results as ``Store.update`` entries with their relaxed structures —
with values chosen so that every case is known by hand: one candidate where
teacher and DFT agree, one the teacher keeps and DFT puts above the hull, one
the reverse, one never validated, one whose DFT failed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase.build import bulk

from hts.campaign import open_store
from hts.candidates.record import chemsys_of, formula_of
from hts.spec import parse_campaign
from hts.store import Row, StageUpdate
from tests.conftest import lj_campaign

THRESHOLD = 0.05  # the validate stage's keep rule: e_above_hull <= 0.05

# id: (structure, prefilter (E_form, E_hull, kept), rescore (...), DFT (...) or "failed" or None)
PLANTED = {
    "00000000000000a0": (
        ("NaCl", "rocksalt", 5.64),
        (-1.90, 0.00, True),
        (-2.00, 0.00, True),
        (-2.10, 0.00, True),
    ),
    "00000000000000a1": (  # the teacher keeps it, DFT puts it 0.12 eV/atom above the hull
        ("NaCl", "cesiumchloride", 3.35),
        (-1.85, 0.05, True),
        (-1.97, 0.03, True),
        (-1.98, 0.12, False),
    ),
    "00000000000000a2": (  # the teacher does not keep it, DFT finds it stable
        ("KCl", "rocksalt", 6.29),
        (-2.10, 0.02, True),
        (-2.15, 0.08, False),
        (-2.30, 0.01, True),
    ),
    "00000000000000a3": (("LiF", "rocksalt", 4.03), (-3.00, 0.30, False), None, None),
    "00000000000000a4": (
        ("KCl", "cesiumchloride", 3.75),
        (-2.00, 0.06, True),
        (-2.05, 0.04, True),
        "failed",
    ),
}
# MAE of formation energy against DFT over the three validated candidates
MAE = {
    "prefilter": (0.20 + 0.13 + 0.20) / 3,
    "rescore": (0.10 + 0.01 + 0.15) / 3,
}


def _stage(values, n_atoms: int) -> dict:
    eform, ehull, kept = values
    e = eform - 3.0  # any energy: the views compare formation energies
    return {
        "energy": e * n_atoms,
        "energy_per_atom": e,
        "formation_energy": eform,
        "e_above_hull": ehull,
        "kept": kept,
        "converged": True,
        "n_steps": 12,
        "time_s": 0.5,
    }


def planted_dft_store(tmp_path: Path) -> Path:
    """The store of a three-stage campaign (LJ, LJ, GPAW) with :data:`PLANTED` in it."""
    data = lj_campaign(tmp_path)
    data["stages"]["prefilter"]["keep"] = "e_above_hull <= 0.1"
    data["stages"]["rescore"] = {"model": {"name": "lennard-jones"}, "keep": "e_above_hull <= 0.05"}
    data["stages"]["validate"] = {"code": "gpaw", "top": 4, "keep": f"e_above_hull <= {THRESHOLD}"}
    c = parse_campaign(data)
    store = open_store(c)
    try:
        store.set_stage_model("prefilter", "lennard-jones", "")
        store.set_stage_model("rescore", "lennard-jones", "")
        store.set_stage_model("validate", "gpaw-pbe", "26.7.0")
        rows, atoms = [], {}
        for cid, (struct, pre, res, _dft) in PLANTED.items():
            formula, kind, a = struct
            at = bulk(formula, kind, a=a)
            atoms[cid] = at
            stage = {"prefilter": _stage(pre, len(at))}
            if res is not None:
                stage["rescore"] = _stage(res, len(at))
            rows.append(
                Row(
                    id=cid,
                    formula=formula_of(at.numbers),
                    chemsys=chemsys_of(at.numbers),
                    prototype=kind,
                    source="planted",
                    chunk=0,
                    status="ok",
                    reason="",
                    stage_reached="rescore" if res is not None else "prefilter",
                    numbers=at.numbers,
                    positions=at.positions,
                    cell=np.asarray(at.cell[:]),
                    stage=stage,
                )
            )
        store.append(rows, chunk_index=0)
        updates = []
        rng = np.random.default_rng(0)
        for row, (cid, (_s, _p, _r, dft)) in enumerate(PLANTED.items()):
            if dft is None:
                continue
            if dft == "failed":
                updates.append(
                    StageUpdate(
                        row=row,
                        values={"time_s": 30.0},
                        status="failed",
                        reason="validate: KohnShamConvergenceError: the SCF did not converge",
                        stage_reached="rescore",
                    )
                )
                continue
            at = atoms[cid]  # DFT's relaxed structure: numerically off its symmetric sites
            updates.append(
                StageUpdate(
                    row=row,
                    values=_stage(dft, len(at)),
                    status="ok",
                    reason="",
                    stage_reached="validate",
                    positions=at.positions + rng.normal(scale=1e-3, size=at.positions.shape),
                    cell=np.asarray(at.cell[:]),
                    dft_dir=str(tmp_path / "lj.zarr.dft" / "candidates" / cid / "attempt-1"),
                )
            )
        store.update("validate", updates)
        store.set_finalized(True)
    finally:
        store.close()
    return Path(c.store)
