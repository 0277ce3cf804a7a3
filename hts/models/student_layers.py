"""The trunk student's layers: a teacher's trunk (SevenNet or MACE), the heads, the student.

These are the ``nn.Module`` classes behind :mod:`hts.models.student` (which
owns the student file: recipe, saving, loading, licence, and the model
interface).  They are defined on first use by :func:`layer_classes`, so
``import hts`` (and importing the student's file helpers) loads no torch; the
classes come back by name (``sevennet``, ``mace``, ``Heads``,
``TrunkStudent``).  A SevenNet trunk is rebuilt from the checkpoint shipped in
the ``sevenn`` wheel (:func:`sevennet_copy`), so a student file keeps only its
weights.
"""

from __future__ import annotations

import functools

__all__ = ["layer_classes", "sevennet_copy", "torch_module"]


def torch_module():
    """torch, imported on the first call (``import hts`` loads no torch)."""
    import torch

    return torch


class _Trunk:
    """Namespace for the trunk classes, built on first use (torch is imported lazily)."""

    classes: dict = {}


def layer_classes() -> dict:
    """The nn.Module classes, defined once torch is imported (``import hts`` loads no torch)."""
    if _Trunk.classes:
        return _Trunk.classes
    torch = torch_module()
    nn = torch.nn

    class SevennetTrunk(nn.Module):
        """SevenNet's embedding and first ``blocks`` blocks → every block's scalar features per atom."""

        def __init__(self, checkpoint: str, blocks: int) -> None:
            super().__init__()
            model, config = sevennet_copy(checkpoint)
            import sevenn._keys as keys

            names = list(model._modules)
            n_blocks = int(config[keys.NUM_CONVOLUTION])
            if not 1 <= blocks <= n_blocks:
                raise ValueError(f"blocks: {blocks} not in 1..{n_blocks} for SevenNet {checkpoint}")
            stop = (
                names.index(f"{blocks}_self_connection_intro")
                if blocks < n_blocks
                else names.index("reduce_input_to_hidden")
            )
            for name in names[stop:]:
                model.delete_module_by_key(name)
            model.key_grad = None  # the student computes its own gradients when asked
            self.layers = model
            self.checkpoint = checkpoint
            self.blocks = blocks
            self.n_blocks = n_blocks
            self.cutoff = float(config[keys.CUTOFF])
            self.n_features = int(config[keys.NODE_FEATURE_MULTIPLICITY])
            self.n_all = self.n_features * blocks
            self.type_map = {int(z): int(i) for z, i in config[keys.TYPE_MAP].items()}

        def species(self, numbers):
            return self.layers._atomic_numbers_to_onehot(numbers)

        def forward(self, b, positions, cells):
            """(last block's scalars [N, C], every block's scalars [N, blocks·C])."""
            import sevenn._keys as keys

            from hts.models.graphs import sevennet_graph

            data = sevennet_graph(_with(b, positions, cells), self.cutoff)
            data[keys.NODE_FEATURE] = self.species(b.numbers)
            scalars = []
            for name, module in self.layers._modules.items():
                data = module(data)
                if name.endswith("_equivariant_gate"):
                    scalars.append(data[keys.NODE_FEATURE][:, : self.n_features])
            return scalars[-1], torch.cat(scalars, dim=1)

    class MaceTrunk(nn.Module):
        """A MACE model's first ``blocks`` layers: their energy, and every layer's invariant features."""

        def __init__(self, module, blocks: int) -> None:
            super().__init__()
            n = len(module.interactions)
            if not 1 <= blocks <= n:
                raise ValueError(f"blocks: {blocks} not in 1..{n} for this MACE model")
            module.interactions = module.interactions[:blocks]
            module.products = module.products[:blocks]
            module.readouts = module.readouts[:blocks]
            module.num_interactions = torch.tensor(blocks)
            self.module = module
            self.blocks, self.n_blocks = blocks, n
            self.cutoff = float(module.r_max)
            zs = [int(z) for z in module.atomic_numbers]
            self.type_map = {z: i for i, z in enumerate(zs)}
            self._rows = torch.full((max(zs) + 1,), -1, dtype=torch.long)
            self._rows[zs] = torch.arange(len(zs))
            # where each layer's invariant channels sit in mace's concatenated node_feats
            self._slices, start = [], 0
            for p in module.products:
                irreps = p.linear.irreps_out
                self._slices.append(slice(start, start + irreps.count("0e")))
                start += irreps.dim
            self.n_features = self._slices[-1].stop - self._slices[-1].start
            self.n_all = sum(s.stop - s.start for s in self._slices)

        def species(self, numbers):
            return self._rows.to(numbers.device)[numbers]

        def forward(self, b, positions, cells):
            from hts.models.graphs import mace_tensor_input

            kinds = self.species(b.numbers)
            d = mace_tensor_input(
                _with(b, positions, cells), kinds, len(self.type_map), self.cutoff
            )
            res = self.module(d, compute_force=False, training=self.training)
            self.node_energy = res["node_energy"]
            feats = res["node_feats"]
            return feats[:, self._slices[-1]], torch.cat([feats[:, s] for s in self._slices], 1)

    class Heads(nn.Module):
        """Per-atom energies from the trunk's features: a linear map plus an ensemble of MLPs.

        ``ε_i = scale[s_i] · (w·h_i + MLP_m(x_i)) + shift[s_i]`` for each head
        ``m``, where ``h_i`` are the last block's scalars and ``x_i`` every
        block's, standardised, next to their mean over the atom's structure (a
        relaxed energy is a property of the whole cell, not of one site's
        neighbourhood).  The MLPs start at zero (their last layer), so
        with the teacher's linear readout and rescaling copied in (the whole
        SevenNet trunk) the student starts as the teacher's single point and
        learns the correction; the heads' spread is the student's uncertainty.
        """

        def __init__(self, n_last: int, n_all: int, n_species: int, hidden: int, heads: int):
            super().__init__()
            self.linear = nn.Linear(n_last, 1, bias=False)
            nn.init.zeros_(self.linear.weight)
            self.n_heads, self.hidden = heads, hidden

            def weight(*shape, fan_in):
                return nn.Parameter(torch.randn(*shape) / fan_in**0.5)

            self.w1 = weight(heads, 2 * n_all, hidden, fan_in=2 * n_all)
            self.b1 = nn.Parameter(torch.zeros(heads, 1, hidden))
            self.w2 = weight(heads, hidden, hidden, fan_in=hidden)
            self.b2 = nn.Parameter(torch.zeros(heads, 1, hidden))
            self.w3 = nn.Parameter(torch.zeros(heads, hidden, 1))
            self.b3 = nn.Parameter(torch.zeros(heads, 1, 1))
            self.register_buffer("mean", torch.zeros(n_all))
            self.register_buffer("std", torch.ones(n_all))
            self.scale = nn.Parameter(torch.ones(n_species))
            self.shift = nn.Parameter(torch.zeros(n_species))

        def forward(self, h_last, h_all, species, owner):
            """Per-atom energies of every head, ``[heads, N]``; ``owner[i]``: atom i's structure."""
            x = (h_all - self.mean) / self.std
            n = int(owner.max()) + 1 if len(owner) else 0
            counts = torch.zeros(n, dtype=x.dtype, device=x.device).index_add(
                0, owner, torch.ones_like(owner, dtype=x.dtype)
            )
            pooled = torch.zeros(n, x.shape[1], dtype=x.dtype, device=x.device).index_add(
                0, owner, x
            )
            x = torch.cat([x, (pooled / counts.clamp(min=1)[:, None])[owner]], 1).unsqueeze(0)
            silu = nn.functional.silu
            y = silu(torch.baddbmm(self.b1, x.expand(self.n_heads, -1, -1), self.w1))
            y = silu(torch.baddbmm(self.b2, y, self.w2))
            y = torch.baddbmm(self.b3, y, self.w3).squeeze(-1)
            y = y + self.linear(h_last).squeeze(-1)
            return self.scale[species] * y + self.shift[species]

    class TrunkStudent(nn.Module):
        """A trunk and its heads: per-atom energies (mean over heads), every head's, the features."""

        def __init__(self, trunk, hidden: int = 64, heads: int = 1) -> None:
            super().__init__()
            self.trunk = trunk
            n_species = len(trunk.type_map)
            self.readout = Heads(trunk.n_features, trunk.n_all, n_species, hidden, heads)

        def features(self, b, positions=None, cells=None):
            pos = b.positions if positions is None else positions
            cel = b.cells if cells is None else cells
            return self.trunk(b, pos, cel)

        def energies(self, h_last, h_all, species, owner, node_energy=None):
            """Every head's per-atom energy ``[heads, N]`` from features (cached or fresh)."""
            e = self.readout(h_last, h_all, species, owner)
            if node_energy is not None:  # a MACE trunk's own layer energies, as mace sums them
                e = e + node_energy.to(e.dtype)
            return e

        def forward(self, b, positions=None, cells=None):
            h_last, h_all = self.features(b, positions, cells)
            node_energy = getattr(self.trunk, "node_energy", None)  # MACE trunks set it
            e = self.energies(h_last, h_all, self.trunk.species(b.numbers), b.batch, node_energy)
            return e.mean(0), e, h_last

    _Trunk.classes = {
        "sevennet": SevennetTrunk,
        "mace": MaceTrunk,
        "Heads": Heads,
        "TrunkStudent": TrunkStudent,
    }
    return _Trunk.classes


def _with(b, positions, cells):
    """The batch with (possibly differentiable) positions and cells in place of its own."""
    from hts.models.tensor import TensorBatch

    return TensorBatch(positions, cells, b.numbers, b.batch, b.counts)


def sevennet_copy(checkpoint: str):
    """A fresh copy of a wheel checkpoint's model and its config.

    Building one takes seconds (e3nn sets up every tensor product); a copy of
    the first build takes a tenth of that, and nobody shares the copy.
    """
    import copy

    model, config = _sevennet_built(checkpoint)
    return copy.deepcopy(model), copy.deepcopy(config)


@functools.lru_cache(maxsize=2)
def _sevennet_built(checkpoint: str):
    import os
    import warnings

    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sevenn import util

        return util.model_from_checkpoint(util.pretrained_name_to_path(checkpoint))
