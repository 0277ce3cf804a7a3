"""What an experimentalist checks a synthesis against: powder XRD, space group, conventional cell.

A screening result is a prediction; a material is made when someone puts a
powder in a diffractometer and the pattern matches.  For each finished
candidate this module gives

* its **space group** (Hermann–Mauguin symbol and number) found by spglib
  through pymatgen's :class:`~pymatgen.symmetry.analyzer.SpacegroupAnalyzer`
  at a stated tolerance (:data:`SYMPREC`),
* its **conventional cell** in the International Tables' standard setting, as
  a CIF a refinement program reads, and
* its simulated **powder pattern** (pymatgen's
  :class:`~pymatgen.analysis.diffraction.xrd.XRDCalculator`, Cu Kα): the peaks
  as a table (2θ, relative intensity, Miller indices, d-spacing) and a plot.

No import of the execution engine or the store: callers hand in a structure
(ASE ``Atoms``, a pymatgen ``Structure``, or numbers, positions and cell).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "ANGLE_TOLERANCE",
    "FWHM",
    "SYMPREC",
    "TWO_THETA_RANGE",
    "WAVELENGTH",
    "Characterisation",
    "Peak",
    "Symmetry",
    "characterise",
    "peaks_csv",
    "plot_pattern",
    "powder_pattern",
    "symmetry_of",
    "to_structure",
    "write_peaks_csv",
]

SYMPREC = 0.1
"""Distance tolerance (Å) for finding symmetry.

Relaxed structures are not exactly symmetric: a relaxation stops at a force
threshold (0.05 eV/Å by default), so atoms sit up to ~10⁻² Å off their
symmetric positions and a cell is strained by ~0.1 %.  At pymatgen's default
of 0.01 Å such a structure is often reported in a low subgroup (down to P1);
0.1 Å — the Materials Project's choice — recovers the symmetry the relaxation
meant.  The price: a real distortion smaller than ~0.1 Å (a small
ferroelectric off-centring) is idealised away, in the space group and in the
pattern computed from the symmetrised cell.  Pass a smaller ``symprec`` to
see it.
"""

ANGLE_TOLERANCE = 5.0
"""Angle tolerance (degrees) for lattice symmetry: spglib's and pymatgen's default."""

WAVELENGTH = "CuKa"
"""Cu Kα, the laboratory diffractometer's source: λ = 1.54184 Å (pymatgen's Kα1/Kα2 weighted mean)."""

TWO_THETA_RANGE = (0.0, 90.0)
"""2θ window (degrees): pymatgen's default, and the range of most laboratory scans."""

FWHM = 0.1
"""Peak width (degrees 2θ, full width at half maximum) of the broadened curve in the plot:
a typical laboratory Bragg–Brentano instrument on a well-crystallised powder."""


@dataclass(frozen=True)
class Symmetry:
    """A structure's space group and its conventional cell.

    ``conventional`` is a pymatgen ``Structure`` in the standard setting of the
    International Tables (spglib's standardisation), symmetrised at
    ``symprec``: its axes, the symbol and the Miller indices of the pattern
    are then those of ICSD entries and powder-diffraction cards.
    """

    symbol: str
    number: int
    crystal_system: str
    symprec: float
    conventional: object  # pymatgen.core.Structure

    def cif(self) -> str:
        """The conventional cell as CIF text, with the space group's symmetry operations.

        Written with the symmetry found (asymmetric unit plus operations,
        ``_symmetry_space_group_name_H-M``), as refinement programs and
        databases expect; any CIF reader expands it to the full cell.
        """
        from pymatgen.io.cif import CifWriter

        return str(CifWriter(self.conventional, symprec=self.symprec))


@dataclass(frozen=True)
class Peak:
    """One line of a powder pattern.

    ``intensity`` is relative (the strongest peak is 100); ``hkl`` lists the
    reflection families that fall on this 2θ, e.g. ``(2 0 0)``, in the
    conventional cell (four indices for hexagonal lattices); ``multiplicity``
    the number of equivalent reflections of each.
    """

    two_theta: float
    intensity: float
    hkl: str
    d_spacing: float
    multiplicity: str


@dataclass(frozen=True)
class Characterisation:
    """Everything this module says about one structure."""

    symmetry: Symmetry
    peaks: list[Peak]
    wavelength: str = WAVELENGTH

    def strongest(self, n: int = 3) -> list[Peak]:
        """The ``n`` most intense peaks, strongest first."""
        return sorted(self.peaks, key=lambda p: -p.intensity)[:n]


def to_structure(structure=None, *, numbers=None, positions=None, cell=None):
    """A pymatgen ``Structure`` from ASE ``Atoms``, a ``Structure``, or numbers, positions (Å) and cell."""
    from pymatgen.core import Lattice, Structure

    if structure is not None:
        if isinstance(structure, Structure):
            return structure
        numbers = structure.get_atomic_numbers()
        positions = structure.get_positions()
        cell = np.asarray(structure.cell[:])
    return Structure(
        Lattice(np.asarray(cell, dtype=float)),
        [int(z) for z in numbers],
        np.asarray(positions, dtype=float),
        coords_are_cartesian=True,
    )


