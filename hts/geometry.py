"""Small periodic-geometry kernels shared by candidates and the analytic potential."""

from __future__ import annotations

import numpy as np

__all__ = ["pairs_within"]


def pairs_within(positions: np.ndarray, cell: np.ndarray, cutoff: float):
    """All ordered pairs (i, j, periodic image) closer than ``cutoff``.

    Returns ``i, j, d, D`` with ``D = r_j + shift - r_i``.  Brute force over the
    periodic images the cutoff can reach: for the few-atom cells of screening
    one vectorised distance computation is 20–100× faster than a general
    neighbour list.
    """
    positions = np.asarray(positions, dtype=float)
    cell = np.asarray(cell, dtype=float)
    recip = np.linalg.inv(cell).T  # rows: reciprocal vectors / 2π
    reps = np.ceil(cutoff * np.linalg.norm(recip, axis=1)).astype(int)
    grid = np.stack(np.meshgrid(*[np.arange(-n, n + 1) for n in reps], indexing="ij"), axis=-1)
    shifts = grid.reshape(-1, 3) @ cell
    D = positions[None, :, None, :] + shifts[None, None, :, :] - positions[:, None, None, :]
    d2 = np.einsum("ijsk,ijsk->ijs", D, D)
    mask = (d2 < cutoff * cutoff) & (d2 > 1e-16)
    i, j, _ = np.nonzero(mask)
    return i, j, np.sqrt(d2[mask]), D[mask]
