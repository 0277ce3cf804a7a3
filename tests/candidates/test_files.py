"""The file source: CIF, POSCAR, extxyz, ASE db; bad files become failed candidates."""

from __future__ import annotations

import pytest
from ase.build import bulk
from ase.db import connect
from ase.io import write

from hts.candidates import EmptySourceError, chunks, ensure_not_empty, open_source
from hts.spec import parse_campaign
from tests.conftest import lj_campaign


def _campaign(tmp_path, path, **kw):
    return parse_campaign(
        lj_campaign(tmp_path, candidates={"kind": "files", "path": path, **kw}),
        base_dir=str(tmp_path),
    )


def _all(c):
    return [x for ch in chunks(open_source(c), 3, min_distance=0.5) for x in ch.candidates]


def test_reads_every_format(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    write(d / "nacl.cif", bulk("NaCl", "rocksalt", a=5.64))
    write(d / "POSCAR", bulk("Si", "diamond", a=5.43), format="vasp")
    write(d / "two.extxyz", [bulk("Cu", a=3.6), bulk("Au", a=4.08)], format="extxyz")
    with connect(d / "x.db") as db:
        db.write(bulk("MgO", "rocksalt", a=4.21))
    (d / "notes.txt").write_text("ignored")
    cands = _all(_campaign(tmp_path, "in"))
    assert sorted(c.formula for c in cands) == ["Au", "ClNa", "Cu", "MgO", "Si"]
    assert all(not c.error for c in cands)
    assert {c.source for c in cands} >= {"file:in/two.extxyz@0", "file:in/two.extxyz@1"}


def test_glob_and_dedup(tmp_path):
    write(tmp_path / "a.cif", bulk("NaCl", "rocksalt", a=5.64))
    shifted = bulk("NaCl", "rocksalt", a=5.64)
    shifted.translate([1.0, 0.5, 0.2])
    shifted.wrap()
    write(tmp_path / "b.cif", shifted)  # the same crystal, another origin
    cands = _all(_campaign(tmp_path, "*.cif"))
    assert len(cands) == 1


def test_unreadable_and_overlapping_are_failed_with_reason(tmp_path):
    (tmp_path / "broken.cif").write_text("data_x\n_cell_length_a oops\nloop_\n_atom_site_label\n")
    bad = bulk("NaCl", "rocksalt", a=5.64)
    bad.positions[1] = bad.positions[0] + [0.1, 0, 0]
    write(tmp_path / "overlap.cif", bad)
    write(tmp_path / "good.cif", bulk("Cu", a=3.6))
    cands = {c.source: c for c in _all(_campaign(tmp_path, "."))}
    assert "unreadable cif file" in cands["file:broken.cif"].error
    assert "overlapping atoms" in cands["file:overlap.cif"].error
    assert "0.100 Å apart" in cands["file:overlap.cif"].error
    assert cands["file:good.cif"].error == ""


def test_empty_source_is_an_error_naming_the_field(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(EmptySourceError, match="candidates.path"):
        ensure_not_empty(_campaign(tmp_path, "nothing"))
    with pytest.raises(EmptySourceError, match="candidates.path"):
        ensure_not_empty(_campaign(tmp_path, "*.cif"))


def test_empty_substitution_is_an_error(tmp_path):
    data = lj_campaign(tmp_path)
    data["candidates"]["elements"] = {"A": ["Na"], "X": ["Na"]}
    with pytest.raises(EmptySourceError, match="no candidate"):
        ensure_not_empty(parse_campaign(data))


def test_too_many_atoms(tmp_path):
    write(tmp_path / "big.cif", bulk("Cu", a=3.6).repeat(5))
    c = _campaign(tmp_path, ".")
    cand = [x for ch in chunks(open_source(c), 3, max_atoms=64) for x in ch.candidates][0]
    assert "125 atoms exceeds limits.max_atoms = 64" in cand.error


_NACL_CIF = """data_NaCl
_cell_length_a 5.64
_cell_length_b 5.64
_cell_length_c 5.64
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'F m -3 m'
_symmetry_Int_Tables_number 225
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Na1 Na 0 0 0 1
Cl1 Cl 0.5 0.5 0.5 1
"""
_POSCAR = "X\n1.0\n{a}\n{b}\n{c}\nNa Cl\n{counts}\nDirect\n{first}\n0.5 0.5 0.5\n"


def _poscar(a="5.64 0 0", b="0 5.64 0", c="0 0 5.64", counts="1 1", first="0 0 0"):
    return _POSCAR.format(a=a, b=b, c=c, counts=counts, first=first)


# file name -> (contents, words the reason must contain)
_BAD = {
    "infinite.cif": (_NACL_CIF.replace("_cell_length_a 5.64", "_cell_length_a inf"), "non-finite"),
    "mixed.cif": (
        _NACL_CIF.replace("Na1 Na 0 0 0 1", "Na1 Na 0 0 0 0.5\nK1 K 0 0 0 0.5"),
        "partial occupancy",
    ),
    "vacancy.cif": (_NACL_CIF.replace("Na1 Na 0 0 0 1", "Na1 Na 0 0 0 0.9"), "partial occupancy"),
    "unknown.cif": (_NACL_CIF.replace("Na1 Na 0 0 0 1", "Na1 Xx 0 0 0 1"), "unknown element"),
    "truncated.cif": ("\n".join(_NACL_CIF.splitlines()[:12]), "no structure found"),
    "nan.vasp": (_poscar(first="nan 0 0"), "non-finite coordinate"),
    "flat.vasp": (_poscar(c="0 0 0.0001"), "volume per atom"),
    "counts.vasp": (_poscar(counts="1 3"), "atom counts do not match"),
}


def test_each_bad_file_fails_alone_with_a_reason_a_person_can_act_on(tmp_path):
    """The issue's battery: every bad input is failed before any model sees it; good ones unharmed."""
    d = tmp_path / "in"
    d.mkdir()
    for name, (text, _) in _BAD.items():
        (d / name).write_text(text)
    for k in range(3):
        write(d / f"good{k}.cif", bulk(["NaCl", "KCl", "LiF"][k], "rocksalt", a=5.0 + 0.3 * k))
    cands = {c.source.split("/")[-1]: c for c in _all(_campaign(tmp_path, "in"))}
    for name, (_, words) in _BAD.items():
        assert words in cands[name].error, (name, cands[name].error)
        assert cands[name].n_atoms == 0 or cands[name].error  # never a structure to relax
    assert all(not cands[f"good{k}.cif"].error for k in range(3))
    assert len({c.id for c in cands.values()}) == len(cands)  # one id each


def test_a_supercell_over_max_atoms_does_not_hide_its_primitive_cell(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    write(d / "a_big.cif", bulk("NaCl", "rocksalt", a=5.64).repeat((4, 4, 4)))  # sorts first
    write(d / "b_nacl.cif", bulk("NaCl", "rocksalt", a=5.64))
    c = _campaign(tmp_path, "in")
    cands = [x for ch in chunks(open_source(c), 3, max_atoms=64) for x in ch.candidates]
    assert [(x.source.split("/")[-1], bool(x.error)) for x in cands] == [
        ("a_big.cif", True),
        ("b_nacl.cif", False),
    ]
    assert "exceeds limits.max_atoms" in cands[0].error