def symmetry_of(
    structure, symprec: float = SYMPREC, angle_tolerance: float = ANGLE_TOLERANCE
) -> Symmetry:
    """The space group of ``structure`` and its conventional standard cell.

    The cell is pymatgen's ``get_refined_structure`` (spglib's standardised
    conventional cell, International Tables setting), not
    ``get_conventional_standard_structure``, whose Setyawan–Curtarolo
    ordering of the axes (a < b < c) can differ from the setting the symbol
    and the databases use.  See :data:`SYMPREC` for the tolerance's choice.
    """
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    sga = SpacegroupAnalyzer(
        to_structure(structure), symprec=symprec, angle_tolerance=angle_tolerance
    )
    return Symmetry(
        symbol=sga.get_space_group_symbol(),
        number=int(sga.get_space_group_number()),
        crystal_system=sga.get_crystal_system(),
        symprec=symprec,
        conventional=sga.get_refined_structure(),
    )


def _hkl_text(families: list[dict]) -> tuple[str, str]:
    hkl = " ".join("(" + " ".join(str(int(i)) for i in f["hkl"]) + ")" for f in families)
    mult = " ".join(str(int(f["multiplicity"])) for f in families)
    return hkl, mult


def powder_pattern(
    structure,
    wavelength: str | float = WAVELENGTH,
    two_theta_range: tuple[float, float] = TWO_THETA_RANGE,
) -> list[Peak]:
    """The simulated powder X-ray pattern of ``structure``, peaks in order of 2θ.

    pymatgen's kinematic calculation: atomic scattering factors, the
    Lorentz–polarisation factor, reflections of equal d merged.  No thermal
    (Debye–Waller) damping, absorption or preferred orientation, so
    high-angle intensities come out somewhat strong against a measurement;
    positions are exact for the given cell.  Give the conventional cell
    (:func:`symmetry_of`) so the Miller indices are the ones in the
    literature: the pattern does not depend on the cell chosen, its labels do
    (rock salt's strongest line is (2 0 0) in the cubic cell, (1 1 0) in the
    primitive one).
    """
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    pattern = XRDCalculator(wavelength=wavelength).get_pattern(
        to_structure(structure), scaled=True, two_theta_range=two_theta_range
    )
    peaks = []
    for x, y, fams, d in zip(pattern.x, pattern.y, pattern.hkls, pattern.d_hkls, strict=True):
        hkl, mult = _hkl_text(fams)
        peaks.append(Peak(float(x), float(y), hkl, float(d), mult))
    return peaks


def characterise(
    structure,
    symprec: float = SYMPREC,
    wavelength: str | float = WAVELENGTH,
    two_theta_range: tuple[float, float] = TWO_THETA_RANGE,
) -> Characterisation:
    """Space group, conventional cell and the powder pattern computed on that cell.

    The pattern is the symmetrised cell's, so it agrees with the space group
    reported (no splitting from numerical noise below ``symprec``).
    """
    sym = symmetry_of(structure, symprec=symprec)
    peaks = powder_pattern(sym.conventional, wavelength, two_theta_range)
    return Characterisation(sym, peaks, str(wavelength))


PEAK_COLUMNS = ("two_theta", "intensity", "hkl", "d_spacing", "multiplicity")


def peaks_csv(peaks: list[Peak]) -> str:
    """The peaks as CSV text: 2θ (degrees), relative intensity (0–100), hkl, d-spacing (Å), multiplicity."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PEAK_COLUMNS)
    for p in peaks:
        w.writerow(
            [
                f"{p.two_theta:.4f}",
                f"{p.intensity:.3f}",
                p.hkl,
                f"{p.d_spacing:.5f}",
                p.multiplicity,
            ]
        )
    return buf.getvalue()


def write_peaks_csv(peaks: list[Peak], path: str | Path) -> Path:
    """:func:`peaks_csv` written to ``path``."""
    path = Path(path)
    path.write_text(peaks_csv(peaks))
    return path


def broadened(peaks: list[Peak], two_theta: np.ndarray, fwhm: float = FWHM) -> np.ndarray:
    """The sticks as a continuous curve: a Gaussian of ``fwhm`` per peak, scaled to a maximum of 100.

    Closer to what a detector records than sticks, and it shows which
    neighbouring lines an instrument of that resolution would not separate.
    """
    sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    y = np.zeros_like(two_theta, dtype=float)
    for p in peaks:
        y += p.intensity * np.exp(-0.5 * ((two_theta - p.two_theta) / sigma) ** 2)
    top = y.max() if len(y) else 0.0
    return 100.0 * y / top if top > 0 else y


def plot_pattern(
    peaks: list[Peak],
    out,
    title: str = "",
    two_theta_range: tuple[float, float] = TWO_THETA_RANGE,
    fwhm: float = FWHM,
    fmt: str = "png",
    label_above: float = 10.0,
    wavelength: str | float = WAVELENGTH,
) -> None:
    """Draw the pattern: sticks, the broadened curve, and hkl labels on lines above ``label_above`` %.

    ``out`` is a path or a binary file object; ``fmt`` the matplotlib format.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = two_theta_range
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    x = np.linspace(lo, hi, 4000)
    ax.plot(x, broadened(peaks, x, fwhm), color="0.55", lw=0.9, label=f"broadened, FWHM {fwhm}°")
    if peaks:
        ax.vlines(
            [p.two_theta for p in peaks],
            0,
            [p.intensity for p in peaks],
            color="tab:blue",
            lw=1.4,
            label="peaks",
        )
    for p in peaks:
        if p.intensity >= label_above:
            ax.annotate(
                p.hkl.split(" (")[0].replace(" ", ""),
                (p.two_theta, p.intensity),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                fontsize=7,
            )
    ax.set_xlim(lo, hi)
    ax.set_ylim(0, 112)
    source = "Cu Kα" if wavelength == "CuKa" else f"λ = {wavelength}"
    ax.set_xlabel(f"2θ (degrees), {source}")
    ax.set_ylabel("relative intensity")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(out, format=fmt, dpi=120)
    plt.close(fig)
