"""candidates: {kind: structures}: objects in memory become the same candidates files would."""

from __future__ import annotations

import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import write
from pymatgen.core import DummySpecies, Lattice, Structure

from hts.candidates import chunks, open_source
from hts.candidates.files import FileReader
from hts.candidates.given import GivenStructures, digest, given_structures
from hts.spec import CampaignError, parse_campaign


def _ids(objs) -> list[str]:
    return [c.id for c in GivenStructures(given_structures(objs))]


def test_same_crystal_same_id_as_from_a_file(tmp_path):
    atoms = bulk("NaCl", "rocksalt", a=5.64)
    write(tmp_path / "nacl.cif", atoms)
    (from_file,) = list(FileReader(tmp_path / "nacl.cif", ["cif"]))
    from pymatgen.io.ase import AseAtomsAdaptor

    structure = AseAtomsAdaptor.get_structure(atoms)
    assert _ids([atoms, structure, structure.as_dict()]) == [from_file.id] * 3


def test_sources_are_labels_or_positions():
    s = Structure(Lattice.cubic(4.2), ["Cs", "Cl"], [[0, 0, 0], [0.5] * 3])
    labelled = s.copy()
    labelled.properties["label"] = "mp-22865"
    a = bulk("Cu")
    a.info["label"] = "fcc Cu"
    sources = [c.source for c in GivenStructures(given_structures([s, labelled, a, bulk("Al")]))]
    assert sources == ["structures[0]", "mp-22865", "fcc Cu", "structures[3]"]
    by_key = GivenStructures(given_structures({"first": s, 7: a}))
    assert [c.source for c in by_key] == ["first", "7"]


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (Atoms("NaCl", positions=[[0, 0, 0], [2.8, 0, 0]]), "not a periodic crystal"),
        (
            Structure(Lattice.cubic(4), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5] * 3]),
            "partial occupancy",
        ),
        (Structure(Lattice.cubic(4), [DummySpecies("X"), "Cl"], [[0, 0, 0], [0.5] * 3]), "dummy"),
        (Structure(Lattice.cubic(0.3), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]), "volume per atom"),
    ],
)
def test_a_structure_no_model_should_see_is_a_failed_candidate(obj, reason):
    good = bulk("Cu")
    (bad, ok) = list(chunks(GivenStructures(given_structures([obj, good])), 10))[0].candidates
    assert reason in bad.error and bad.source == "structures[0]"
    assert not ok.error and ok.formula == "Cu"  # one bad candidate never harms another


def test_wrong_types_are_named():
    from pymatgen.core import Molecule

    for items, where in [
        ([bulk("Cu"), Molecule(["H", "H"], [[0, 0, 0], [0, 0, 0.74]])], "item 1: .* got Molecule"),
        ("Cu.cif", "must be a list"),
        ({"a": 3}, "item 'a': .* got int"),
    ]:
        with pytest.raises(ValueError, match=where):
            given_structures(items)
    data = {
        "name": "x",
        "candidates": {"kind": "structures", "structures": [{"@class": "Structure", "x": 1}]},
        "stages": {
            "prefilter": {"model": {"name": "lennard-jones"}, "keep": "e_above_hull <= 0.1"}
        },
        "store": "x.zarr",
    }
    with pytest.raises(CampaignError, match=r"candidates\.structures: item 0: not a valid"):
        parse_campaign(data)


def test_digest_follows_geometry_and_labels():
    a = given_structures([bulk("Cu"), bulk("Al")])
    assert digest(a) == digest(given_structures([bulk("Cu"), bulk("Al")]))
    assert digest(a) != digest(given_structures([bulk("Cu", a=3.7), bulk("Al")]))
    assert digest(a) != digest(given_structures({"x": bulk("Cu"), "y": bulk("Al")}))


def test_open_source_reads_the_campaign_twice_alike(tmp_path):
    """A resumed run reads the source again: fresh candidates, the same ids, nothing mutated."""
    data = {
        "name": "x",
        "candidates": {"kind": "structures", "structures": (bulk(el) for el in ["Cu", "Al"])},
        "stages": {
            "prefilter": {"model": {"name": "lennard-jones"}, "keep": "e_above_hull <= 0.1"}
        },
        "store": str(tmp_path / "x.zarr"),
    }
    c = parse_campaign(data)  # the generator is read once, here
    first = [(x.id, x.source) for ch in chunks(open_source(c), 1) for x in ch.candidates]
    second = [(x.id, x.source) for ch in chunks(open_source(c), 1) for x in ch.candidates]
    assert first == second and len(first) == 2
