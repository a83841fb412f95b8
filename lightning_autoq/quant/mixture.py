"""QSS cell: a Gumbel-softmax mixture of candidate quantizers of one tensor (AutoQNN §QSS).

AutoQNN (https://arxiv.org/abs/2304.03782) searches the quantizing scheme of every tensor with
differentiable NAS (DNAS, https://arxiv.org/abs/1812.00090): the output of a cell is
``sum_i m_i * Q_i(x)`` with ``m = softmax((theta + g) / tau)``, ``g`` Gumbel noise. Used as a
layer's ``weight_quant`` the cell mixes the *quantized weights* before the layer's single
convolution, so a search step costs one convolution per layer rather than one per candidate
(EdMIPS, https://arxiv.org/abs/2004.05795); used as ``act_quant`` it mixes the quantized input.

With ``sampling="hard"`` (GDAS, Dong and Yang 2019, https://arxiv.org/abs/1910.04465) a
training forward runs only the candidate ``argmax(theta + g)`` and multiplies it by the
straight-through weight ``m_i - stop_grad(m_i) + 1`` (exactly 1 in value), so it costs one
quantizer and ``theta`` still gets a gradient; evaluation then runs the argmax candidate.

With ``sampling="pair"`` (ProxylessNAS's two-path sampling, Cai et al. 2019,
https://arxiv.org/abs/1812.00332) a training forward mixes two candidates drawn without
replacement with probabilities ``softmax(theta)`` (the top two of ``theta + g``), weighted by
``softmax(theta_pair / tau)``: ``theta`` learns from pairwise comparisons at the cost of two
quantizers instead of all of them; evaluation runs the argmax candidate.

Once fixed (``chosen >= 0``) a cell returns its chosen candidate's output exactly, at the cost
of a plain quantizer; :func:`collapse` swaps fixed cells for those candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_autoq.quant.quantizer import Quantizer
from lightning_autoq.quant.schemes import scheme_class

Sampling = Literal["soft", "hard", "pair"]
SAMPLINGS: tuple[str, ...] = ("soft", "hard", "pair")


def candidate_bits(scheme: str, bits: int) -> int | None:
    """The bit-width a candidate ``scheme`` gets in a layer quantized at ``bits``.

    ``bits`` clamped into the scheme's ``bit_range`` (binary 1, ternary 2, power_of_two <= 4);
    None when the scheme's smallest width is above ``bits`` (it would cost more than the layer
    allows, so it is left out), e.g. ternary or fixed_point in a 1-bit layer.

    Example:
        >>> candidate_bits("binary", 4), candidate_bits("power_of_two", 8)
        (1, 4)
        >>> candidate_bits("ternary", 1) is None
        True
    """
    lo, hi = scheme_class(scheme).bit_range
    if lo > bits:
        return None
    return min(bits, hi)


class SchemeMixture(nn.Module):
    """One tensor's candidate quantizers mixed with Gumbel-softmax weights over logits ``theta``.

    ``theta`` may be shared by several cells (one logit per scheme name for the whole model);
    ``slots`` says which entries of ``theta`` this cell's candidates use, so a cell that lacks
    a candidate (bit range) still shares the others' logits.

    ``sampling="soft"``: in training the weights are ``softmax((theta[slots] + g) / tau)`` with
    Gumbel noise ``g`` drawn from ``generator`` (set by the search so that every rank draws
    the same noise); in evaluation they are ``softmax(theta[slots] / tau)`` without noise.
    ``sampling="hard"``: in training only the candidate ``i = argmax(theta[slots] + g)`` runs,
    scaled by the straight-through weight ``m_i - stop_grad(m_i) + 1`` (1 in value; the
    gradient of ``m_i``, added only while ``theta`` requires a gradient); in evaluation the
    argmax of ``theta`` runs. ``sampling="pair"``: in training the two candidates with the
    largest ``theta[slots] + g`` are mixed with weights ``softmax(theta[pair] / tau)``; in
    evaluation the argmax runs. :meth:`resample` draws the noise ahead of a forward (the
    search does, once per step, so a layer and its bias see the same draw); without it every
    forward draws afresh. ``last_index`` is the candidate the last forward ran (None: a
    mixture).
    Once ``chosen`` (a persistent buffer, -1 while searching) holds an index, the cell returns
    exactly that candidate's output and ``theta`` gets no gradient.

    Args:
        candidates: the plain quantizers, at least one.
        theta: the logits (a shared ``nn.Parameter``); None creates zeros, one per candidate.
        slots: index into ``theta`` of each candidate; None: ``0..len(candidates)-1``.
        tau: initial temperature.
        sampling: ``"soft"`` (the full mixture), ``"hard"`` (one sampled candidate) or
            ``"pair"`` (a mixture of two sampled candidates).

    Example:
        >>> cell = SchemeMixture([Quantizer("clip", 2), Quantizer("binary", 1)])
        >>> cell(torch.randn(4, 3)).shape
        torch.Size([4, 3])
        >>> cell.fix().candidate.scheme.name in ("clip", "binary")
        True
    """

    def __init__(
        self,
        candidates: Sequence[Quantizer],
        theta: nn.Parameter | None = None,
        slots: Sequence[int] | None = None,
        tau: float = 1.0,
        sampling: Sampling = "soft",
    ) -> None:
        super().__init__()
        if sampling not in SAMPLINGS:
            raise ValueError(
                f"sampling={sampling!r} is not allowed; allowed: {', '.join(SAMPLINGS)}"
            )
        if not candidates:
            raise ValueError("a SchemeMixture needs at least one candidate quantizer")
        self.candidates = nn.ModuleList(candidates)
        n = len(candidates)
        if theta is None:
            theta = nn.Parameter(torch.zeros(n))
        slots = list(range(n)) if slots is None else list(slots)
        if len(slots) != n or (slots and not 0 <= min(slots) <= max(slots) < theta.numel()):
            raise ValueError(
                f"slots={slots} must give one index in 0..{theta.numel() - 1} per candidate ({n})"
            )
        self.theta = theta
        self.register_buffer("slots", torch.tensor(slots, dtype=torch.long), persistent=False)
        self.slot_list: list[int] = slots  # the same on the host (no device sync to read)
        self.register_buffer("chosen", torch.tensor(-1, dtype=torch.long))
        self.tau = float(tau)
        self.sampling: Sampling = sampling
        self.generator: torch.Generator | None = None
        self.last_index: int | None = None
        # (candidates ranked by theta + noise, the noise) from resample()
        self._draw: tuple[list[int], Tensor] | None = None

    @property
    def names(self) -> list[str]:
        """Scheme name of each candidate."""
        return [q.scheme.name for q in self.candidates]  # type: ignore[union-attr]

    @property
    def fixed(self) -> bool:
        return int(self.chosen) >= 0

    @property
    def candidate(self) -> Quantizer:
        """The chosen candidate (only once fixed)."""
        if not self.fixed:
            raise RuntimeError("the cell is still searching: call fix() first")
        return self.candidates[int(self.chosen)]  # type: ignore[return-value]

    def logits(self) -> Tensor:
        """This cell's entries of ``theta``."""
        return self.theta[self.slots]

    def probabilities(self) -> Tensor:
        """The noise-free distribution ``softmax(theta[slots])`` (detached)."""
        return torch.softmax(self.logits().detach().float(), dim=0)

    def _gumbel(self) -> Tensor:
        """Gumbel noise, one value per candidate, from ``generator`` (on the CPU)."""
        u = torch.rand(len(self.candidates), generator=self.generator, dtype=torch.float32)
        return -torch.log((-torch.log(u.clamp_min(1e-10))).clamp_min(1e-10))

    def mixing_weights(self) -> Tensor:
        """``softmax((theta + g) / tau)``; Gumbel noise ``g`` in training only."""
        logits = self.logits().float()
        if self.training:
            logits = logits + self._gumbel().to(logits.device)
        return torch.softmax(logits / self.tau, dim=0)

    @torch.no_grad()
    def resample(self, host_logits: Tensor | None = None) -> int:
        """Draw the sample the next training forwards use; returns the top candidate's index.

        ``host_logits``: this cell's logits already on the CPU (saves a device sync per cell).
        """
        noise = self._gumbel()
        logits = self.logits().float().cpu() if host_logits is None else host_logits.float()
        ranked = torch.argsort(logits + noise, descending=True)[:2].tolist()
        self._draw = (ranked, noise)
        return ranked[0]

    def _drawn(self) -> tuple[list[int], Tensor]:
        """The sample drawn ahead by :meth:`resample`, or a fresh one for this forward only."""
        if self._draw is not None:
            return self._draw
        self.resample()
        draw, self._draw = self._draw, None
        assert draw is not None
        return draw

    def pair(self) -> tuple[list[int], Tensor] | None:
        """``sampling="pair"`` in training: the two drawn candidates and their mixing weights.

        None when the next forward is not a pair mixture (another sampling, evaluation, a
        fixed cell, or a single candidate).
        """
        if self.sampling != "pair" or not self.training or self.fixed:
            return None
        if len(self.candidates) < 2:
            return None
        indices = self._drawn()[0]
        logits = self.logits()[indices].float()
        return indices, torch.softmax(logits / self.tau, dim=0)

    def clear_sample(self) -> None:
        """Forget the drawn sample: the next hard training forward draws its own."""
        self._draw = None

    def select(self) -> tuple[int | None, Tensor | None]:
        """The candidate the next forward runs and its straight-through weight (or None).

        ``(None, None)``: a mixture (soft: of all candidates; pair: of the two drawn).
        """
        if self.fixed:
            return int(self.chosen), None
        mixing = self.sampling == "soft" or (self.sampling == "pair" and self.training)
        if mixing and len(self.candidates) > 1:
            return None, None
        if not self.training or len(self.candidates) == 1:
            return int(self.logits().argmax()), None
        ranked, noise = self._drawn()
        index = ranked[0]
        if not (torch.is_grad_enabled() and self.theta.requires_grad):
            return index, None
        logits = self.logits().float() + noise.to(self.theta.device)
        weight = torch.softmax(logits / self.tau, dim=0)[index]
        return index, weight - weight.detach() + 1.0  # exactly 1 in value

    @staticmethod
    def scale(out: Tensor, weight: Tensor | None) -> Tensor:
        """``out`` times a straight-through weight (unchanged in value)."""
        return out if weight is None else out * weight.to(out.dtype)

    @torch.no_grad()
    def fix(self, index: int | None = None) -> SchemeMixture:
        """Fix the cell on ``index`` (default: the argmax of ``theta``); returns the cell."""
        if index is None:
            index = int(self.logits().argmax())
        if not 0 <= index < len(self.candidates):
            raise ValueError(
                f"index={index} is not allowed; allowed: 0..{len(self.candidates) - 1}"
            )
        self.chosen.fill_(index)
        return self

    def forward(self, x: Tensor | None) -> Tensor | None:
        if x is None:
            return None
        index, weight = self.select()
        self.last_index = index
        if index is not None:
            return self.scale(self.candidates[index](x), weight)  # type: ignore[arg-type]
        pair = self.pair()
        if pair is None:
            indices, weights = list(range(len(self.candidates))), self.mixing_weights()
        else:
            indices, weights = pair
        weights = weights.to(x.device)
        mixed: Tensor | None = None
        for weight, i in zip(weights, indices, strict=True):
            term = self.candidates[i](x).float() * weight  # accumulating beats stacking
            mixed = term if mixed is None else mixed + term
        assert mixed is not None
        return mixed.to(x.dtype)

    def extra_repr(self) -> str:
        state = (
            f"chosen={self.names[int(self.chosen)]}"
            if self.fixed
            else f"tau={self.tau:.3g}, sampling={self.sampling}"
        )
        return f"{', '.join(self.names)}; {state}"


def mixtures(model: nn.Module) -> list[tuple[str, SchemeMixture]]:
    """``(name, cell)`` of every :class:`SchemeMixture` in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SchemeMixture)]


def collapse(model: nn.Module) -> nn.Module:
    """Replace every fixed cell by its chosen plain quantizer, in place (export, inference).

    The chosen candidate keeps its state, so the model's outputs do not change and its state
    dict matches a model built by ``convert`` from the searched policy.

    Raises:
        RuntimeError: a cell is still searching (nothing is replaced then).
    """
    cells = mixtures(model)
    searching = [name for name, cell in cells if not cell.fixed]
    if searching:
        raise RuntimeError(f"cells still searching (not fixed): {', '.join(searching)}")
    for name, cell in cells:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, cell.candidate)
    return model


__all__ = ["SAMPLINGS", "Sampling", "SchemeMixture", "candidate_bits", "collapse", "mixtures"]
