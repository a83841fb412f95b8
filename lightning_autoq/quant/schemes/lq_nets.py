"""LQ-Nets: learned quantization with a fitted basis (Zhang et al., ECCV 2018, https://arxiv.org/abs/1807.10029)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from lightning_autoq.quant.functional import Backward
from lightning_autoq.quant.schemes.base import Params, Scheme, register_scheme
from lightning_autoq.quant.schemes.qat_common import robust_range, to_groups


def code_matrix(bits: int, signed: bool, like: Tensor) -> Tensor:
    """All ``2^K`` codes ``e`` as rows: entries in ``{-1, 1}`` (signed) or ``{0, 1}``."""
    j = torch.arange(2**bits, device=like.device)
    e = ((j.unsqueeze(1) >> torch.arange(bits, device=like.device)) & 1).to(like.dtype)
    return 2 * e - 1 if signed else e


def basis_levels(basis: Sequence[Tensor], codes: Tensor) -> Tensor:
    """``v^T e`` for every code, along a new last dimension (one fixed order of additions)."""
    levels = basis[0].unsqueeze(-1) * codes[:, 0]
    for k in range(1, len(basis)):
        levels = levels + basis[k].unsqueeze(-1) * codes[:, k]
    return levels


def nearest_codes(x: Tensor, levels: Tensor) -> tuple[Tensor, Tensor]:
    """For grouped ``x`` ``(G, M)`` and levels ``(G, L)``: the nearest level and its code index."""
    ordered, order = levels.sort(dim=1)
    mid = (ordered[:, 1:] + ordered[:, :-1]) / 2
    index = torch.searchsorted(mid.contiguous(), x.contiguous())
    return ordered.gather(1, index), order.gather(1, index)


def least_squares_basis(x: Tensor, code_index: Tensor, codes: Tensor) -> Tensor:
    """``argmin_v ||x - B v||^2`` for grouped ``x`` ``(G, M)`` with codes ``B = codes[index]``.

    Solved through the normal equations ``(B^T B) v = B^T x``, accumulated per code (counts
    and sums) so ``B`` is never built; ``pinv`` gives the minimum-norm solution when some
    basis direction is unused (``B^T B`` singular). Returns ``(G, K)``.
    """
    groups, n_codes = x.shape[0], codes.shape[0]
    counts = torch.zeros(groups, n_codes, dtype=x.dtype, device=x.device)
    counts.scatter_add_(1, code_index, torch.ones_like(x))
    sums = torch.zeros(groups, n_codes, dtype=x.dtype, device=x.device)
    sums.scatter_add_(1, code_index, x)
    gram = torch.einsum("gl,lk,lm->gkm", counts, codes, codes)
    rhs = sums @ codes
    return (torch.linalg.pinv(gram) @ rhs.unsqueeze(-1)).squeeze(-1)


@register_scheme
@dataclass
class LQNets(Scheme):
    """Levels ``v^T e``: a basis ``v`` of ``K = b`` values, codes ``e`` in ``{-1,1}^K``
    (signed: weights) or ``{0,1}^K`` (unsigned: ReLU activations).

    The basis is fitted by the paper's quantization error minimisation (QEM, Algorithm 1):
    alternately (1) each value takes the code of its nearest level, (2) with the codes fixed,
    ``v = (B^T B)^-1 B^T x``, the least-squares solution. ``estimate`` (the first batch)
    runs ``iterations`` rounds from the uniform basis ``v_k = r 2^k / (2^K - 1)`` (``r`` a
    range without outliers). After that the quantizer keeps the paper's moving average of the
    basis, for weights (``running_weights``: their default ``range_mode="running"``) and
    activations alike: every training step :meth:`refine` runs one QEM round from the stored
    basis ``v`` (codes of the nearest levels, then the least-squares ``v*``) and the buffer
    moves to ``gamma v + (1 - gamma) v*`` (``ema_decay`` ``gamma`` 0.9); evaluation uses it
    as-is. ``range_mode="dynamic"`` instead refits weights from scratch at every call. The
    basis is not trained by SGD (no learnable parameter); the input gets the paper's plain
    straight-through gradient (``backward="ste"``, 1 everywhere). Bits 1..4 (the paper's
    range).
    """

    name: ClassVar[str] = "lq_nets"
    bit_range: ClassVar[tuple[int, int]] = (1, 4)
    default_backward: ClassVar[Backward] = "ste"  # the paper's plain straight-through input
    running_weights: ClassVar[bool] = True
    iterations: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iterations < 1:
            raise ValueError(f"iterations={self.iterations} is not allowed; allowed: >= 1")

    def param_names(self) -> tuple[str, ...]:
        return tuple(f"basis{k}" for k in range(self.bits))

    def estimate(self, x: Tensor, signed: bool, dims: Sequence[int]) -> Params:
        r = robust_range(x, dims)
        codes = code_matrix(self.bits, signed, x)
        grouped, _ = to_groups(x, r)
        scale = r.reshape(-1, 1) / (2**self.bits - 1)
        basis = scale * 2.0 ** torch.arange(self.bits, dtype=x.dtype, device=x.device)
        for _ in range(self.iterations):
            basis = self._qem_round(grouped, basis, codes)
        return {f"basis{k}": basis[:, k].reshape(r.shape) for k in range(self.bits)}

    def refine(self, x: Tensor, previous: Params, signed: bool, dims: Sequence[int]) -> Params:
        """``v*``: one QEM round on ``x`` from the stored basis ``previous`` (Algorithm 1)."""
        start = self._basis(previous)
        like = start[0]
        grouped, _ = to_groups(x, like)
        basis = torch.stack([b.reshape(-1) for b in start], dim=1)  # (G, K)
        basis = self._qem_round(grouped, basis, code_matrix(self.bits, signed, x))
        return {f"basis{k}": basis[:, k].reshape(like.shape) for k in range(self.bits)}

    @staticmethod
    def _qem_round(grouped: Tensor, basis: Tensor, codes: Tensor) -> Tensor:
        """Codes of the nearest levels under ``basis`` ``(G, K)``, then the least-squares basis."""
        levels = basis_levels(list(basis.unbind(1)), codes)
        _, index = nearest_codes(grouped, levels)
        return least_squares_basis(grouped, index, codes)

    def _basis(self, params: Params) -> list[Tensor]:
        return [params[f"basis{k}"] for k in range(self.bits)]

    def quantize(self, x: Tensor, params: Params, signed: bool) -> Tensor:
        basis = self._basis(params)
        levels = basis_levels(basis, code_matrix(self.bits, signed, x))
        grouped, back = to_groups(x, basis[0])
        q, _ = nearest_codes(grouped, levels.reshape(-1, levels.shape[-1]))
        return back(q)

    def levels(self, params: Params, signed: bool) -> Tensor:
        basis = self._basis(params)
        return basis_levels(basis, code_matrix(self.bits, signed, basis[0]))
