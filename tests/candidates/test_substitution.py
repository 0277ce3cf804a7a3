"""The substitution generator: prototypes, filters, volume guess, lazy deterministic order."""

from __future__ import annotations

import itertools
import types

import numpy as np
import pytest
from ase.build import bulk

from hts.candidates import candidate_id, chunks, open_source
from hts.candidates.prototypes import PROTOTYPES, prototype_cell
from hts.candidates.substitution import Assignment, build_structure, charge_balanced
from hts.spec import parse_campaign
from tests.conftest import lj_campaign

EXPECTED = {  # prototype: (atoms in primitive cell, space group)
    "rocksalt": (2, 225),
    "zincblende": (2, 216),
    "wurtzite": (4, 186),
    "cscl": (2, 221),
    "fluorite": (3, 225),
    "perovskite": (5, 221),
    "spinel": (14, 227),
    "layered": (4, 166),
    "heusler": (4, 225),
    "rutile": (6, 136),
    "antifluorite": (3, 225),
    "nias": (4, 194),
    "cdi2": (3, 164),
    "corundum": (10, 167),
    "ilmenite": (10, 148),
    "k2nif4": (7, 139),
    "chalcopyrite": (8, 122),
}


@pytest.mark.parametrize("name", sorted(PROTOTYPES))
def test_prototype_cells(name):
    import spglib

    proto = prototype_cell(name)
    n, spg = EXPECTED[name]
    assert len(proto.roles) == n
    elements = dict(zip("ABX", ["Mg", "Al", "O"], strict=True))
    a = Assignment(name, tuple((r, elements[r]) for r in PROTOTYPES[name].roles))
    numbers, positions, cell = build_structure(a)
    frac = positions @ np.linalg.inv(cell)
    assert spglib.get_symmetry_dataset((cell, frac, numbers), symprec=1e-3).number == spg


def test_volume_guess_is_close_to_experiment():
    # rocksalt NaCl a = 5.64 Å, MgO 4.21 Å; perovskite SrTiO3 3.905 Å
    for name, els, a_exp in (
        ("rocksalt", {"A": "Na", "X": "Cl"}, 5.64),
        ("rocksalt", {"A": "Mg", "X": "O"}, 4.21),
        ("perovskite", {"A": "Sr", "B": "Ti", "X": "O"}, 3.905),
    ):
        a = Assignment(name, tuple(sorted(els.items())))
        _, _, cell = build_structure(a)
        n_conv = {"rocksalt": 4, "perovskite": 1}[name]
        v_guess = abs(np.linalg.det(cell)) * n_conv
        assert abs(v_guess ** (1 / 3) / a_exp - 1) < 0.1


def test_charge_balance():
    mult = prototype_cell("perovskite").multiplicity
    assert charge_balanced({"A": "Sr", "B": "Ti", "X": "O"}, mult)
    assert not charge_balanced({"A": "Sr", "B": "Ti", "X": "F"}, mult)
    assert charge_balanced({"A": "K", "B": "Mg", "X": "F"}, mult)
    # balances on paper, but only with the anion less electronegative than a cation
    layered = prototype_cell("layered").multiplicity
    assert not charge_balanced({"A": "Ge", "B": "Si", "X": "Br"}, layered)
    assert not charge_balanced({"A": "Sr", "B": "Ba", "X": "Cl"}, layered)
    assert charge_balanced({"A": "Li", "B": "Co", "X": "O"}, layered)
    # LaTiO3 needs Ti3+, in ICSD compounds but not among pymatgen's common states
    assert not charge_balanced({"A": "La", "B": "Ti", "X": "O"}, mult)
    assert charge_balanced({"A": "La", "B": "Ti", "X": "O"}, mult, "icsd")


def test_enumeration_is_lazy_and_deterministic(tmp_path):
    c = parse_campaign(lj_campaign(tmp_path))
    src = open_source(c)
    it = iter(src)
    assert isinstance(it, types.GeneratorType)
    first = [x.id for x in itertools.islice(src, 10)]
    again = [x.id for x in itertools.islice(open_source(c), 10)]
    assert first == again
    assert src.upper_bound() == 4 * 6 * 4


