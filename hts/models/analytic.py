"""A cheap analytic potential behind the model interface.

A Lennard-Jones pair potential for every element: σ from the covalent radii
(the minimum of the pair well at the sum of the two radii), one well depth,
a cutoff at 2.5 σ with the energy shifted to zero there.  Physically it is a
toy; it exists so tests and scale benchmarks exercise the whole engine at
thousands of structures per second, through exactly the code path an MLIP
takes.  It is never a campaign's default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from hts.geometry import pairs_within
from hts.models.base import Prediction, voigt

if TYPE_CHECKING:
    from ase import Atoms

__all__ = ["LennardJonesModel"]

_TWO_SIXTH = 2.0 ** (1.0 / 6.0)


class LennardJonesModel:
    """Element-aware Lennard-Jones potential with analytic forces and stress."""

    name = "lennard-jones"
    version = "1"
    device = "cpu"

    def __init__(self, epsilon: float = 0.1, cutoff_sigmas: float = 2.5) -> None:
        from ase.data import covalent_radii

        self.epsilon = epsilon
        self.cutoff_sigmas = cutoff_sigmas
        self._radii = np.asarray(covalent_radii, dtype=float)

    def unsupported(self, numbers: Sequence[int]) -> str | None:
        return None

    def calculator(self):
        from hts.models.base import ModelCalculator

        return ModelCalculator(self)

    def predict(self, batch: Sequence[Atoms]) -> list[Prediction]:
        return [self._one(a) for a in batch]

    def _one(self, atoms: Atoms) -> Prediction:
        numbers = atoms.numbers
        r = self._radii[numbers]
        i, j, d, D = pairs_within(
            atoms.positions, atoms.cell[:], self.cutoff_sigmas * 2.0 * r.max() / _TWO_SIXTH
        )
        sigma = (r[i] + r[j]) / _TWO_SIXTH
        cut = self.cutoff_sigmas * sigma
        m = d < cut
        i, j, d, D, sigma, cut = i[m], j[m], d[m], D[m], sigma[m], cut[m]
        sr6 = (sigma / d) ** 6
        src6 = (sigma / cut) ** 6
        e_pair = 4 * self.epsilon * (sr6 * sr6 - sr6) - 4 * self.epsilon * (src6 * src6 - src6)
        energy = 0.5 * float(e_pair.sum())  # each pair appears twice in the full list
        dedd = 4 * self.epsilon * (-12 * sr6 * sr6 + 6 * sr6) / d  # dφ/dd
        fvec = (dedd / d)[:, None] * D  # force on i: -∂E/∂r_i = Σ_j φ'(d) D/d, with D = r_j - r_i
        forces = np.zeros((len(atoms), 3))
        np.add.at(forces, i, fvec)
        virial = 0.5 * np.einsum(
            "pa,pb->ab", D, fvec
        )  # (1/2) Σ D ⊗ φ'(d) D/d, halved for double counting
        stress = virial / abs(np.linalg.det(atoms.cell[:]))
        return Prediction(energy=energy, forces=forces, stress=voigt(stress))
