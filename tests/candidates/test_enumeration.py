"""The enumeration source: icet's derivative superstructures, cut into independent pieces.

Counts are checked against Hart & Forcade, PRB 77, 224115 (2008), Table IV, and
against icet's own ``enumerate_structures`` structure for structure.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from hts.candidates import open_source
from hts.candidates.enumeration import EnumerationSpace
from hts.spec import CampaignError, parse_campaign
from hts.spec.sources import EnumerationSource
from tests.conftest import kill_run_after, write_campaign

# Hart & Forcade 2008, Table IV: derivative superstructures with every species present,
# species permutations merged, by cell size n (sites)
HART_FORCADE = {
    ("fcc", 2): {2: 2, 3: 3, 4: 12, 5: 14, 6: 50, 7: 52, 8: 229},
    ("bcc", 2): {2: 2, 3: 3, 4: 12, 5: 14, 6: 50, 7: 52, 8: 229},
    ("fcc", 3): {3: 3, 4: 13, 5: 23, 6: 130},
}


def _space(**kw) -> EnumerationSpace:
    return EnumerationSpace(EnumerationSource(kind="enumeration", **kw))


def _hart_forcade_counts(space: EnumerationSpace, k: int) -> dict[int, int]:
    """Classes of structures using all ``k`` species, under symmetry and species relabelling."""
    from icet.tools.structure_enumeration import _permute_labeling, _translate_labelings

    w = space.walk
    counts: dict[int, int] = {}
    for stratum, (n, snf_index, snf, hnf) in enumerate(w.strata):
        labs, where = w.labelings(snf_index)

        def canon(lab, snf=snf, hnf=hnf, where=where):
            images = [
                where[image]
                for t in hnf.transformations
                for image in _translate_labelings(
                    _permute_labeling(lab, snf, t, w.nsites), snf, w.nsites, include_self=True
                )
                if image in where
            ]
            return min(images)

        keys = set()
        for i, lab in enumerate(labs):
            if len(set(lab)) < k or not w.accepted(stratum, i):
                continue
            keys.add(min(canon(tuple(p[x] for x in lab)) for p in itertools.permutations(range(k))))
        counts[n] = counts.get(n, 0) + len(keys)
    return counts


@pytest.mark.parametrize(("lattice", "k"), list(HART_FORCADE))
def test_counts_match_hart_and_forcade(lattice, k):
    want = HART_FORCADE[(lattice, k)]
    species = ["Cu", "Au", "Pd"][:k]
    space = _space(lattice=lattice, species=species, max_atoms=max(want))
    got = _hart_forcade_counts(space, k)
    assert {n: got.get(n, 0) for n in want} == want


@pytest.mark.parametrize(
    ("lattice", "species", "max_atoms", "conc"),
    [
        ("fcc", ["Cu", "Au"], 8, {}),
        ("fcc", ["Cu", "Au", "Pd"], 6, {}),  # icet's own test: 1,081
        ("hcp", ["Ti", "Zr"], 10, {}),  # icet's own test: 984
        ("rocksalt", [["Mg", "Ca"], ["O"]], 12, {}),
        ("fcc", ["Cu", "Au"], 8, {"Au": (0.0, 0.5)}),
    ],
)
def test_structure_for_structure_as_icet(lattice, species, max_atoms, conc):
    """Independent pieces give exactly what icet's one pass gives, in the same order."""
    from ase import Atoms
    from icet.tools import enumerate_structures

    space = _space(lattice=lattice, species=species, max_atoms=max_atoms, concentrations=conc)
    mine = list(space)
    w = space.walk
    prim = Atoms(numbers=w.atoms.numbers, scaled_positions=w.parent.frac, cell=w.parent.cell)
    prim.pbc = True
    sites = space.spec.species
    ref = list(
        enumerate_structures(
            prim,
            range(1, max_atoms // w.nsites + 1),
            sites,
            concentration_restrictions=conc or None,
        )
    )
    assert len(mine) == len(ref)
    for c, r in zip(mine, ref, strict=True):
        scale = np.linalg.norm(c.cell) / np.linalg.norm(r.cell[:])
        assert c.numbers.tolist() == r.numbers.tolist()
        assert np.allclose(r.cell[:] * scale, c.cell, atol=1e-8)
        assert np.allclose(r.positions * scale, c.positions, atol=1e-8)
    # every structure once, by id; the units cover the walk exactly
    assert len({c.id for c in mine}) == len(mine)
    by_units = [c.id for u in space.units(16) for c in space.unit_candidates(u)]
    assert by_units == [c.id for c in mine]


def test_ids_are_distinct_where_the_fingerprint_is_not():
    """Homometric orderings share every pair distance; their ids still differ."""
    from hts.candidates.record import candidate_id

    mine = list(_space(lattice="fcc", species=["Cu", "Au"], max_atoms=8, min_atoms=8))
    prints = {candidate_id(c.numbers, c.positions, c.cell) for c in mine}
    assert len(prints) < len(mine)  # the structural fingerprint collides here
    assert len({c.id for c in mine}) == len(mine)


def test_vegard_lattice_parameter():
    """One-sublattice parents: the lattice parameter is the mean of the pure elements'."""
    from hts.candidates.substitution import _radius

    space = _space(lattice="fcc", species=["Cu", "Au"], max_atoms=4)
    by = {c.source.split(":")[-1]: c for c in space}
    a = {el: 2 * np.sqrt(2) * _radius(el) for el in ("Cu", "Au")}
    for deco, c in by.items():
        x = deco.count("Au") / (deco.count("Au") + deco.count("Cu"))
        want = (1 - x) * a["Cu"] + x * a["Au"]
        vol = abs(np.linalg.det(c.cell)) / c.n_atoms
        assert vol == pytest.approx(want**3 / 4, rel=1e-9)
        assert c.nearest == pytest.approx(want / np.sqrt(2))


def test_sampling_interface_is_uniform_over_orderings():
    space = _space(lattice="bcc", species=["Fe", "Cr", "V"], max_atoms=6)
    every = list(space.assignments())
    raw = space.strata()
    accepted = [
        (k, i) for k, n in enumerate(raw) for i in range(n) if space.assignment_at(k, i) is not None
    ]
    assert [(o.stratum, o.index) for o in every] == accepted
    assert len(space.system_assignments({"Fe", "Cr"})) == sum(
        1 for o in every if set(space.candidate(o).chemsys.split("-")) == {"Cr", "Fe"}
    )


def _campaign(tmp_path, **cand) -> dict:
    return {
        "name": "enum-test",
        "candidates": {"kind": "enumeration", **cand},
        "stages": {
            "prefilter": {
                "model": {"name": "lennard-jones"},
                "relax": {"max_steps": 5},
                "keep": "e_above_hull <= 0.05",
            }
        },
        "store": str(tmp_path / "enum.zarr"),
        "chunk_size": 8,
    }


@pytest.mark.parametrize(
    ("cand", "message"),
    [
        ({"lattice": "fcx", "species": ["Cu"], "max_atoms": 4}, "unknown lattice 'fcx'"),
        ({"lattice": "fcc", "species": ["Cu", "Qq"], "max_atoms": 4}, "'Qq' is not a chemical"),
        ({"lattice": "fcc", "species": ["Cu", "Cu"], "max_atoms": 4}, "repeated species"),
        (
            {"lattice": "rocksalt", "species": [["Mg"], ["O"], ["S"]], "max_atoms": 4},
            "rocksalt has 2 sites per primitive cell, species lists 3",
        ),
        ({"lattice": "fcc", "species": ["Cu"], "max_atoms": 65}, "less than or equal to 64"),
        (
            {"lattice": "perovskite", "species": [["Sr"], ["Ti"], ["O"]], "max_atoms": 4},
            "perovskite has 5 sites",
        ),
        (
            {"lattice": "perovskite", "species": ["Sr", "Ti", "O"], "max_atoms": 4},
            "max_atoms = 4 is below the 5 sites",
        ),
        (
            {"lattice": "fcc", "species": ["Cu", "Au"], "max_atoms": 4, "min_atoms": 6},
            "min_atoms = 6 exceeds max_atoms = 4",
        ),
        (
            {"lattice": "fcc", "species": ["Cu"], "max_atoms": 4, "concentrations": {"Au": [0, 1]}},
            "concentrations.Au: Au is not among the species",
        ),
        (
            {
                "lattice": "fcc",
                "species": ["Cu", "Au"],
                "max_atoms": 4,
                "concentrations": {"Au": [0.6, 0.2]},
            },
            "need 0 <= low <= high <= 1",
        ),
    ],
)
def test_bad_fields_are_named(tmp_path, cand, message):
    with pytest.raises(CampaignError) as err:
        parse_campaign(_campaign(tmp_path, **cand))
    assert "candidates" in str(err.value) and message in str(err.value)


def test_cells_larger_than_the_limit_are_refused(tmp_path):
    data = _campaign(tmp_path, lattice="fcc", species=["Cu", "Au"], max_atoms=12)
    data["limits"] = {"max_atoms": 8}
    with pytest.raises(
        CampaignError, match="candidates.max_atoms = 12 exceeds limits.max_atoms = 8"
    ):
        parse_campaign(data)


def test_cif_parent(tmp_path):
    """A parent read from a CIF: its primitive cell, its sites in the file's order."""
    from ase.build import bulk
    from ase.io import write

    write(tmp_path / "parent.cif", bulk("NaCl", "rocksalt", a=5.6), format="cif")
    data = _campaign(tmp_path, lattice="parent.cif", species=[["Na", "K"], ["Cl"]], max_atoms=6)
    c = parse_campaign(data, base_dir=str(tmp_path))
    space = open_source(c)
    assert space.parent.n_sites == 2
    got = list(space)
    assert {x.formula for x in got} >= {"ClNa", "ClK", "Cl2KNa"}


def test_sigkill_resumes_by_unit_and_id(tmp_path):
    """Killed mid-run, the rerun stores every ordering exactly once, as a clean run does."""
    from typer.testing import CliRunner

    from hts.cli import app
    from hts.store import open_dataset

    data = _campaign(tmp_path, lattice="fcc", species=["Cu", "Ag", "Au"], max_atoms=6)
    path = write_campaign(tmp_path, data)
    store = Path(data["store"])
    kill_run_after(path, store, 40, cwd=tmp_path)
    partial = open_dataset(store).sizes["candidate"]
    assert 40 <= partial < 1081
    res = CliRunner().invoke(app, ["run", str(path), "-q"])
    assert res.exit_code == 0, res.output
    ids = open_dataset(store).id.values.tolist()
    assert len(ids) == len(set(ids)) == 1081
    want = {c.id for c in open_source(parse_campaign(data, base_dir=str(tmp_path)))}
    assert set(ids) == want


def test_species_the_model_does_not_know_stop_the_run(tmp_path):
    """Every ordering with Og would fail: the run stops first, naming the field to fix."""
    from hts.campaign import run_campaign
    from hts.campaign.references import RunError
    from hts.execution.engine import SerialEngine

    data = _campaign(tmp_path, lattice="fcc", species=["Cu", "Og"], max_atoms=2)
    data["stages"]["prefilter"]["model"] = {"name": "sevennet-0", "device": "cpu", "threads": 1}
    with pytest.raises(RunError, match="candidates.species: Og has no elemental reference"):
        run_campaign(parse_campaign(data, base_dir=str(tmp_path)), SerialEngine())


def test_unreadable_cif_parent_is_a_campaign_error(tmp_path):
    from hts.campaign import preflight

    (tmp_path / "broken.cif").write_text("data_x\n_cell_length_a 3.0\n")
    for name in ("missing.cif", "broken.cif"):
        data = _campaign(tmp_path, lattice=name, species=[["Cu", "Au"]], max_atoms=4)
        with pytest.raises(CampaignError, match=f"candidates.lattice: cannot read .*{name}"):
            preflight(parse_campaign(data, base_dir=str(tmp_path)))
