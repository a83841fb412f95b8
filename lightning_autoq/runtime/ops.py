"""Integer kernels of the runtime: torch integer operations only, no float anywhere.

Convolutions are ``im2col`` (``Tensor.unfold``) followed by an integer matrix product:
``torch._int_mm`` (int8 x int8 -> int32) when the codes fit int8, else an int32 product.
Unsigned 8-bit codes are moved into int8 by subtracting 128 and adding ``128 * sum(w)``
back, which is exact.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

INT8 = (-128, 127)
INT32 = (-(2**31), 2**31 - 1)


def channel_view(values: Tensor, dims: int) -> Tensor:
    """A per-channel vector shaped to broadcast over dimension 1 of a ``dims``-D tensor."""
    shape = [1] * dims
    shape[1] = -1
    return values.reshape(shape) if values.numel() > 1 else values.reshape([1] * dims)


def shift_left(x: Tensor, shift: Tensor) -> Tensor:
    """``x * 2**shift`` for non-negative integer shifts (broadcast per channel)."""
    return torch.bitwise_left_shift(x, shift)


def round_shift(x: Tensor, shift: Tensor, divisor: int = 1) -> Tensor:
    """``round_half_even(x / (divisor * 2**shift))`` in integers; negative shifts multiply.

    Matches ``torch.round`` (ties to even) of the exact quotient, which is what the
    fake-quantized model computes.
    """
    x = x.to(torch.int64)
    shift = shift.to(torch.int64)
    left = torch.clamp(-shift, min=0)
    right = torch.clamp(shift, min=0)
    num = torch.bitwise_left_shift(x, left)
    den = torch.bitwise_left_shift(torch.full_like(right, divisor), right)
    quotient = torch.div(num, den, rounding_mode="floor")
    twice_rest = 2 * (num - quotient * den)
    up = (twice_rest > den) | ((twice_rest == den) & (torch.remainder(quotient, 2) == 1))
    return quotient + up.to(torch.int64)


def requant(x: Tensor, shift: Tensor, divisor: int, lo: int, hi: int) -> Tensor:
    """The next layer's input codes: rounding shift (and division), then saturation."""
    if divisor == 1 and x.dtype == torch.int32 and bool((shift >= 0).all()):  # one int32 shift
        # round_half_even(x / 2^k) = (x + 2^(k-1) - 1 + bit_k(x)) >> k for k > 0
        x = x.to(torch.int32)
        shift = shift.to(torch.int32)
        bit_k = torch.bitwise_left_shift(torch.ones_like(shift), shift)
        bias = torch.where(shift > 0, torch.bitwise_right_shift(bit_k, 1) - 1, 0)
        odd = (torch.bitwise_and(x, torch.where(shift > 0, bit_k, 0)) != 0).to(torch.int32)
        return torch.clamp(torch.bitwise_right_shift(x + bias + odd, shift), lo, hi)
    return torch.clamp(round_shift(x, shift, divisor), lo, hi).to(torch.int32)


def requant_dyadic(x: Tensor, multiplier: Tensor, shift: Tensor, lo: int, hi: int) -> Tensor:
    """``clamp(round_half_even(x * multiplier / 2**shift), lo, hi)`` in int64.

    The result is int32 when ``[lo, hi]`` fits int32 (layer input codes), else int64.
    """
    scaled = x.to(torch.int64) * multiplier
    out = torch.clamp(round_shift(scaled, shift), lo, hi)
    return out.to(torch.int32) if INT32[0] <= lo and hi <= INT32[1] else out


def to_int8(x: Tensor, x_range: tuple[int, int]) -> tuple[Tensor, int] | None:
    """``x - offset`` as int8 with ``offset`` 0 or 128, or None when the range does not fit."""
    if INT8[0] <= x_range[0] and x_range[1] <= INT8[1]:
        return x.to(torch.int8), 0
    if x_range[0] >= 0 and x_range[1] <= 255:
        return (x - 128).to(torch.int8), 128
    return None