def test_large_space_streams_in_constant_memory(tmp_path):
    """10⁷ raw assignments: the generator yields the first quickly and holds none of the rest."""
    metals = [
        "Li",
        "Na",
        "K",
        "Rb",
        "Cs",
        "Be",
        "Mg",
        "Ca",
        "Sr",
        "Ba",
        "Sc",
        "Y",
        "Ti",
        "Zr",
        "Hf",
        "V",
    ]
    data = lj_campaign(tmp_path)
    data["candidates"] = {
        "kind": "substitution",
        "prototypes": ["spinel", "perovskite", "heusler", "layered"],
        "elements": {
            "A": metals * 1,
            "B": metals,
            "X": ["O", "S", "Se", "Te", "F", "Cl", "Br", "I", "N", "P"],
        },
        "charge_balance": False,
        "distinct_elements": False,
    }
    data["candidates"]["elements"]["A"] = metals
    c = parse_campaign(data)
    src = open_source(c)
    assert src.upper_bound() == 4 * 16 * 16 * 10
    got = list(itertools.islice(src.assignments(), 1000))
    assert len(got) == 1000 and len(set(got)) == 1000


def test_duplicates_screened_once(tmp_path):
    """Heusler A2BX with B and X swapped is the same crystal: one id, one candidate."""
    data = lj_campaign(tmp_path)
    data["candidates"] = {
        "kind": "substitution",
        "prototypes": ["heusler"],
        "elements": {"A": ["Cu"], "B": ["Mn", "Al"], "X": ["Al", "Mn"]},
        "charge_balance": False,
    }
    c = parse_campaign(data)
    cands = [x for ch in chunks(open_source(c), 10) for x in ch.candidates]
    assert len(list(open_source(c).assignments())) == 2
    assert len(cands) == 1


def test_id_is_invariant_to_isometries_and_order():
    atoms = bulk("NaCl", "rocksalt", a=5.6).repeat((1, 1, 1))
    ref = candidate_id(atoms.numbers, atoms.positions, atoms.cell[:])
    moved = atoms.copy()
    moved.translate([0.3, -1.1, 2.0])
    moved.wrap()
    moved.rotate(37, "z", rotate_cell=True)
    perm = moved[[1, 0]]
    assert candidate_id(perm.numbers, perm.positions, perm.cell[:]) == ref
    conv = bulk("NaCl", "rocksalt", a=5.6, cubic=True)  # another cell of the same crystal
    assert candidate_id(conv.numbers, conv.positions, conv.cell[:]) == ref
    other = bulk("NaCl", "rocksalt", a=5.7)
    assert candidate_id(other.numbers, other.positions, other.cell[:]) != ref
    zb = bulk("ZnO", "zincblende", a=4.6)
    assert candidate_id(zb.numbers, zb.positions, zb.cell[:]) != ref
    # wurtzite and zincblende share the first two shells and the volume; they must still differ
    d = 4.6 * 3**0.5 / 4
    a = d / (3 / 8) / (8 / 3) ** 0.5
    wz = bulk("ZnO", "wurtzite", a=a, c=a * (8 / 3) ** 0.5, u=3 / 8)
    assert abs(wz.get_volume() / len(wz) - zb.get_volume() / len(zb)) < 1e-6
    assert candidate_id(wz.numbers, wz.positions, wz.cell[:]) != candidate_id(
        zb.numbers, zb.positions, zb.cell[:]
    )


@pytest.mark.parametrize("name", sorted(PROTOTYPES))
def test_prototype_pairs_give_the_general_id_and_nearest_distance(tmp_path, name):
    """The generator reuses each prototype's scaled pairs: the ids and shortest distances are
    those of a full neighbour search on the built structure."""
    from hts.geometry import pairs_within

    roles = PROTOTYPES[name].roles
    elements = {r: ["Li", "Mg", "Cs", "Zr", "O", "Se", "I"] for r in roles}
    c = parse_campaign(
        lj_campaign(
            tmp_path,
            candidates={
                "kind": "substitution",
                "prototypes": [name],
                "elements": elements,
                "charge_balance": False,
            },
        )
    )
    for cand in itertools.islice(open_source(c), 40):
        assert cand.id == candidate_id(cand.numbers, cand.positions, cand.cell)
        _, _, d, _ = pairs_within(cand.positions, cand.cell, 8.0)
        assert abs(cand.nearest - d.min()) < 1e-9
