"""The interface every quantizing scheme implements, and the scheme registry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from torch import Tensor

from lightning_autoq.quant.functional import TINY, Backward
from lightning_autoq.quant.uniform import UniformGrid, uniform_fake_quant

Params = dict[str, Tensor]


@dataclass
class Scheme:
    """A quantizing scheme: statistics -> parameters -> quantized values.

    A scheme is stateless apart from its configuration (``bits`` and scheme options); the
    :class:`~lightning_autoq.quant.quantizer.Quantizer` module owns the parameters (running
    statistics or learned values) and the gradient to the input. All tensors given to a
    scheme are float32; parameters broadcast against the input (one value per tensor or per
    channel).

    Subclasses set the class attributes and implement :meth:`estimate`, :meth:`quantize` and
    :meth:`levels`; ``@register_scheme`` makes them available by ``name``.
    """

    bits: int

    name: ClassVar[str]
    letter: ClassVar[str] = ""  # AutoQNN's one-letter id (B T Q F Z C P R), for plots
    bit_range: ClassVar[tuple[int, int]] = (1, 8)
    idempotent: ClassVar[bool] = True  # quantize(quantize(x)) == quantize(x) for fixed params
    default_backward: ClassVar[Backward] = "clipped"
    learnable: ClassVar[tuple[str, ...]] = ()  # parameters that may be learned by SGD
    needs_learned: ClassVar[bool] = False  # only meaningful with learned parameters (LSQ)
    # quantize() carries the paper's own input gradient: the quantizer hands it the live input
    # (backward="scheme") instead of attaching a straight-through gradient to a detached one.
    differentiable_input: ClassVar[bool] = False
    # learned parameters' gradient multiplied by LSQ's 1 / sqrt(N Q_P) (False: the paper's own)
    lsq_grad_scale: ClassVar[bool] = True
    # weights may keep running parameters (range_mode="running", then their default)
    running_weights: ClassVar[bool] = False
    # levels in normalised units, not the input's (DoReFa, APoT): no level-distance callbacks
    normalizes_input: ClassVar[bool] = False

    def __post_init__(self) -> None:
        lo, hi = self.bit_range
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise TypeError(f"bits must be an int, got {self.bits!r}")
        if not lo <= self.bits <= hi:
            allowed = f"{lo}" if lo == hi else f"{lo}..{hi}"
            raise ValueError(
                f"bits={self.bits} is not allowed for scheme {self.name!r}; allowed: {allowed}"
            )

    def param_names(self) -> tuple[str, ...]:
        """Names of the parameters :meth:`estimate` returns and :meth:`quantize` takes."""
        raise NotImplementedError

    def estimate(self, x: Tensor, signed: bool, dims: Sequence[int]) -> Params:
        """Parameters from the statistics of ``x``, reduced over ``dims`` (kept as size 1)."""
        raise NotImplementedError

    def refine(self, x: Tensor, previous: Params, signed: bool, dims: Sequence[int]) -> Params:
        """The estimate a running update moves towards, given the ``previous`` running values.

        ``previous`` holds the stored running parameters (broadcast against ``x``). The default
        ignores them and returns :meth:`estimate`; a scheme whose fit starts from the current
        parameters (LQ-Nets' QEM) overrides it. Returns every name of :meth:`param_names`.
        """
        return self.estimate(x, signed, dims)

    def quantize(self, x: Tensor, params: Params, signed: bool) -> Tensor:
        """Quantized values of ``x``; differentiable with respect to ``params`` (STE rounding).

        With ``differentiable_input`` it is also differentiable with respect to ``x``, with the
        paper's input gradient.
        """
        raise NotImplementedError

    def levels(self, params: Params, signed: bool) -> Tensor:
        """Every value :meth:`quantize` can return, along a new last dimension."""
        raise NotImplementedError

    def bounds(self, params: Params, signed: bool) -> tuple[Tensor, Tensor]:
        """Smallest and largest level, broadcastable against the input."""
        levels = self.levels(params, signed)
        return levels.amin(dim=-1), levels.amax(dim=-1)

    def max_code(self, signed: bool) -> int:
        """Largest positive integer code: the ``Q_P`` of LSQ's gradient scale."""
        return max(2 ** (self.bits - 1) - 1 if signed else 2**self.bits - 1, 1)


class UniformScheme(Scheme):
    """A scheme whose levels form a :class:`UniformGrid`: it only describes the grid.

    Quantizing, the level set and the bounds follow from :meth:`grid`, and the quantizer
    module uses the fused :func:`uniform_fake_quant` for it.
    """

    def grid(self, params: Params, signed: bool) -> UniformGrid:
        """The grid for these parameters."""
        raise NotImplementedError

    def quantize(self, x: Tensor, params: Params, signed: bool) -> Tensor:
        return uniform_fake_quant(x, self.grid(params, signed))

    def levels(self, params: Params, signed: bool) -> Tensor:
        return self.grid(params, signed).levels()

    def bounds(self, params: Params, signed: bool) -> tuple[Tensor, Tensor]:
        g = self.grid(params, signed)
        low, high = (g.lo + g.shift) * g.step, (g.hi + g.shift) * g.step
        if g.offset is not None:
            low, high = low + g.offset, high + g.offset
        return low, high


def positive(step: Tensor) -> Tensor:
    """A learned step made usable: ``|step|``, at least ``TINY``."""
    return step.abs().clamp_min(TINY)


SchemeT = TypeVar("SchemeT", bound=type[Scheme])
_REGISTRY: dict[str, type[Scheme]] = {}


def register_scheme(cls: SchemeT) -> SchemeT:
    """Class decorator: make a :class:`Scheme` available under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"scheme {cls.name!r} is already registered by {_REGISTRY[cls.name]}")
    _REGISTRY[cls.name] = cls
    return cls


def available_schemes() -> list[str]:
    """Names of every registered scheme, sorted."""
    return sorted(_REGISTRY)


def scheme_class(name: str) -> type[Scheme]:
    """The scheme class registered as ``name``; a clear error lists the others."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown scheme {name!r}; available: {', '.join(available_schemes())}"
        ) from None


def make_scheme(name: str, bits: int, **options: object) -> Scheme:
    """Instantiate the scheme ``name`` at ``bits`` bits (validated)."""
    return scheme_class(name)(bits, **options)


def reduce_all_but(x: Tensor, axis: int | None) -> tuple[int, ...]:
    """Dimensions to reduce for per-tensor (``axis=None``) or per-channel statistics."""
    return tuple(d for d in range(x.dim()) if axis is None or d != axis % x.dim())
