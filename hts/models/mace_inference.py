"""Faster MACE inference: folded symmetric contractions and a fused edge convolution.

Two swaps in an eager mace-torch model, each checked against the module it
replaces when made (:func:`optimize_for_inference`); energies, forces and stress
are unchanged to float rounding, but the model can no longer be trained.

**Symmetric contraction.**

MACE's product basis (Batatia et al., NeurIPS 2022, eq. 10) contracts the
node features ``x[b, c, l]`` ν times with generalised Clebsch–Gordan tensors
``U_ν[..., l_1 … l_ν, k]`` weighted per element by ``W_ν[e, k, c]``.  mace-torch
evaluates the highest order as ``U_ν · (W[e_b] ⊗ x_b)`` per node, which for
correlation 3 and ``l ≤ 3`` costs ``16² · 16 · K`` multiply-adds per channel
(K ≈ 23 couplings): about 3 × 10⁶ per node, most of a small model's forward and
backward pass on a CPU.

With frozen weights the sum over ``k`` can be done once per element:
``A_ν[e, c, …] = Σ_k U_ν[…, k] W_ν[e, k, c]``.  Each node then only contracts
``A_ν[e_b, c]`` with its own features, 16 times fewer operations, grouped by
element so every group is one batched matrix product.  The result is the same
polynomial evaluated in another order (equal to float rounding, checked when a
model is folded); gradients with respect to positions (forces, stress) flow
through it unchanged, but the weights can no longer be trained.

For a scalar output (every contraction of a model with ``L = 0`` hidden
features, the ``0e`` part of the others) the polynomial is a sum of symmetric
forms ``P_ν(x) = Σ S_ν[i_1 … i_ν] x_{i_1} ⋯ x_{i_ν}`` once ``A_ν`` is
symmetrised over its indices, so its gradient ``ν Σ S_ν[m, i_2 …] x_{i_2} ⋯`` is
``ν q_ν`` with ``q_ν`` the last step of the forward evaluation: the backward
pass, which autograd would otherwise run through every product, becomes one
multiplication.
"""

from __future__ import annotations

import itertools

import torch

__all__ = [
    "FoldedContraction",
    "FusedEdgeConvolution",
    "fold_contractions",
    "fuse_convolutions",
    "optimize_for_inference",
]


