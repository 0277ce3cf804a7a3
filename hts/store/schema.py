"""The Zarr store's layout, in one place.

Dimensions
    candidate   one row per unique candidate, in the order results arrived
    stage       the campaign's stages in funnel order (``prefilter``, then ``rescore`` and
                ``validate`` when present)
    atom        all atoms of all candidates, concatenated (ragged layout, below)
    update      the update log: (row, stage) of each result a later stage committed
    vector, xyz 3 × 3 for cells and 3 for positions

Ragged structures follow the CF "contiguous ragged array" convention: the atoms
of candidate ``i`` are rows ``atom_start[i] : atom_start[i] + n_atoms[i]`` of
``species`` and ``positions``.  With xarray::

    ds = xr.open_zarr("run.zarr")
    i = 0
    s, n = int(ds.atom_start[i]), int(ds.n_atoms[i])
    species = ds.species[s:s + n].values          # atomic numbers
    positions = ds.positions[s:s + n].values      # Cartesian, Å
    cell = ds.cell[i].values                      # rows are lattice vectors, Å

Root attributes: ``hts_schema``, ``campaign_name``, ``campaign_hash``,
``campaign`` (the validated campaign as YAML), ``references`` (elemental
reference energies per stage model), and ``ledger`` (committed row counts, the
finished chunk indices as ranges, the committed length of the update log, whether
the final hull pass ran, a ``generation`` bumped whenever committed rows were
rewritten in place, and running ``counters``: per-stage counts and the failure
histogram, see :mod:`hts.store.counters`).  :mod:`hts.store.reader` is the one
place that reads them.
"""

from __future__ import annotations

import numpy as np

SCHEMA_VERSION = 1

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_NOT_RUN = ""

# name -> (dimensions after "candidate", dtype, fill value, description)
CANDIDATE_VARS: dict[str, tuple[tuple[str, ...], object, object, str]] = {
    "id": ((), str, "", "stable id: hash of an isometry-invariant fingerprint"),
    "formula": ((), str, "", "reduced formula, elements alphabetical"),
    "chemsys": ((), str, "", "chemical system, e.g. Cl-Na"),
    "prototype": ((), str, "", "substitution prototype ('' for file inputs)"),
    "source": ((), str, "", "where the candidate came from"),
    "chunk": ((), np.int64, -1, "index of the chunk (task) it belonged to"),
    "n_atoms": ((), np.int32, 0, "atoms in the stored structure"),
    "atom_start": ((), np.int64, 0, "first row of this candidate in the atom dimension"),
    "status": ((), str, "", "ok | failed"),
    "reason": ((), str, "", "why it failed ('' when ok)"),
    "stage_reached": ((), str, "", "last stage that produced a result"),
    "committed_at": ((), np.float64, np.nan, "when the row was committed (Unix time, s)"),
    "dft_dir": ((), str, "", "job directory of the DFT validation (atomate2 documents inside)"),
    "audit": (
        (),
        bool,
        False,
        "in the audit: a prefilter reject the teacher rescored anyway, drawn by the seed and the "
        "id (stages.prefilter.audit); not a survivor",
    ),
    "audit_missed": (
        (),
        bool,
        False,
        "an audited reject the teacher's keep rule keeps: a teacher-stable candidate the "
        "prefilter missed",
    ),
    "cell": (("vector", "xyz"), np.float64, np.nan, "relaxed cell, rows are lattice vectors (Å)"),
    "energy": (("stage",), np.float64, np.nan, "total energy (eV)"),
    "energy_per_atom": (("stage",), np.float64, np.nan, "energy per atom (eV/atom)"),
    "formation_energy": (
        ("stage",),
        np.float64,
        np.nan,
        "energy per atom relative to the elemental references (eV/atom)",
    ),
    "e_above_hull": (("stage",), np.float64, np.nan, "energy above hull (eV/atom), final values"),
    "kept": (("stage",), bool, False, "passed the stage's keep rule"),
    "converged": (
        ("stage",),
        bool,
        False,
        "relaxation reached fmax (and relax.pressure_tol, where set)",
    ),
    "n_steps": (("stage",), np.int32, 0, "relaxation steps"),
    "pressure": (
        ("stage",),
        np.float64,
        np.nan,
        "final pressure of the relaxed structure (GPa, -trace(stress)/3, positive under "
        "compression; NaN where unknown: not relaxed, failed, or a store from before it)",
    ),
    "time_s": (("stage",), np.float64, np.nan, "worker seconds spent on this candidate"),
    "stage_status": (
        ("stage",),
        str,
        "",
        "'' (stage not run on this candidate) | ok | failed: which stage a failure belongs to",
    ),
}

ATOM_VARS: dict[str, tuple[tuple[str, ...], object, object, str]] = {
    "species": ((), np.int16, 0, "atomic number"),
    "positions": (("xyz",), np.float64, np.nan, "Cartesian position (Å)"),
}

# The update log: one entry per result a later stage committed for an existing row, in commit
# order, so readers learn what changed since they last looked in O(changes).
UPDATE_VARS: dict[str, tuple[tuple[str, ...], object, object, str]] = {
    "update_row": ((), np.int64, -1, "row a later stage committed a result for"),
    "update_stage": ((), np.int8, -1, "index of that stage in the stage coordinate"),
}

FIXED_SIZES = {"vector": 3, "xyz": 3}

# The variables every store has held since the first schema: one missing is damage, whatever
# the store's age.  Variables added since are recorded in the root attribute ``variables`` by
# the stores that have them (created, or given them on reopening), so their loss is found too.
FIRST_VARS = frozenset(
    [
        "id",
        "formula",
        "chemsys",
        "prototype",
        "source",
        "chunk",
        "n_atoms",
        "atom_start",
        "status",
        "reason",
        "stage_reached",
        "cell",
        "energy",
        "energy_per_atom",
        "e_above_hull",
        "kept",
        "converged",
        "n_steps",
        "time_s",
        "species",
        "positions",
    ]
)


def schema_variables() -> list[str]:
    """Every per-candidate, per-atom and update-log variable of the current schema."""
    return [*CANDIDATE_VARS, *ATOM_VARS, *UPDATE_VARS]
