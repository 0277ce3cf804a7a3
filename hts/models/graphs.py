"""Each library's batched input, built from structures (or a tensor batch on its device).

The model classes (:mod:`hts.models.batched`), the distilled student
(:mod:`hts.models.student`) and distillation's direct training
(:mod:`hts.distill.direct`) all feed MACE or SevenNet the same input dicts; they
are built here once.  The tensor-batch builders take their graph from
:func:`hts.models.neighbors.neighbor_list` on the batch's device, so a relax
loop never leaves the GPU; :func:`mace_graph` and :func:`mace_collate` are the
host-side path (mace's own neighbour search, numpy until the collate).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms

__all__ = ["mace_collate", "mace_graph", "mace_tensor_input", "sevennet_graph"]


def sevennet_graph(b, cutoff: float) -> dict:
    """sevenn's batched input for a :class:`~hts.models.tensor.TensorBatch`, built on its device.

    Edges from :func:`hts.models.neighbors.neighbor_list` (sevenn's matscipy
    graph, same edges); float32, sevenn's weights' dtype.
    """
    import sevenn._keys as keys
    import torch

    from hts.models.neighbors import neighbor_list

    edge_index, unit = neighbor_list(b.positions, b.cells, b.batch, b.counts, cutoff)
    dt = torch.float32
    cells = b.cells.to(dt)
    pos = b.positions.to(dt)
    src, dst = edge_index
    vec = pos[dst] - pos[src] + torch.einsum("ei,eij->ej", unit.to(dt), cells[b.batch[src]])
    return {
        keys.NODE_FEATURE: b.numbers,
        keys.ATOMIC_NUMBERS: b.numbers,
        keys.POS: pos,
        keys.EDGE_VEC: vec,
        keys.EDGE_IDX: edge_index,
        keys.CELL: cells.reshape(-1, 3),
        keys.CELL_SHIFT: unit.to(dt),
        keys.CELL_VOLUME: torch.linalg.det(cells).abs(),
        keys.NUM_ATOMS: b.counts,
        keys.BATCH: b.batch,
    }


def mace_tensor_input(
    b, kinds, n_elements: int, r_max: float, dtype: str = "float32", head: int = 0
) -> dict:
    """mace's input dict for a :class:`~hts.models.tensor.TensorBatch`, built on its device.

    ``kinds[i]`` is atom ``i``'s row of ``node_attrs`` (its element's index in
    the model); the graph is :func:`hts.models.neighbors.neighbor_list`'s.
    Shifts come from the batch's cells, so they carry gradients when the cells do.
    """
    import torch

    from hts.models.neighbors import neighbor_list

    dt = torch.float64 if dtype == "float64" else torch.float32
    dev = b.positions.device
    edge_index, unit = neighbor_list(b.positions, b.cells, b.batch, b.counts, r_max)
    pos = b.positions.to(dt)
    cells = b.cells.to(dt)
    unit = unit.to(dt)
    n = b.n_structures
    attrs = torch.zeros((len(kinds), n_elements), dtype=dt, device=dev)
    attrs[torch.arange(len(kinds), device=dev), kinds] = 1.0
    return {
        "positions": pos,
        "node_attrs": attrs,
        "edge_index": edge_index,
        "shifts": torch.einsum("ei,eij->ej", unit, cells[b.batch[edge_index[0]]]),
        "unit_shifts": unit,
        "cell": cells.reshape(-1, 3),
        "batch": b.batch,
        "ptr": torch.cat([b.counts.new_zeros(1), torch.cumsum(b.counts, 0)]),
        "head": torch.full((n,), head, dtype=torch.long, device=dev),
        # neutral, spin-unpolarised: what mace's AtomicData puts for plain structures
        "charges": torch.zeros(len(kinds), dtype=dt, device=dev),
        "total_charge": torch.zeros(n, dtype=dt, device=dev),
        "total_spin": torch.ones(n, dtype=dt, device=dev),
        "pbc": torch.ones((n, 3), dtype=torch.bool, device=dev),
        "volume": torch.linalg.det(cells).abs(),
    }


def mace_graph(atoms: Atoms, z_index: np.ndarray, r_max: float) -> tuple:
    """One structure's part of mace's input: positions, element rows, edges, shifts, cell, pbc."""
    from mace.data.neighborhood import get_neighborhood

    p = atoms.get_positions()
    pbc = tuple(bool(x) for x in atoms.pbc)
    e, s, us, cell = get_neighborhood(p, cutoff=r_max, pbc=pbc, cell=atoms.cell.array.copy())
    return p, z_index[atoms.numbers], e, s, us, cell, pbc


def mace_collate(graphs: Sequence[tuple], n_elements: int, dtype: str, device: str, heads) -> dict:
    """Concatenate :func:`mace_graph` parts into one batch; ``heads[k]`` is graph k's readout."""
    import torch

    pos, kinds, edges, shifts, unit_shifts, cells = [], [], [], [], [], []
    offset = 0
    for p, k, e, s, us, cell, _ in graphs:
        pos.append(p)
        kinds.append(k)
        edges.append(e + offset)
        shifts.append(s)
        unit_shifts.append(us)
        cells.append(cell)
        offset += len(p)
    counts = np.array([len(p) for p in pos])
    kind = np.concatenate(kinds)
    tdtype = torch.float64 if dtype == "float64" else torch.float32
    dev = device

    def f(x):
        return torch.as_tensor(np.concatenate(x), dtype=tdtype, device=dev)

    n = len(graphs)
    attrs = torch.zeros((len(kind), n_elements), dtype=tdtype, device=dev)
    attrs[torch.arange(len(kind), device=dev), torch.as_tensor(kind, device=dev)] = 1.0
    return {
        "positions": f(pos),
        "node_attrs": attrs,
        "edge_index": torch.as_tensor(np.concatenate(edges, axis=1).astype(np.int64), device=dev),
        "shifts": f(shifts),
        "unit_shifts": f(unit_shifts),
        "cell": f(cells),
        "batch": torch.as_tensor(np.repeat(np.arange(n), counts), device=dev),
        "ptr": torch.as_tensor(np.concatenate([[0], np.cumsum(counts)]), device=dev),
        "head": torch.as_tensor(np.asarray(heads), dtype=torch.long, device=dev),
        # neutral, spin-unpolarised: what mace's AtomicData puts for plain structures
        "charges": torch.zeros(len(kind), dtype=tdtype, device=dev),
        "total_charge": torch.zeros(n, dtype=tdtype, device=dev),
        "total_spin": torch.ones(n, dtype=tdtype, device=dev),
        "pbc": torch.as_tensor(np.array([g[6] for g in graphs]), device=dev),
        "volume": torch.as_tensor([abs(np.linalg.det(c)) for c in cells], dtype=tdtype, device=dev),
    }