class _ScalarForms(torch.autograd.Function):
    """``Σ_ν P_ν(x)`` per channel and node, gradient from the forward's ``q_ν``.

    ``x``: features ``(c, l, n)``; ``forms``: ``S_ν`` for ν = N … 1, shaped
    ``(c, l^(ν-1), l)`` (``S_1``: ``(c, l, 1)``).  Returns ``(c, n)``.
    """

    @staticmethod
    def forward(ctx, x, *forms):
        c, n_ell, n = x.shape
        total = grad = None
        for i, s in enumerate(forms):
            nu = len(forms) - i
            if nu == 1:
                q = s.expand(c, n_ell, n)
            else:
                q = torch.bmm(s, x)  # (c, l^(ν-1), n): the last index contracted
                for _ in range(nu - 2):  # then the others but one
                    q = (q.reshape(c, -1, n_ell, n) * x.unsqueeze(1)).sum(2)
            total = q if total is None else total + q
            grad = nu * q if grad is None else grad + nu * q
        ctx.save_for_backward(grad)
        return (total * x).sum(1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return (grad * grad_out.unsqueeze(1), *([None] * (len(ctx.needs_input_grad) - 1)))


class FoldedContraction(torch.nn.Module):
    """Drop-in for ``mace.modules.symmetric_contraction.Contraction`` at inference.

    The folded tensors ``A_ν`` are built per element on first use (a foundation
    model covers ~89 elements, a campaign a few of them), in float64 and then
    cast to the model's dtype.
    """

    def __init__(self, contraction: torch.nn.Module) -> None:
        super().__init__()
        self.correlation = int(contraction.correlation)
        # highest order first, as in mace: (U_ν, W_ν) for ν = correlation … 1
        self._u = [contraction.U_tensors(nu).detach() for nu in range(self.correlation, 0, -1)]
        self._w = [contraction.weights_max.detach()] + [w.detach() for w in contraction.weights]
        # a scalar output has no m index: U_ν is (l,)*ν + (K,)
        self.scalar = self._u[0].dim() == self.correlation + 1
        self._folded: dict[int, list[torch.Tensor]] = {}

    def _fold(self, element: int, like: torch.Tensor) -> list[torch.Tensor]:
        """The per-element tensors, shaped for :meth:`forward`.

        Scalar output: the symmetrised ``S_ν`` as ``(c, l^(ν-1), l)``.  Otherwise
        ``[A_ν | A_ν₋₁]`` as one matrix per channel (``A_ν₋₁`` rides along as an
        extra column, the features get a constant 1), then ``A_ν₋₂ … A_1``.
        """
        if element not in self._folded:
            folded = []
            for u, w in zip(self._u, self._w, strict=True):
                # A[c, …] = Σ_k U[…, k] W[e, k, c]
                a = torch.tensordot(w[element].double().T, u.double(), dims=([1], [u.dim() - 1]))
                folded.append(a)
            c = folded[0].shape[0]
            if self.scalar:
                out = []
                for a in folded:
                    nu = a.dim() - 1
                    perms = list(itertools.permutations(range(1, nu + 1)))
                    sym = sum(a.permute(0, *p) for p in perms) / len(perms)
                    n_ell = a.shape[-1]
                    out.append(sym.reshape(c, -1, n_ell) if nu > 1 else sym.reshape(c, n_ell, 1))
                folded = out
            else:
                top = folded[0].reshape(c, -1, folded[0].shape[-1])
                if len(folded) > 1:
                    top = torch.cat([top, folded[1].reshape(c, -1, 1)], dim=2)
                folded = [top, *folded[2:]]
            self._folded[element] = [a.to(device=like.device, dtype=like.dtype) for a in folded]
        return self._folded[element]

    def _general(self, xt: torch.Tensor, folded: list[torch.Tensor]) -> torch.Tensor:
        """Features ``(c, l, n)`` → ``(c, m, n)`` for an output with an m index."""
        c, n_ell, n = xt.shape
        rest = self._u[0].shape[:-2]  # m and all but the last l
        top, *lower = folded
        if self.correlation > 1:
            t = torch.baddbmm(top[:, :, n_ell:], top[:, :, :n_ell], xt).reshape(c, *rest, n)
            t = (t * xt.reshape(c, *([1] * (t.dim() - 3)), n_ell, n)).sum(-2)
        else:
            t = torch.bmm(top, xt).reshape(c, *rest, n)
        for a in lower:  # add the next order's tensor, contract its last index
            t = t + a.unsqueeze(-1)
            t = (t * xt.reshape(c, *([1] * (t.dim() - 3)), n_ell, n)).sum(-2)
        return t

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        elements = y.argmax(dim=1)
        order = torch.argsort(elements, stable=True)
        counts = torch.bincount(elements, minlength=y.shape[1]).tolist()
        # nodes sorted by element, nodes last: each element is a slice, every step a
        # per-channel matrix product or a broadcast over a contiguous node axis
        xs = x.index_select(0, order).permute(1, 2, 0)
        parts, start = [], 0
        for e, k in enumerate(counts):
            if k == 0:
                continue
            xt = xs[:, :, start : start + k]
            start += k
            folded = self._fold(e, x)
            if self.scalar:
                parts.append(_ScalarForms.apply(xt, *folded))  # (c, k)
            else:
                parts.append(self._general(xt, folded).movedim(-1, 0).reshape(k, -1).T)
        if len(parts) == 1:  # one element: the order was the identity
            return parts[0].T
        return torch.cat(parts, dim=1).T.index_select(0, torch.argsort(order))


def fold_contractions(model: torch.nn.Module) -> int:
    """Replace every symmetric contraction of an eager MACE model; returns how many.

    TorchScript models are left alone (their submodules cannot be swapped).
    Each replacement is compared with the original on random features of a few
    elements before it is kept; a mismatch raises, since it would mean a
    mace-torch whose contraction differs from the one folded here.
    """
    if isinstance(model, torch.jit.ScriptModule):
        return 0
    from mace.modules.symmetric_contraction import Contraction

    swaps = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList):
            for i, child in enumerate(module):
                if isinstance(child, Contraction):
                    swaps.append((name, module, i, child))
    for name, parent, i, old in swaps:
        new = FoldedContraction(old)
        _check(new, old, f"{name}.{i}")
        parent[i] = new
    return len(swaps)


