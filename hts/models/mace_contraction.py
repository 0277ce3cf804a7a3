"""MACE's symmetric contraction with the element weights folded in, for inference.

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
"""

from __future__ import annotations

import torch

__all__ = ["FoldedContraction", "fold_contractions"]


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
        self._folded: dict[int, list[torch.Tensor]] = {}

    def _fold(self, element: int, like: torch.Tensor) -> list[torch.Tensor]:
        if element not in self._folded:
            out = []
            for u, w in zip(self._u, self._w, strict=True):
                # A[c, …] = Σ_k U[…, k] W[e, k, c]
                a = torch.tensordot(w[element].double().T, u.double(), dims=([1], [u.dim() - 1]))
                out.append(a.to(device=like.device, dtype=like.dtype))
            self._folded[element] = out
        return self._folded[element]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        elements = y.argmax(dim=1)
        present = torch.unique(elements).tolist()
        parts, order = [], []
        for e in present:
            idx = torch.nonzero(elements == e).squeeze(1)
            xe = x.index_select(0, idx)  # (n, c, l)
            a_max, *lower = self._fold(int(e), x)
            # (c, P, l) @ (c, l, n) per channel -> (c, P, n): the costly order, folded
            c, lmax = a_max.shape[0], a_max.shape[-1]
            rest = a_max.shape[1:-1]
            t = torch.bmm(a_max.reshape(c, -1, lmax), xe.permute(1, 2, 0))
            t = t.permute(2, 0, 1).reshape((len(idx), c, *rest))
            for a in lower:  # add the next order's tensor, contract its last index
                t = ((t + a) * xe.reshape(len(idx), c, *([1] * (a.dim() - 2)), lmax)).sum(-1)
            parts.append(t.reshape(len(idx), -1))
            order.append(idx)
        if len(parts) == 1:
            return parts[0]
        out = torch.cat(parts)
        perm = torch.cat(order)
        return out.index_select(0, torch.argsort(perm))


def fold_contractions(model: torch.nn.Module, check: bool = True) -> int:
    """Replace every symmetric contraction of an eager MACE model; returns how many.

    TorchScript models are left alone (their submodules cannot be swapped).
    With ``check`` each replacement is compared with the original on random
    features for every element before it is kept; a mismatch raises, since it
    would mean a mace-torch whose contraction differs from the one folded here.
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
        if check:
            _check(new, old, f"{name}.{i}")
        parent[i] = new
    return len(swaps)


def _check(new: FoldedContraction, old: torch.nn.Module, where: str) -> None:
    w = old.weights_max
    n_elements, n_channels = w.shape[0], w.shape[-1]
    n_ell = old.U_tensors(1).shape[-2]
    g = torch.Generator().manual_seed(0)
    n = 2 * n_elements
    x = torch.randn((n, n_channels, n_ell), generator=g, dtype=w.dtype).to(w.device)
    y = torch.nn.functional.one_hot(torch.arange(n) % n_elements, n_elements).to(x)
    with torch.no_grad():
        ref, got = old(x, y), new(x, y)
    tol = 1e-4 if w.dtype == torch.float32 else 1e-9
    err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    if err > tol:
        raise RuntimeError(f"folded contraction {where} differs from mace's by {err:.2e} (relative)")
    new._folded.clear()  # built again on the dtype/device in use