def _int_matmul(x: Tensor, w_t: Tensor, offset: int | None, w_sum: Tensor | None) -> Tensor:
    """``(x + offset) @ w_t`` exactly in int32 (``x`` int8 when ``offset`` is not None)."""
    if offset is not None and w_t.dtype == torch.int8 and hasattr(torch, "_int_mm"):
        acc = torch._int_mm(x, w_t)
        if offset:
            acc = acc + offset * w_sum.to(torch.int32)  # type: ignore[union-attr]
        return acc
    x = x.to(torch.int32) + (offset or 0)
    return torch.matmul(x, w_t.to(torch.int32))


def linear(x: Tensor, w_t: Tensor, x_range: tuple[int, int], w_sum: Tensor | None) -> Tensor:
    """Integer fully connected layer: (N, K) codes times (K, N_out) weight codes -> int32."""
    small = to_int8(x, x_range) if w_t.dtype == torch.int8 else None
    if small is None:
        return _int_matmul(x, w_t, None, w_sum)
    return _int_matmul(small[0], w_t, small[1], w_sum)


def conv(
    x: Tensor,
    weight: Tensor,
    w_t: Tensor,
    w_sum: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    x_range: tuple[int, int],
) -> Tensor:
    """Integer 1-D/2-D convolution (zero padding) with int32 accumulation.

    ``weight`` is the (O, C/groups, *kernel) code tensor; ``w_t`` the same codes as a
    (C/groups * prod(kernel), O) matrix (prepared once by the executor).
    """
    squeeze = x.dim() == 3
    if squeeze:  # 1-D as 2-D with a height of one
        x = x.unsqueeze(2)
        weight = weight.unsqueeze(2)
        stride, padding, dilation = [1, *stride], [0, *padding], [1, *dilation]
    n, c = x.shape[:2]
    out_c, _, kh, kw = weight.shape
    small = to_int8(x, x_range) if weight.dtype == torch.int8 and groups == 1 else None
    offset = None
    if small is not None:  # im2col on int8: a quarter of the memory traffic
        x, offset = small
    x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]), value=-(offset or 0))
    patches = x.unfold(2, dilation[0] * (kh - 1) + 1, stride[0]).unfold(
        3, dilation[1] * (kw - 1) + 1, stride[1]
    )[..., :: dilation[0], :: dilation[1]]
    oh, ow = patches.shape[2:4]
    # (N, C, OH, OW, kh, kw) -> (N*OH*OW, groups, C/groups*kh*kw)
    cols = patches.permute(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, groups, (c // groups) * kh * kw)
    if groups == 1:
        acc = _int_matmul(cols[:, 0], w_t, offset, w_sum)
    else:
        per_group = out_c // groups
        w_g = weight.reshape(groups, per_group, -1).to(torch.int32)
        acc = torch.einsum("mgk,gok->mgo", cols.to(torch.int32), w_g).reshape(n * oh * ow, out_c)
    out = acc.reshape(n, oh, ow, out_c).permute(0, 3, 1, 2).contiguous()
    return out.squeeze(2) if squeeze else out


def sum_pool(x: Tensor, kernel: list[int], stride: list[int]) -> Tensor:
    """Window sums (average pooling without its division), in the dtype of ``x``."""
    dtype = x.dtype
    for axis, (k, s) in enumerate(zip(kernel, stride, strict=True)):
        x = x.unfold(2 + axis, k, s)
    return x.sum(dim=tuple(range(x.dim() - len(kernel), x.dim())), dtype=dtype)


def max_pool(
    x: Tensor, kernel: list[int], stride: list[int], padding: list[int], dilation: list[int]
) -> Tensor:
    """Window maxima; padding takes the dtype's minimum so it never wins."""
    pads: list[int] = []
    for p in reversed(padding):
        pads += [p, p]
    x = F.pad(x, pads, value=int(torch.iinfo(x.dtype).min))
    for axis, (k, s, d) in enumerate(zip(kernel, stride, dilation, strict=True)):
        x = x.unfold(2 + axis, d * (k - 1) + 1, s)
        if d > 1:
            x = x[..., ::d]
        x = x.amax(dim=-1)
    return x


__all__ = [
    "channel_view",
    "conv",
    "linear",
    "max_pool",
    "requant",
    "requant_dyadic",
    "round_shift",
    "sum_pool",
]