def _relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype == torch.float32 else 1e-9


def _check(new: FoldedContraction, old: torch.nn.Module, where: str) -> None:
    w = old.weights_max
    n_elements, n_channels = w.shape[0], w.shape[-1]
    n_ell = old.U_tensors(1).shape[-2]
    g = torch.Generator().manual_seed(0)
    # a few elements, first and last among them: folding all 89 of a foundation
    # model here would cost a second and a gigabyte for nothing the few don't show
    some = torch.linspace(0, n_elements - 1, min(n_elements, 4)).round().long()
    element = some.repeat(3)
    x = torch.randn((len(element), n_channels, n_ell), generator=g, dtype=w.dtype).to(w.device)
    y = torch.nn.functional.one_hot(element, n_elements).to(x)
    with torch.no_grad():
        ref, got = old(x, y), new(x, y)
    err = _relative_error(got, ref)
    if err > _tolerance(w.dtype):
        raise RuntimeError(
            f"folded contraction {where} differs from mace's by {err:.2e} (relative)"
        )
    new._folded.clear()  # built again on the dtype/device in use


class FusedEdgeConvolution(torch.nn.Module):
    """The interaction's edge tensor product and its sum over neighbours, in one module.

    mace's interaction blocks call ``conv_tp(node_feats, edge_attrs, weights,
    edge_index)`` for the whole message when the block has a ``conv_fusion``
    attribute (the hook its cuequivariance path uses).  The sum over neighbours
    becomes ``index_add`` on a 1-D index, whose backward is an ``index_select``,
    where mace's ``scatter_sum`` broadcasts the index to every feature and pays
    a full-size ``gather`` in the backward pass.

    When the node features are scalars (``U×0e``, every layer of an ``L = 0``
    model, the first layer of the others) and each spherical harmonic ``l``
    feeds one ``uvu`` path, the product is an outer product per path,
    ``out[u, m] = c_l w_l[u] x[u] Y_l[m]``, computed as such; the constants
    ``c_l`` are read off the e3nn module itself.  Other products go through
    e3nn as before.
    """

    def __init__(self, tp: torch.nn.Module) -> None:
        super().__init__()
        self.tp = tp
        self.paths = self._outer_paths(tp)

    @staticmethod
    def _outer_paths(tp) -> list[tuple[int, int, int, float]] | None:
        """``(start, stop, i_out, c_l)`` per path, or None if not an outer product."""
        in1, in2, out = tp.irreps_in1, tp.irreps_in2, tp.irreps_out
        if len(in1) != 1 or in1[0].ir.l != 0 or in1[0].ir.p != 1 or tp.shared_weights:
            return None
        mul = in1[0].mul
        starts = [0]
        for m in in2:
            starts.append(starts[-1] + m.dim)
        paths, seen = [], set()
        for k, ins in enumerate(tp.instructions):
            a, b = in2[ins.i_in2], out[ins.i_out]
            if (
                ins.connection_mode != "uvu"
                or not ins.has_weight
                or a.mul != 1
                or b.ir != a.ir
                or b.mul != mul
                or ins.i_out in seen
                or ins.i_in1 != 0
            ):
                return None
            seen.add(ins.i_out)
            # c_l: unit features and weights of this path only, first component of Y_l
            x = torch.ones((1, mul), dtype=torch.float64)
            y = torch.zeros((1, in2.dim), dtype=torch.float64)
            y[0, starts[ins.i_in2]] = 1.0
            w = torch.zeros((1, tp.weight_numel), dtype=torch.float64)
            w[0, k * mul : (k + 1) * mul] = 1.0
            with torch.no_grad():
                ref = _probe(tp, x, y, w)
            offset = sum(o.dim for o in out[: ins.i_out])
            paths.append(
                (starts[ins.i_in2], starts[ins.i_in2 + 1], ins.i_out, float(ref[0, offset]))
            )
        return paths

    def forward(self, node_feats, edge_attrs, weights, edge_index):
        sender, receiver = edge_index[0], edge_index[1]
        n = node_feats.shape[0]
        if self.paths is None:
            mji = self.tp(node_feats[sender], edge_attrs, weights)
            return mji.new_zeros((n, mji.shape[1])).index_add_(0, receiver, mji)
        x = node_feats.index_select(0, sender)  # (E, U)
        n_edges, mul = x.shape
        a = weights.view(n_edges, len(self.paths), mul) * x.unsqueeze(1)
        blocks: list[torch.Tensor | None] = [None] * len(self.tp.irreps_out)
        for p, (start, stop, i_out, c) in enumerate(self.paths):
            y = edge_attrs[:, start:stop] * c
            m = (a[:, p, :, None] * y[:, None, :]).reshape(n_edges, -1)
            blocks[i_out] = m.new_zeros((n, m.shape[1])).index_add_(0, receiver, m)
        for i, b in enumerate(blocks):  # an output no path reaches stays zero, as in e3nn
            if b is None:
                blocks[i] = node_feats.new_zeros((n, self.tp.irreps_out[i].dim))
        return torch.cat(blocks, dim=1)


