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

from hts.models.base import Prediction

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
        from hts.models.tensor import predict_via_tensors

        return predict_via_tensors(self, batch)

    def evaluate(self, b):
        """Energy, forces and stress of a :class:`~hts.models.tensor.TensorBatch`, analytically."""
        import torch

        from hts.models.neighbors import neighbor_list
        from hts.models.tensor import Evaluation

        dev, dt = b.positions.device, b.positions.dtype
        radii = torch.as_tensor(self._radii, dtype=dt, device=dev)
        r = radii[b.numbers]
        n = b.n_structures
        reach = self.cutoff_sigmas * 2.0 * float(r.max()) / _TWO_SIXTH if len(r) else 1.0
        edges, unit = neighbor_list(b.positions, b.cells, b.batch, b.counts, reach)
        i, j = edges
        owner = b.batch[i]
        vec = b.positions[j] - b.positions[i] + torch.einsum("ei,eij->ej", unit, b.cells[owner])
        d = vec.norm(dim=-1)
        sigma = (r[i] + r[j]) / _TWO_SIXTH
        cut = self.cutoff_sigmas * sigma
        m = d < cut
        i, owner, vec, d, sigma, cut = i[m], owner[m], vec[m], d[m], sigma[m], cut[m]
        sr6 = (sigma / d) ** 6
        src6 = (sigma / cut) ** 6
        eps = self.epsilon
        e_pair = 4 * eps * (sr6 * sr6 - sr6) - 4 * eps * (src6 * src6 - src6)
        # each pair appears twice in the full list
        energy = 0.5 * torch.zeros(n, dtype=dt, device=dev).index_add_(0, owner, e_pair)
        dedd = 4 * eps * (-12 * sr6 * sr6 + 6 * sr6) / d  # dφ/dd
        fvec = (dedd / d)[:, None] * vec  # on i: -∂E/∂r_i = Σ_j φ'(d) D/d, D = r_j - r_i
        forces = torch.zeros_like(b.positions).index_add_(0, i, fvec)
        # (1/2) Σ D ⊗ φ'(d) D/d per structure, halved for double counting
        virial = torch.zeros((n, 3, 3), dtype=dt, device=dev).index_add_(
            0, owner, vec[:, :, None] * fvec[:, None, :]
        )
        stress = 0.5 * virial / torch.linalg.det(b.cells).abs()[:, None, None]
        return Evaluation(energy, forces, stress)
