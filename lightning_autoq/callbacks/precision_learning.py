"""The PrecisionLearning callback: AutoQNN's learned per-layer bit-widths (QPL) under budgets.

AutoQNN (Gong et al. 2024, https://arxiv.org/abs/2304.03782) learns each quantizer's bit-width
``b = round(b_f)`` (STE) with the loss ``L_task + gamma L_prec``; ``L_prec`` penalises the
model size and memory footprint above their budgets
(:class:`~lightning_autoq.convert.budget.SizeTerm`, a hinge on the relative excess).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from lightning_autoq.callbacks.arguments import (
    check_epoch,
    check_layer_patterns,
    run_folder,
    save_policy,
    target_module,
)
from lightning_autoq.convert import QuantPolicy, layer_configs, quantized_layers
from lightning_autoq.convert.budget import SizeTerm, budget_in_bits
from lightning_autoq.convert.policy import MAX_BITS, PATTERN_PREFIX
from lightning_autoq.nn import QuantLayer
from lightning_autoq.quant.learned_bits import BIT_RULES, LearnedBits
from lightning_autoq.quant.mixture import SchemeMixture
from lightning_autoq.quant.quantizer import Quantizer
from lightning_autoq.utils.logging import log_table

Unsupported = Literal["error", "keep"]
UNSUPPORTED: tuple[str, ...] = ("error", "keep")
POLICY_FILE = "precision_policy.yaml"
PLOT_FILE = "precision_bits.png"
KINDS = (("weight", "weight_quant"), ("activation", "act_quant"))


@dataclass
class BitSlot:
    """One tensor whose bit-width is learned: its parameter and its wrapper(s).

    A plain quantizer has one wrapper; a SchemeSearch cell one per uniform candidate, all
    sharing ``param``; the active one is the cell's chosen candidate.
    """

    layer: str
    kind: str
    param: nn.Parameter
    wrappers: list[LearnedBits]
    cell: SchemeMixture | None = None
    unwrapped: list[str] = field(default_factory=list)  # candidate schemes left fixed

    @property
    def key(self) -> str:
        return f"{self.layer}.{'w' if self.kind == 'weight' else 'a'}"

    def active(self) -> LearnedBits | None:
        """The wrapper in use: None while a cell searches or chose an unwrapped scheme."""
        if self.cell is None:
            return self.wrappers[0]
        if not self.cell.fixed:
            return None
        chosen = self.cell.candidates[int(self.cell.chosen)]
        return chosen if isinstance(chosen, LearnedBits) else None

    def chosen_scheme(self) -> str:
        assert self.cell is not None
        return self.cell.names[int(self.cell.chosen)]


def _matches(name: str, keys: Sequence[str]) -> bool:
    for key in keys:
        if key.startswith(PATTERN_PREFIX):
            if re.fullmatch(key[len(PATTERN_PREFIX) :], name):
                return True
        elif key == name:
            return True
    return False


class PrecisionLearning(L.Callback):
    """Learn every quantized layer's bit-widths under size budgets (AutoQNN's QPL).

    ``setup`` wraps the layers' weight quantizers (and activation quantizers) in
    :class:`~lightning_autoq.quant.learned_bits.LearnedBits`, whose ``bits_float`` parameter is
    rounded in the forward pass with an STE, so the task loss reaches it. Weights are learned
    when a weight budget is given, activations when a memory budget is; the others keep their
    bits and count in the sizes as constants. Layers matching ``exclude`` keep theirs too.
    SchemeSearch cells (the callback placed after SchemeSearch) get one shared parameter per
    tensor over their uniform candidates; learning must start once the cells are fixed.

    **Loss.** ``L = L_task + gamma(epoch) * L_prec`` with ``L_prec = hinge_w + hinge_m``,
    ``hinge = max(0, size / budget - 1)``: ``size_w = sum_l n_l b_l`` over the weight tensors
    of every quantized layer, ``size_m = sum_l m_l a_l`` over their input activations, ``m_l``
    the elements of one sample (the memory term is the **total** over layers, per sample:
    storing every quantized activation of one input, not the peak). ``m_l`` is recorded by
    forward hooks on the first forward pass (sanity check or first batch), no extra pass.
    ``L_prec`` depends on the bits only, so it is added as its exact gradient to the bits'
    gradient of the task loss right before the weight step (``on_before_optimizer_step``): no
    change to the LightningModule, any loss, automatic or manual optimization, gradient
    accumulation. The bits have their own Adam (no weight decay; its state in this callback's
    state dict), are taken out of the user's optimizer, and are ignored by DDP, their gradient
    averaged over ranks by hand (under a ``GradScaler`` it is unscaled first).

    **Schedule.** Epochs ``[start_epoch, end_epoch)`` learn; ``gamma`` is 0 during the first
    ``warmup_epochs`` of them, then ramps linearly to ``gamma`` over ``ramp_epochs``. At the
    end of epoch ``end_epoch - 1`` the bits are frozen at their rounded values and repaired
    (:meth:`~lightning_autoq.convert.budget.SizeTerm.repair`: one bit at a time off the widest
    tensor, ties to the largest) so that the final policy meets every budget, then, with
    ``fill_budget``, raised into what is left of it
    (:meth:`~lightning_autoq.convert.budget.SizeTerm.fill`: one bit at a time to the tensor
    whose learned width is furthest above its rounded one, while the budget holds); the
    layers' configs are updated and the policy written to ``precision_policy.yaml`` in the
    log folder.
    Training goes on with the fixed bits. Every learning epoch the per-tensor bits are logged
    (metrics ``autoq/bits/<layer>.<w|a>``, a table ``autoq/precision_bits``, a heatmap
    ``precision_bits.png``; an image with W&B) with ``autoq/model_size_bytes``.

    Args:
        start_epoch: first epoch that learns bits.
        end_epoch: bits are frozen after epoch ``end_epoch - 1``.
        weight_budget_bits: target average weight bit-width over the quantized layers.
        weight_budget_bytes: weight budget in bytes (instead of an average).
        memory_budget_bytes: activation budget in bytes per sample (total over layers).
        gamma: the weight of ``L_prec`` after the ramp (>= 0).
        warmup_epochs: learning epochs with ``gamma = 0``.
        ramp_epochs: epochs of the linear ramp from 0 to ``gamma`` (>= 1).
        min_bits: smallest learned width (1..8; clamped up to each scheme's smallest).
        max_bits: largest learned width (1..8).
        lr: Adam learning rate of the bits.
        exclude: layer names or ``re:`` patterns whose bits are not learned.
        unsupported: a quantizer of a scheme with fixed width (binary, ternary, power of two,
            residual binary): ``"error"`` or ``"keep"`` its bits.
        module_name: the submodule to act on (as in ``Quantize``).
        fill_budget: after the repair, spend the budget left over (the hinge gives no reason
            to climb back up once the bits are under budget, so they often end well below).

    Example:
        >>> from lightning_autoq.callbacks import Quantize
        >>> qpl = PrecisionLearning(0, 10, weight_budget_bits=3.0, gamma=1.0)
        >>> trainer = L.Trainer(callbacks=[Quantize(), qpl], max_epochs=20)  # doctest: +SKIP
    """

    def __init__(
        self,
        start_epoch: int = 0,
        end_epoch: int = 10,
        weight_budget_bits: float | None = None,
        weight_budget_bytes: float | None = None,
        memory_budget_bytes: float | None = None,
        gamma: float = 1.0,
        warmup_epochs: int = 0,
        ramp_epochs: int = 1,
        min_bits: int = 2,
        max_bits: int = MAX_BITS,
        lr: float = 1e-2,
        exclude: Sequence[str] = (),
        unsupported: Unsupported = "error",
        module_name: str | None = None,
        fill_budget: bool = True,
    ) -> None:
        self.start_epoch = check_epoch("start_epoch", start_epoch, 0)
        self.end_epoch = check_epoch("end_epoch", end_epoch, start_epoch + 1)
        self.warmup_epochs = check_epoch("warmup_epochs", warmup_epochs, 0)
        self.ramp_epochs = check_epoch("ramp_epochs", ramp_epochs, 1)
        if (
            weight_budget_bits is None
            and weight_budget_bytes is None
            and memory_budget_bytes is None
        ):
            raise ValueError(
                "PrecisionLearning needs a budget; allowed: weight_budget_bits (average weight "
                "bits), weight_budget_bytes, memory_budget_bytes"
            )
        budget_in_bits("weight", 1, weight_budget_bits, weight_budget_bytes)  # validates
        budget_in_bits("memory", 1, None, memory_budget_bytes)
        for name, value in (("min_bits", min_bits), ("max_bits", max_bits)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BITS:
                raise ValueError(f"{name}={value!r} is not allowed; allowed: 1..{MAX_BITS}")
        if min_bits > max_bits:
            raise ValueError(f"min_bits={min_bits} > max_bits={max_bits}; allowed: min <= max")
        if isinstance(gamma, bool) or not float(gamma) >= 0:
            raise ValueError(f"gamma={gamma!r} is not allowed; allowed: >= 0")
        if not lr > 0:
            raise ValueError(f"lr={lr} is not allowed; allowed: > 0")
        if unsupported not in UNSUPPORTED:
            raise ValueError(
                f"unsupported={unsupported!r} is not allowed; allowed: {', '.join(UNSUPPORTED)}"
            )
        self.weight_budget_bits = weight_budget_bits
        self.weight_budget_bytes = weight_budget_bytes
        self.memory_budget_bytes = memory_budget_bytes
        self.gamma = float(gamma)
        self.min_bits, self.max_bits = min_bits, max_bits
        self.lr = lr
        self.exclude = list(exclude)
        self.unsupported = unsupported
        self.module_name = module_name
        if not isinstance(fill_budget, bool):
            raise ValueError(f"fill_budget={fill_budget!r} is not allowed; allowed: True, False")
        self.fill_budget = fill_budget
        self.optimizer: torch.optim.Optimizer | None = None
        self.policy: QuantPolicy | None = None
        self.policy_path: Path | None = None
        self.plot_path: Path | None = None
        self._model: nn.Module | None = None
        self._layers: dict[str, QuantLayer] = {}
        self._slots: list[BitSlot] = []
        self._act_elements: dict[str, int] = {}
        self._hooks: list[Any] = []
        self._pending_state: dict[str, Any] | None = None
        self._restored_policy = False
        self._history: list[list[object]] = []

    @property
    def learn_weights(self) -> bool:
        return self.weight_budget_bits is not None or self.weight_budget_bytes is not None

    @property
    def learn_activations(self) -> bool:
        return self.memory_budget_bytes is not None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            module_name=self.module_name, start_epoch=self.start_epoch, end_epoch=self.end_epoch
        )

    # ------------------------------------------------------------------ structure
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._layers:
            return  # an earlier stage set up the wrappers
        model = target_module(pl_module, self.module_name)
        layers = quantized_layers(model)
        if not layers:
            raise ValueError(
                f"PrecisionLearning found no quantized layer in {type(model).__name__}: put a "
                "Quantize callback before it in Trainer(callbacks=[Quantize(...), "
                "PrecisionLearning(...)])"
            )
        self._model = model
        self.exclude = check_layer_patterns("exclude", self.exclude, [n for n, _ in layers])
        learn = {"weight": self.learn_weights, "activation": self.learn_activations}
        for name, layer in layers:
            self._layers[name] = layer
            if layer.act_quant is not None:
                self._hooks.append(layer.register_forward_pre_hook(self._count_hook(name)))  # type: ignore[attr-defined]
            if _matches(name, self.exclude):
                continue
            for kind, attr in KINDS:
                quant = getattr(layer, attr)
                if quant is not None and learn[kind]:
                    slot = self._wrap(name, kind, layer, attr, quant)
                    if slot is not None:
                        self._slots.append(slot)
        if not self._slots:
            raise ValueError(
                "PrecisionLearning has no bit-width to learn: every layer is excluded or kept "
                f"(exclude={self.exclude}, unsupported={self.unsupported!r})"
            )
        if all(s.active() is not None for s in self._slots):
            self._weight_term()  # an impossible weight budget fails here, before training
        params = {id(s.param): s.param for s in self._slots}
        ignore = [
            n for n, p in pl_module.named_parameters(remove_duplicate=False) if id(p) in params
        ]
        previous = list(getattr(pl_module, "_ddp_params_and_buffers_to_ignore", []))
        pl_module._ddp_params_and_buffers_to_ignore = previous + ignore  # type: ignore[attr-defined]
        for p in params.values():
            p.requires_grad_(False)  # learning epochs switch it on

    def _unsupported(self, name: str, kind: str, scheme: str) -> None:
        if self.unsupported == "error":
            raise ValueError(
                f"layer {name!r}: the {kind} scheme {scheme!r} has a fixed bit-width, it cannot "
                f"be learned; allowed: uniform schemes {', '.join(sorted(BIT_RULES))} (or "
                "PrecisionLearning(exclude=[...]) / unsupported='keep' to keep its bits)"
            )

    def _wrap(
        self, name: str, kind: str, layer: QuantLayer, attr: str, quant: nn.Module
    ) -> BitSlot | None:
        bounds = (self.min_bits, self.max_bits)
        if isinstance(quant, SchemeMixture):
            wrappable = [
                i
                for i, q in enumerate(quant.candidates)
                if isinstance(q, Quantizer) and q.scheme.name in BIT_RULES
            ]
            if not wrappable:
                self._unsupported(name, kind, "/".join(quant.names))
                return None
            start = float(quant.candidates[wrappable[0]].bits)  # type: ignore[union-attr]
            param = nn.Parameter(torch.tensor(start, device=layer.weight.device))  # type: ignore[attr-defined]
            wrappers = []
            for i in wrappable:
                wrapper = LearnedBits(quant.candidates[i], *bounds, bits=param)  # type: ignore[arg-type]
                quant.candidates[i] = wrapper
                wrappers.append(wrapper)
            unwrapped = [n for i, n in enumerate(quant.names) if i not in wrappable]
            return BitSlot(name, kind, param, wrappers, quant, unwrapped)
        if not isinstance(quant, Quantizer):
            raise ValueError(
                f"layer {name!r}: cannot learn the bits of a {type(quant).__name__} {kind} "
                "quantizer; allowed: a Quantizer or a SchemeSearch cell"
            )
        if quant.scheme.name not in BIT_RULES:
            self._unsupported(name, kind, quant.scheme.name)
            return None
        wrapper = LearnedBits(quant, *bounds).to(layer.weight.device)  # type: ignore[attr-defined]
        setattr(layer, attr, wrapper)
        return BitSlot(name, kind, wrapper.bits_float, [wrapper])

    def _count_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if name not in self._act_elements and isinstance(x, Tensor) and x.dim() > 0:
                self._act_elements[name] = x[0].numel() if x.dim() > 1 else x.numel()

        return hook

    # ------------------------------------------------------------------ sizes and budgets
    def slot_bits(self, slot: BitSlot) -> int:
        """Current integer width of a slot's tensor."""
        active = slot.active()
        if active is not None:
            return active.target_bits()
        config = self._layers[slot.layer].config  # kept by Quantize / SchemeSearch
        return config.weight_bits if slot.kind == "weight" else int(config.act_bits or 0)

    def _learned(self, kind: str) -> list[BitSlot]:
        return [s for s in self._slots if s.kind == kind and s.active() is not None]

    def _weight_term(self) -> SizeTerm | None:
        if not self.learn_weights:
            return None
        slots = self._learned("weight")
        learned = {s.layer for s in slots}
        counts = {n: layer.weight.numel() for n, layer in self._layers.items()}  # type: ignore[attr-defined]
        fixed = [n for n in self._layers if n not in learned]
        budget = budget_in_bits(
            "weight", sum(counts.values()), self.weight_budget_bits, self.weight_budget_bytes
        )
        assert budget is not None
        return SizeTerm(
            "weight",
            [s.key for s in slots],
            [counts[s.layer] for s in slots],
            [s.active().min_bits for s in slots],  # type: ignore[union-attr]
            float(sum(counts[n] * self._layers[n].config.weight_bits for n in fixed)),
            budget,
            sum(counts[n] for n in fixed),
        )

    def _memory_term(self) -> SizeTerm | None:
        if not self.learn_activations:
            return None
        with_act = [n for n, layer in self._layers.items() if layer.act_quant is not None]
        missing = [n for n in with_act if n not in self._act_elements]
        if missing:
            raise RuntimeError(
                f"activation sizes unknown for {missing[:3]}: no forward pass has run yet"
            )
        slots = self._learned("activation")
        learned = {s.layer for s in slots}
        fixed = [n for n in with_act if n not in learned]
        budget = budget_in_bits("memory", 1, None, self.memory_budget_bytes)
        assert budget is not None
        return SizeTerm(
            "memory",
            [s.key for s in slots],
            [self._act_elements[s.layer] for s in slots],
            [s.active().min_bits for s in slots],  # type: ignore[union-attr]
            float(sum(self._act_elements[n] * self._layers[n].act_quant.bits for n in fixed)),  # type: ignore[union-attr]
            budget,
            sum(self._act_elements[n] for n in fixed),
        )

    def terms(self) -> list[SizeTerm]:
        """The budget terms in force (weight, memory)."""
        return [t for t in (self._weight_term(), self._memory_term()) if t is not None]

    def model_size_bytes(self) -> float:
        """Weight storage: sum over quantized layers of weights x bits, in bytes."""
        total = 0
        for name, layer in self._layers.items():
            bits = layer.config.weight_bits
            for slot in self._slots:
                if slot.layer == name and slot.kind == "weight":
                    bits = self.slot_bits(slot)
            total += layer.weight.numel() * bits  # type: ignore[attr-defined]
        return total / 8

    def precision_loss(self) -> Tensor:
        """``L_prec``: the sum of the hinges, differentiable in the learned bits."""
        loss = torch.zeros(())
        for term in self.terms():
            kind = "weight" if term.what == "weight" else "activation"
            slots = {s.key: s for s in self._learned(kind)}
            bits = torch.stack([slots[k].active().rounded_bits() for k in term.names])  # type: ignore[union-attr]
            loss = loss.to(bits.device) + term.loss(bits.float())
        return loss

    def gamma_at(self, epoch: int) -> float:
        """``gamma`` of ``epoch``: 0 outside learning and in warm-up, then a linear ramp."""
        if not self.start_epoch <= epoch < self.end_epoch:
            return 0.0
        k = epoch - self.start_epoch - self.warmup_epochs
        if k < 0:
            return 0.0
        return self.gamma * min(1.0, (k + 1) / self.ramp_epochs)

    @property
    def frozen(self) -> bool:
        return bool(self._slots) and all(bool(w.frozen) for s in self._slots for w in s.wrappers)

    def learning(self, epoch: int) -> bool:
        return self.start_epoch <= epoch < self.end_epoch and not self.frozen

    # ------------------------------------------------------------------ training
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = list({id(s.param): s.param for s in self._slots}.values())
        ids = {id(p) for p in params}
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in ids]
        self.optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=0.0)
        if self._pending_state is not None:
            self.optimizer.load_state_dict(self._pending_state)
            self._pending_state = None
        self._sync_configs()
        if self._restored_policy and self.policy is not None:
            # Resumed after the freeze: the policy file belongs in this run's folder too.
            self._restored_policy = False
            self.policy_path = save_policy(
                trainer, self.policy, POLICY_FILE, "PrecisionLearning: learned policy (restored)"
            )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if not self.frozen and epoch >= self.end_epoch:
            self.freeze(trainer)  # resumed from a checkpoint taken before the freeze
        learning = self.learning(epoch)
        if learning:
            self._check_cells()
        for slot in self._slots:
            slot.param.requires_grad_(learning)

    def _check_cells(self) -> None:
        for slot in self._slots:
            if slot.cell is None:
                continue
            if not slot.cell.fixed:
                raise ValueError(
                    f"layer {slot.layer!r}: its {slot.kind} scheme is still being searched; "
                    "PrecisionLearning's start_epoch must be at or after SchemeSearch's end_epoch"
                )
            if slot.active() is None:
                self._unsupported(slot.layer, slot.kind, slot.chosen_scheme())

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if optimizer is trainer.optimizers[0] and self.learning(trainer.current_epoch):
            self.bits_step(trainer, self.gamma_at(trainer.current_epoch))

    def bits_step(self, trainer: L.Trainer, gamma: float) -> None:
        """One Adam step on the bits: task gradient (rank mean) + ``gamma`` dL_prec/db."""
        assert self.optimizer is not None
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        task = torch.stack([torch.zeros_like(p) if p.grad is None else p.grad for p in params])
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            task = task / scaler.get_scale()
        task = trainer.strategy.reduce(task, reduce_op="mean")
        with torch.enable_grad():
            loss = self.precision_loss()
            prec = (
                torch.autograd.grad(loss, params, allow_unused=True)
                if loss.requires_grad
                else [None] * len(params)
            )
        for p, t, g in zip(params, task, prec, strict=True):
            p.grad = t.clone() if g is None or gamma == 0 else t + gamma * g
        if all(torch.isfinite(p.grad).all() for p in params):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():  # projected: stay within the widest wrapper's range
            for slot in self._slots:
                lo = min(w.min_bits for w in slot.wrappers)
                hi = max(w.max_bits for w in slot.wrappers)
                slot.param.clamp_(lo, hi)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch < self.start_epoch:
            return
        learning = self.learning(epoch)
        if learning:
            self._sync_configs()
            if epoch == self.end_epoch - 1:
                self.freeze(trainer)
        self.log_bits(trainer, pl_module, epoch, learning)

    # ------------------------------------------------------------------ freezing
    @torch.no_grad()
    def freeze(self, trainer: L.Trainer | None = None) -> QuantPolicy:
        """Freeze the bits, repair them into every budget, update configs, write the policy."""
        bits = {s.key: self.slot_bits(s) for s in self._slots}
        learned = {s.key: float(s.param) for s in self._slots}
        highest = {s.key: s.active().max_bits for s in self._slots if s.active() is not None}  # type: ignore[union-attr]
        for term in self.terms():
            before = {k: bits[k] for k in term.names}
            after = term.repair(before)
            if self.fill_budget:
                after = term.fill(after, highest, learned)
            changed = {k: (before[k], after[k]) for k in after if after[k] != before[k]}
            if changed:
                rank_zero_info(f"PrecisionLearning: {term.what} budget repair/fill {changed}")
            bits.update(after)
        for slot in self._slots:
            slot.param.fill_(float(bits[slot.key]))
            slot.param.requires_grad_(False)
            for wrapper in slot.wrappers:
                wrapper.follow_bits()
                wrapper.frozen.fill_(True)
        self._sync_configs()
        assert self._model is not None
        self.policy = QuantPolicy.explicit(layer_configs(self._model))
        for term in self.terms():
            size = term.size_of({k: bits[k] for k in term.names})
            assert size <= term.budget_bits, (term.what, size, term.budget_bits)
        if trainer is not None:
            self.policy_path = save_policy(
                trainer, self.policy, POLICY_FILE, "PrecisionLearning: learned policy"
            )
        return self.policy

    def _sync_configs(self) -> None:
        """Set each layer's ``config`` bits (and act scheme) to the active widths."""
        for slot in self._slots:
            if slot.active() is None:
                continue
            layer = self._layers[slot.layer]
            bits = self.slot_bits(slot)
            if slot.kind == "weight":
                changes: dict[str, Any] = {"weight_bits": bits}
            else:
                scheme = slot.active().scheme.name  # type: ignore[union-attr]
                changes = {"act_bits": bits, "act_scheme": scheme}
            layer.config = layer.config.replace(**changes)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.frozen and trainer.current_epoch > self.start_epoch:
            rank_zero_warn(
                f"training stopped before end_epoch={self.end_epoch}: the bits are not frozen "
                "(resume from a checkpoint, or call PrecisionLearning.freeze())"
            )

    # ------------------------------------------------------------------ logging
    def current_bits(self) -> dict[str, int]:
        """``{"<layer>.<w|a>": bits}`` of every learned tensor."""
        return {s.key: self.slot_bits(s) for s in self._slots}

    def log_bits(
        self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int, learning: bool
    ) -> None:
        """Metrics every epoch; table and heatmap of the learning epochs, on rank 0."""
        bits = self.current_bits()
        metrics = {f"autoq/bits/{k}": float(v) for k, v in bits.items()}
        metrics["autoq/model_size_bytes"] = self.model_size_bytes()
        metrics["autoq/gamma"] = self.gamma_at(epoch)
        if learning or self.frozen:
            metrics["autoq/precision_loss"] = float(self.precision_loss().detach())
        if self.learn_activations and self._act_elements:
            term = self._memory_term()
            assert term is not None
            metrics["autoq/memory_bytes"] = term.size_of(bits) / 8
        pl_module.log_dict(metrics, on_step=False, on_epoch=True)
        folder = run_folder(trainer)  # on every rank: Trainer.log_dir broadcasts
        if not learning or not trainer.is_global_zero:
            return
        size = metrics["autoq/model_size_bytes"]
        self._history.extend([epoch, key, b, size] for key, b in bits.items())
        if trainer.loggers:
            log_table(
                trainer.loggers,
                "autoq/precision_bits",
                ["epoch", "tensor", "bits", "model_bytes"],
                self._history,
            )
        self.plot_path = save_bits_plot(self._history, folder / PLOT_FILE)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("autoq/precision_bits", images=[str(self.plot_path)])

    # ------------------------------------------------------------------ state
    def _signature(self) -> dict[str, Any]:
        return {
            "weight_budget_bits": self.weight_budget_bits,
            "weight_budget_bytes": self.weight_budget_bytes,
            "memory_budget_bytes": self.memory_budget_bytes,
            "tensors": [s.key for s in self._slots],
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "history": self._history,
            "activation_elements": dict(self._act_elements),
            "signature": self._signature(),
            "policy": None if self.policy is None else self.policy.to_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("signature")
        if saved is not None and saved != self._signature():
            raise ValueError(
                f"the checkpoint learned bits with {saved}; this PrecisionLearning has "
                f"{self._signature()}"
            )
        self._pending_state = state_dict.get("optimizer")
        self._history = [list(r) for r in state_dict.get("history", [])]
        self._act_elements.update(state_dict.get("activation_elements", {}))
        self._sync_configs()
        policy = state_dict.get("policy")
        if policy is not None:  # frozen before the checkpoint: on_fit_start writes it again
            self.policy = QuantPolicy.from_dict(policy)
            self._restored_policy = True


def save_bits_plot(history: Sequence[Sequence[object]], path: Path) -> Path:
    """A heatmap PNG of the bits: one row per tensor, one column per epoch (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = sorted({int(r[0]) for r in history})  # type: ignore[call-overload]
    tensors = list(dict.fromkeys(str(r[1]) for r in history))
    data = torch.full((len(tensors), len(epochs)), float("nan"))
    for epoch, key, bits, *_ in history:
        data[tensors.index(str(key)), epochs.index(int(epoch))] = float(bits)  # type: ignore[call-overload,arg-type]
    fig, ax = plt.subplots(figsize=(2.5 + 0.5 * len(epochs), 1.5 + 0.25 * len(tensors)))
    image = ax.imshow(data.numpy(), vmin=1, vmax=MAX_BITS, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(epochs)), labels=[str(e) for e in epochs])
    ax.set_yticks(range(len(tensors)), labels=tensors, fontsize=7)
    if len(epochs) * len(tensors) <= 600:
        for i in range(len(tensors)):
            for j in range(len(epochs)):
                if data[i, j] == data[i, j]:
                    ax.text(j, i, f"{int(data[i, j])}", ha="center", va="center", fontsize=6)
    ax.set_xlabel("epoch")
    ax.set_title("learned bits per tensor")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


__all__ = ["PrecisionLearning", "save_bits_plot"]
