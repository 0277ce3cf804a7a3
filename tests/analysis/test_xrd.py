"""Powder XRD, space group and conventional cell against known crystals (and pymatgen)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase.build import bulk

from hts.analysis.xrd import (
    SYMPREC,
    broadened,
    characterise,
    peaks_csv,
    plot_pattern,
    powder_pattern,
    symmetry_of,
    to_structure,
    write_peaks_csv,
)

CU_KA = 1.54184  # Å, pymatgen's Cu Kα (Kα1/Kα2 weighted)


def _rocksalt(rattle: float = 1e-3):
    atoms = bulk("NaCl", "rocksalt", a=5.64)  # the two-atom primitive cell
    if rattle:
        atoms.rattle(rattle, seed=3)
    return atoms


def _bragg(a: float, hkl) -> float:
    d = a / math.sqrt(sum(i * i for i in hkl))
    return 2 * math.degrees(math.asin(CU_KA / (2 * d)))


def test_rocksalt_nacl_pattern_has_its_known_lines():
    c = characterise(_rocksalt())
    peaks = {p.hkl: p for p in c.peaks}
    strongest = c.strongest(2)
    # (200) is rock salt's strongest line at 31.7°, (220) next at 45.4-45.5° (Cu Kα, a = 5.64 Å)
    assert strongest[0].hkl == "(2 0 0)" and strongest[0].intensity == pytest.approx(100)
    assert strongest[0].two_theta == pytest.approx(31.7, abs=0.05)
    assert strongest[1].hkl == "(2 2 0)"
    assert 45.35 < strongest[1].two_theta < 45.55
    for hkl in ((2, 0, 0), (2, 2, 0), (1, 1, 1), (2, 2, 2)):
        p = peaks["(" + " ".join(map(str, hkl)) + ")"]
        assert p.two_theta == pytest.approx(_bragg(5.64, hkl), abs=0.02)
        assert p.d_spacing == pytest.approx(5.64 / math.sqrt(sum(i * i for i in hkl)), abs=2e-3)
    # fcc: h, k, l all even or all odd; (100), (110), (210) are extinct
    assert not {"(1 0 0)", "(1 1 0)", "(2 1 0)"} & set(peaks)
    # Na+ and Cl- nearly cancel in the odd reflections: (111) weak against (200)
    assert peaks["(1 1 1)"].intensity < 15
    assert peaks["(2 0 0)"].multiplicity == "6"
    assert all(0 <= p.two_theta <= 90 for p in c.peaks)


def test_the_pattern_is_pymatgens_on_the_conventional_cell():
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    c = characterise(_rocksalt())
    ref = XRDCalculator("CuKa").get_pattern(c.symmetry.conventional, two_theta_range=(0, 90))
    np.testing.assert_allclose([p.two_theta for p in c.peaks], ref.x, atol=1e-9)
    np.testing.assert_allclose([p.intensity for p in c.peaks], ref.y, atol=1e-9)
    # the labels are the conventional cell's: in the primitive cell rock salt's (200) is (1 1 0)
    prim = powder_pattern(_rocksalt())
    assert max(prim, key=lambda p: p.intensity).hkl == "(1 1 0)"
    assert [round(p.two_theta, 3) for p in prim] == [round(p.two_theta, 3) for p in c.peaks]


def test_space_group_of_rattled_rocksalt_and_its_conventional_cell():
    s = symmetry_of(_rocksalt(1e-3))
    assert (s.symbol, s.number, s.crystal_system) == ("Fm-3m", 225, "cubic")
    assert s.symprec == SYMPREC == 0.1
    conv = s.conventional
    assert len(conv) == 8 and conv.composition.reduced_formula == "NaCl"
    assert conv.lattice.abc == pytest.approx((5.64, 5.64, 5.64), abs=1e-2)
    assert conv.lattice.angles == pytest.approx((90, 90, 90), abs=1e-6)
    # the tolerance matters: at 1e-5 Å the same rattled structure has no symmetry left
    assert symmetry_of(_rocksalt(1e-3), symprec=1e-5).number == 1


def test_other_lattices():
    cscl = symmetry_of(bulk("CsCl", "cesiumchloride", a=4.12))
    assert (cscl.symbol, cscl.number, len(cscl.conventional)) == ("Pm-3m", 221, 2)
    zno = symmetry_of(bulk("ZnO", "wurtzite", a=3.25, c=5.2))
    assert (zno.symbol, zno.number, zno.crystal_system) == ("P6_3mc", 186, "hexagonal")
    # hexagonal lines carry four Miller-Bravais indices
    assert powder_pattern(zno.conventional)[0].hkl.count(" ") == 3


def test_cif_reads_back_as_the_conventional_cell(tmp_path):
    from pymatgen.core import Structure

    s = symmetry_of(_rocksalt())
    text = s.cif()
    assert "_symmetry_space_group_name_H-M   Fm-3m" in text
    assert "_symmetry_Int_Tables_number   225" in text
    back = Structure.from_str(text, fmt="cif")
    assert len(back) == 8 and back.lattice.a == pytest.approx(5.64, abs=1e-2)


def test_peaks_csv_and_plot(tmp_path):
    c = characterise(_rocksalt())
    path = write_peaks_csv(c.peaks, tmp_path / "p.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "two_theta,intensity,hkl,d_spacing,multiplicity"
    assert len(lines) == len(c.peaks) + 1
    assert "31.7305,100.000,(2 0 0),2.82000,6" in lines
    assert peaks_csv(c.peaks) == path.read_text()
    png = tmp_path / "p.png"
    plot_pattern(c.peaks, png, title="NaCl")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # the broadened curve peaks at the strongest line, scaled to 100
    x = np.linspace(0, 90, 9001)
    y = broadened(c.peaks, x)
    assert y.max() == pytest.approx(100) and x[np.argmax(y)] == pytest.approx(31.73, abs=0.02)


def test_structure_inputs_agree():
    atoms = _rocksalt(0)
    a = to_structure(atoms)
    b = to_structure(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell[:])
    assert a == b and to_structure(a) is a