def _like(tp) -> torch.Tensor:
    """A tensor with the e3nn module's dtype and device (its constants are buffers)."""
    return next(iter(tp.buffers()), torch.empty(0))


def _probe(tp, x, y, w):
    """The e3nn module's output in float64, computed in its own dtype and device."""
    t = _like(tp)
    return tp(x.to(t), y.to(t), w.to(t)).double().cpu()


def fuse_convolutions(model: torch.nn.Module) -> int:
    """Give every mace interaction block a :class:`FusedEdgeConvolution`; returns how many.

    Each is compared with the e3nn product plus neighbour sum it replaces first.
    """
    if isinstance(model, torch.jit.ScriptModule):
        return 0
    from mace.modules.blocks import InteractionBlock

    count = 0
    for name, block in model.named_modules():
        if not isinstance(block, InteractionBlock) or hasattr(block, "conv_fusion"):
            continue
        fused = FusedEdgeConvolution(block.conv_tp)
        _check_convolution(fused, name)
        block.conv_tp = fused
        block.conv_fusion = "hts"
        count += 1
    return count


def _check_convolution(fused: FusedEdgeConvolution, where: str) -> None:
    tp = fused.tp
    t = _like(tp)
    g = torch.Generator().manual_seed(0)
    n_nodes, n_edges = 5, 23
    x = torch.randn((n_nodes, tp.irreps_in1.dim), generator=g).to(t)
    y = torch.randn((n_edges, tp.irreps_in2.dim), generator=g).to(t)
    w = torch.randn((n_edges, tp.weight_numel), generator=g).to(t)
    edges = torch.randint(0, n_nodes, (2, n_edges), generator=g).to(t.device)
    with torch.no_grad():
        mji = tp(x[edges[0]], y, w)
        ref = mji.new_zeros((n_nodes, mji.shape[1])).index_add_(0, edges[1], mji)
        got = fused(x, y, w, edges)
    err = _relative_error(got, ref)
    if err > _tolerance(t.dtype):
        raise RuntimeError(f"fused convolution {where} differs from e3nn's by {err:.2e} (relative)")


def optimize_for_inference(model: torch.nn.Module) -> dict[str, int]:
    """Both swaps on an eager mace model (TorchScript is left as it is); counts of each."""
    return {
        "contractions": fold_contractions(model),
        "convolutions": fuse_convolutions(model),
    }
