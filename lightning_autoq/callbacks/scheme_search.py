"""The SchemeSearch callback: AutoQNN's differentiable scheme search (QSS) during training.

AutoQNN (https://arxiv.org/abs/2304.03782) searches each layer's quantizing scheme with DNAS
(Wu et al., https://arxiv.org/abs/1812.00090): every quantized tensor becomes a
:class:`~lightning_autoq.quant.mixture.SchemeMixture` of candidate schemes, and training
alternates (first-order) one step on the mixing logits ``theta`` on a held-out batch with the
normal weight step. At the end of the search each cell is fixed on its argmax scheme.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_autoq.callbacks.arguments import (
    check_epoch,
    run_folder,
    save_policy,
    target_module,
)
from lightning_autoq.convert import QuantPolicy, layer_configs, quantized_layers
from lightning_autoq.nn import QuantLayer
from lightning_autoq.quant import AUTOQNN_SCHEMES, Quantizer, available_schemes, scheme_class
from lightning_autoq.quant.mixture import (
    SAMPLINGS,
    Sampling,
    SchemeMixture,
    candidate_bits,
    collapse,
)
from lightning_autoq.utils.logging import log_table

Mode = Literal["layer", "model"]
MODES: tuple[str, ...] = ("layer", "model")
TAU_START, TAU_END = 5.0, 0.5
POLICY_FILE = "scheme_policy.yaml"
HEATMAP_FILE = "scheme_distribution.png"
LossFn = Callable[[L.LightningModule, Any], Tensor]


def cross_entropy_loss(pl_module: L.LightningModule, batch: Any) -> Tensor:
    """Default search loss: cross-entropy of ``pl_module(x)`` on an ``(x, y)`` batch."""
    x, y = batch[0], batch[1]
    return F.cross_entropy(pl_module(x), y)


def _scheme_options(q: Quantizer) -> dict[str, Any]:
    """The options of ``q``'s scheme that differ from their defaults (for ``LayerConfig``)."""
    return {
        f.name: getattr(q.scheme, f.name)
        for f in dataclasses.fields(q.scheme)
        if f.name != "bits" and getattr(q.scheme, f.name) != f.default
    }


def _check_schemes(kind: str, names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(names)
    if not names:
        raise ValueError(f"{kind}_candidates is empty; available: {', '.join(available_schemes())}")
    for name in names:
        scheme_class(name)  # raises, listing the available schemes
    if len(set(names)) != len(names):
        raise ValueError(f"{kind}_candidates={list(names)} lists a scheme twice")
    return names


class SchemeSearch(L.Callback):
    """Search every quantized layer's scheme (AutoQNN's QSS) over an epoch range.

    ``setup`` replaces each :class:`~lightning_autoq.nn.QuantLayer`'s ``weight_quant`` and
    ``act_quant`` by a :class:`~lightning_autoq.quant.mixture.SchemeMixture` of the candidate
    schemes (each at the layer's bits clamped into the scheme's bit range; a scheme whose
    smallest width exceeds the layer's bits is left out). The module structure is the same
    before, during and after the search, so checkpoints from any point load strictly.

    Each training step of epochs ``[start_epoch, end_epoch)`` first takes one ``theta`` step
    (its own Adam optimizer) on a batch of the held-out search split (every ``theta_every``-th
    batch), then Lightning's normal weight step (first-order DARTS alternation). By default the
    weight step runs one Gumbel-sampled candidate per cell (``weight_sampling="hard"``, GDAS,
    https://arxiv.org/abs/1910.04465: the cost of a plain QAT step) and the ``theta`` step
    mixes two candidates per cell drawn with probabilities ``softmax(theta)``
    (``theta_sampling="pair"``, ProxylessNAS, https://arxiv.org/abs/1812.00332: a pairwise
    comparison at the cost of two quantizers); ``"soft"`` mixes every candidate (compares all,
    costs all) and ``"hard"`` runs one sampled candidate with a straight-through gradient.
    Every rank draws the same samples (the noise is seeded by step and phase). ``theta``
    requires a gradient only inside ``theta`` steps, so the weight loss never gives it one.
    The ``theta`` forward runs in train mode and every buffer (BatchNorm running statistics,
    quantizers' running ranges) is saved before and restored after it, so search batches
    never change them; only ``theta`` gets a gradient, averaged over ranks under DDP. Before
    ``start_epoch`` the weights train under the Gumbel-sampled candidates at the first
    temperature with ``theta`` frozen (a warm-up); in evaluation hard and pair cells run
    their argmax candidate and soft cells mix with the noise-free ``softmax(theta / tau)``.
    At the end of the range each cell is fixed on its argmax (it then computes exactly its
    chosen quantizer), the layers' ``config`` is set to the chosen schemes and the policy is
    written to ``scheme_policy.yaml``; training goes on with the fixed policy.
    :func:`~lightning_autoq.quant.mixture.collapse` swaps the fixed cells for plain quantizers
    for export.

    Each search epoch the per-layer distributions are logged as a table, drawn as a heatmap
    (``scheme_distribution.png`` in the log folder, and an image with W&B).

    Args:
        start_epoch: first search epoch (>= 0).
        end_epoch: the search ends after epoch ``end_epoch - 1`` (> ``start_epoch``).
        mode: ``"layer"`` (logits per tensor) or ``"model"`` (one logit vector for all
            weights and one for all activations, tied).
        weight_candidates: scheme names for the weights (default: AutoQNN's eight).
        act_candidates: scheme names for the input activations (default: AutoQNN's eight).
        temperature: a float, or ``epoch -> tau``; None anneals 5 -> 0.5 exponentially per
            epoch over the search.
        lr: learning rate of the ``theta`` Adam optimizer.
        weight_decay: its weight decay.
        search_dataloader: an iterable of held-out batches or a callable returning one; None
            uses the datamodule's ``search_dataloader()``.
        loss_fn: ``(pl_module, batch) -> loss`` of the ``theta`` step (default cross-entropy).
        module_name: the submodule to search (as in ``Quantize``); None: the whole module.
        seed: seed of the Gumbel noise (identical on every rank).
        weight_sampling: the weight step's forward: ``"hard"`` (one sampled candidate per
            cell) or ``"soft"`` (the full mixture, costs every candidate).
        theta_sampling: the ``theta`` step's forward, ``"pair"``, ``"soft"`` or ``"hard"``.
        theta_every: take a ``theta`` step on every ``theta_every``-th training batch.

    Example:
        >>> from lightning_autoq.callbacks import Quantize
        >>> callbacks = [Quantize(), SchemeSearch(0, 10, mode="layer")]
        >>> trainer = L.Trainer(callbacks=callbacks, max_epochs=20)  # doctest: +SKIP
    """

    def __init__(
        self,
        start_epoch: int = 0,
        end_epoch: int = 10,
        mode: Mode = "layer",
        weight_candidates: Sequence[str] = AUTOQNN_SCHEMES,
        act_candidates: Sequence[str] = AUTOQNN_SCHEMES,
        temperature: float | Callable[[int], float] | None = None,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        search_dataloader: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
        loss_fn: LossFn = cross_entropy_loss,
        module_name: str | None = None,
        seed: int = 0,
        weight_sampling: Sampling = "hard",
        theta_sampling: Sampling = "pair",
        theta_every: int = 1,
    ) -> None:
        for name, value in (
            ("weight_sampling", weight_sampling),
            ("theta_sampling", theta_sampling),
        ):
            if value not in SAMPLINGS:
                raise ValueError(
                    f"{name}={value!r} is not allowed; allowed: {', '.join(SAMPLINGS)}"
                )
        if isinstance(theta_every, bool) or not isinstance(theta_every, int) or theta_every < 1:
            raise ValueError(f"theta_every={theta_every!r} is not allowed; allowed: int >= 1")
        check_epoch("start_epoch", start_epoch, 0)
        if (
            isinstance(end_epoch, bool)
            or not isinstance(end_epoch, int)
            or end_epoch <= start_epoch
        ):
            raise ValueError(
                f"end_epoch={end_epoch!r} is not allowed; allowed: int > start_epoch "
                f"({start_epoch})"
            )
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not allowed; allowed: {', '.join(MODES)}")
        if isinstance(temperature, (int, float)) and not temperature > 0:
            raise ValueError(f"temperature={temperature} is not allowed; allowed: > 0")
        if not lr > 0 or weight_decay < 0:
            raise ValueError(f"lr={lr} must be > 0 and weight_decay={weight_decay} >= 0")
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch
        self.mode = mode
        self.candidates = {
            "weight": _check_schemes("weight", weight_candidates),
            "activation": _check_schemes("act", act_candidates),
        }
        self.temperature = temperature
        self.lr = lr
        self.weight_decay = weight_decay
        self.search_loader = search_dataloader
        self.loss_fn = loss_fn
        self.module_name = module_name
        self.seed = seed
        self.weight_sampling: Sampling = weight_sampling
        self.theta_sampling: Sampling = theta_sampling
        self.theta_every = theta_every
        self.optimizer: torch.optim.Optimizer | None = None
        self.policy: QuantPolicy | None = None
        self.policy_path: Path | None = None
        self.heatmap_path: Path | None = None
        self._model: nn.Module | None = None
        self._layers: dict[str, QuantLayer] = {}
        self._cells: list[tuple[str, str, SchemeMixture]] = []  # (layer, kind, cell)
        self._pending_state: dict[str, Any] | None = None
        self._restored_policy = False
        self._history: list[list[object]] = []
        self._generator: torch.Generator | None = None  # made in setup (ddp_spawn pickles us)
        self._iterator: Iterator[Any] | None = None
        self._loader: Iterable[Any] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            module_name=self.module_name, start_epoch=self.start_epoch, end_epoch=self.end_epoch
        )

    # ------------------------------------------------------------------ structure
    def target(self, pl_module: L.LightningModule) -> nn.Module:
        """The module this callback acts on."""
        return target_module(pl_module, self.module_name)

    def thetas(self) -> list[nn.Parameter]:
        """The distinct logit parameters (shared ones once)."""
        seen: dict[int, nn.Parameter] = {}
        for _, _, cell in self._cells:
            seen.setdefault(id(cell.theta), cell.theta)  # type: ignore[arg-type]
        return list(seen.values())

    def build_candidates(self, layer: QuantLayer, kind: str) -> list[Quantizer]:
        """The candidate quantizers of one tensor, built as ``convert`` would build them."""
        config = layer.config
        common: dict[str, Any] = {"backward": config.backward, "grad_ratio": config.grad_ratio}
        if kind == "weight":
            bits = config.weight_bits
            own_scheme = config.scheme
            weight: Tensor = layer.weight  # type: ignore[attr-defined]
            channels = weight.shape[layer.channel_axis] if config.granularity == "channel" else None
            common.update(kind="weight", channels=channels, channel_axis=layer.channel_axis)
        else:
            assert config.act_bits is not None
            bits = config.act_bits
            own_scheme = config.act_scheme or config.scheme
            common.update(kind="activation", signed=config.act_signed)
        out = []
        for name in self.candidates[kind]:
            b = candidate_bits(name, bits)
            if b is not None:
                # The layer's scheme options (e.g. int_se candidates) go to its own scheme.
                options = config.scheme_options if name == own_scheme == config.scheme else {}
                out.append(Quantizer(name, b, **common, **options))
        return out

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        model = self.target(pl_module)
        if self._layers:
            return  # set up by an earlier stage (test after fit): the cells are in place
        layers = quantized_layers(model)
        if not layers:
            raise ValueError(
                f"SchemeSearch found no quantized layer in {type(model).__name__}: quantize "
                "the model first, e.g. put a Quantize callback before SchemeSearch in "
                "Trainer(callbacks=[Quantize(...), SchemeSearch(...)])"
            )
        self._model = model
        self._generator = torch.Generator()
        shared: dict[str, nn.Parameter] = {}
        if self.mode == "model":
            shared = {k: nn.Parameter(torch.zeros(len(v))) for k, v in self.candidates.items()}
        tau = self.tau(self.start_epoch)
        for name, layer in layers:
            self._layers[name] = layer
            for kind, attr in (("weight", "weight_quant"), ("activation", "act_quant")):
                if getattr(layer, attr) is None:
                    continue
                cands = self.build_candidates(layer, kind)
                if not cands:
                    bits = layer.config.weight_bits if kind == "weight" else layer.config.act_bits
                    raise ValueError(
                        f"layer {name!r}: no {kind} candidate fits {bits} bits; candidates "
                        f"{list(self.candidates[kind])} need at least "
                        f"{min(scheme_class(s).bit_range[0] for s in self.candidates[kind])}"
                    )
                slots = [self.candidates[kind].index(q.scheme.name) for q in cands]
                theta = shared.get(kind)
                cell = SchemeMixture(
                    cands,
                    theta,
                    slots if theta is not None else None,
                    tau,
                    sampling=self.weight_sampling,
                )
                cell.to(layer.weight.device)  # type: ignore[attr-defined]
                cell.generator = self._generator
                setattr(layer, attr, cell)
                self._cells.append((name, kind, cell))
        # DDP must neither average theta's gradient of the weight loss nor expect one once
        # the cells are fixed: theta is stepped here, its gradient averaged by hand.
        ignore = [
            n for n, p in pl_module.named_parameters(remove_duplicate=False) if self._is_theta(p)
        ]
        previous = list(getattr(pl_module, "_ddp_params_and_buffers_to_ignore", []))
        pl_module._ddp_params_and_buffers_to_ignore = previous + ignore  # type: ignore[attr-defined]

    def _is_theta(self, p: Tensor) -> bool:
        return any(p is t for t in self.thetas())

    # ------------------------------------------------------------------ schedule
    def tau(self, epoch: int) -> float:
        """Temperature of ``epoch``: the schedule, clamped to the search range."""
        epoch = min(max(epoch, self.start_epoch), self.end_epoch - 1)
        if callable(self.temperature):
            value = float(self.temperature(epoch))
        elif self.temperature is not None:
            value = float(self.temperature)
        else:
            span = max(self.end_epoch - self.start_epoch - 1, 1)
            progress = (epoch - self.start_epoch) / span
            value = TAU_START * (TAU_END / TAU_START) ** progress
        if not value > 0 or not math.isfinite(value):
            raise ValueError(f"temperature({epoch}) = {value} is not allowed; allowed: > 0")
        return value

    def searching(self, epoch: int) -> bool:
        return self.start_epoch <= epoch < self.end_epoch and not self.fixed

    @property
    def fixed(self) -> bool:
        return bool(self._cells) and all(cell.fixed for _, _, cell in self._cells)

    # ------------------------------------------------------------------ optimizers
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        thetas = self.thetas()
        ids = {id(t) for t in thetas}
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in ids]
        self.optimizer = torch.optim.Adam(thetas, lr=self.lr, weight_decay=self.weight_decay)
        for theta in thetas:  # trainable only inside theta steps
            theta.requires_grad_(False)
        if self._pending_state is not None:
            self.optimizer.load_state_dict(self._pending_state)
            self._pending_state = None
        self._sync_configs()
        if self._restored_policy and self.policy is not None:
            # Resumed after the fix: the policy file belongs in this run's folder too.
            self._restored_policy = False
            self.policy_path = save_policy(
                trainer, self.policy, POLICY_FILE, "SchemeSearch: fixed policy (restored)"
            )
        if self._loader is None and not self.fixed:
            self._loader = self._resolve_loader(trainer)

    def _resolve_loader(self, trainer: L.Trainer) -> Iterable[Any]:
        source = self.search_loader
        if source is None:
            dm = trainer.datamodule
            method = getattr(dm, "search_dataloader", None)
            if not callable(method):
                raise ValueError(
                    "SchemeSearch needs held-out batches for the theta steps: pass "
                    "SchemeSearch(search_dataloader=...) (a DataLoader or a callable returning "
                    "one), or use a datamodule with a search_dataloader() method (e.g. "
                    "FashionMNISTDataModule(search_size=...)); training batches are not reused"
                )
            loader = method()
        else:
            loader = source() if callable(source) and not isinstance(source, Iterable) else source
        if hasattr(loader, "__len__") and len(loader) == 0:  # type: ignore[arg-type]
            raise ValueError("the search dataloader is empty; allowed: one with at least 1 batch")
        return loader

    def _next_search_batch(self, trainer: L.Trainer) -> Any:
        """The next batch of this rank's share (every world_size-th batch), cycling."""
        assert self._loader is not None
        for _ in range(2):
            if self._iterator is None:
                self._iterator = self._sharded(trainer)
            try:
                return next(self._iterator)
            except StopIteration:
                self._iterator = None
        raise ValueError(
            f"the search dataloader gave no batch for rank {trainer.global_rank} of "
            f"{trainer.world_size}"
        )

    def _sharded(self, trainer: L.Trainer) -> Iterator[Any]:
        assert self._loader is not None
        for i, batch in enumerate(self._loader):
            if i % trainer.world_size == trainer.global_rank:
                yield batch

    # ------------------------------------------------------------------ search steps
    def _set_tau(self, tau: float) -> None:
        for _, _, cell in self._cells:
            cell.tau = tau

    def _seed_noise(self, trainer: L.Trainer, phase: int) -> None:
        assert self._generator is not None
        self._generator.manual_seed(self.seed * 1_000_003 + 2 * trainer.global_step + phase)

    def _begin_phase(self, trainer: L.Trainer, phase: int, sampling: Sampling) -> None:
        """Seed the noise of ``phase`` (0: theta, 1: weights) and set every cell's sampling.

        Hard and pair cells draw their sample now, in a fixed order, from one host copy of each
        ``theta`` (one device sync per logit vector instead of one per cell).
        """
        self._seed_noise(trainer, phase)
        host: dict[int, Tensor] = {}
        for _, _, cell in self._cells:
            cell.sampling = sampling
            cell.clear_sample()
            if sampling != "soft" and not cell.fixed:
                key = id(cell.theta)
                if key not in host:
                    host[key] = cell.theta.detach().float().cpu()
                cell.resample(host[key][cell.slot_list])

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._cells and not self.fixed and trainer.current_epoch >= self.end_epoch:
            # Resumed from a checkpoint saved after the last search step but before the fix
            # (e.g. a ModelCheckpoint monitoring a validation metric): fix now, as it would have.
            self.fix(trainer)
        self._set_tau(self.tau(trainer.current_epoch))
        self._iterator = None  # a fresh pass over the search data each epoch (exact resume)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.fixed:
            return
        if self.searching(trainer.current_epoch) and batch_idx % self.theta_every == 0:
            self._begin_phase(trainer, 0, self.theta_sampling)
            self.theta_step(trainer, pl_module, self._next_search_batch(trainer))
        self._begin_phase(trainer, 1, self.weight_sampling)  # the weight step's noise

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        for _, _, cell in self._cells:
            cell.clear_sample()

    def theta_step(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any) -> Tensor:
        """One ``theta`` step on a held-out batch; returns the search loss."""
        assert self.optimizer is not None
        thetas = self.thetas()
        batch = move_data_to_device(batch, pl_module.device)
        buffers = [b.detach().clone() for b in pl_module.buffers()]
        try:
            for theta in thetas:
                theta.requires_grad_(True)
            with torch.enable_grad():
                loss = self.loss_fn(pl_module, batch)
                grads = torch.autograd.grad(loss, thetas, allow_unused=True)
        finally:
            for theta in thetas:
                theta.requires_grad_(False)
            with torch.no_grad():
                for b, saved in zip(pl_module.buffers(), buffers, strict=True):
                    b.copy_(saved)
        self.optimizer.zero_grad(set_to_none=True)
        for theta, grad in zip(thetas, grads, strict=True):
            grad = torch.zeros_like(theta) if grad is None else grad
            theta.grad = trainer.strategy.reduce(grad, reduce_op="mean")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if not self.searching(epoch):
            return
        self.log_distributions(trainer, epoch)
        if epoch == self.end_epoch - 1:
            self.fix(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._cells and not self.fixed and trainer.current_epoch > self.start_epoch:
            rank_zero_warn(
                f"training stopped before end_epoch={self.end_epoch}: the scheme search is not "
                "finished (resume from a checkpoint, or call SchemeSearch.fix() to fix the "
                "current argmax)"
            )

    # ------------------------------------------------------------------ fixing
    def fix(self, trainer: L.Trainer | None = None) -> QuantPolicy:
        """Fix every cell on its argmax, update the layers' configs, write the policy."""
        for _, _, cell in self._cells:
            if not cell.fixed:
                cell.fix()
        self._sync_configs()
        assert self._model is not None
        self.policy = QuantPolicy.explicit(layer_configs(self._model))
        if trainer is not None:
            self.policy_path = save_policy(
                trainer, self.policy, POLICY_FILE, "SchemeSearch: fixed policy"
            )
        return self.policy

    def _sync_configs(self) -> None:
        """Set each layer's ``config`` to its fixed cells' schemes and bits."""
        for name, layer in self._layers.items():
            changes: dict[str, Any] = {}
            for lname, kind, cell in self._cells:
                if lname != name or not cell.fixed:
                    continue
                q = cell.candidate
                if kind == "weight":
                    changes.update(
                        scheme=q.scheme.name,
                        weight_bits=q.bits,
                        scheme_options=_scheme_options(q),
                    )
                else:
                    changes.update(act_scheme=q.scheme.name, act_bits=q.bits)
            if changes:
                if (
                    "scheme" in changes
                    and "act_scheme" not in changes
                    and layer.act_quant is not None
                ):
                    changes["act_scheme"] = layer.config.act_scheme or layer.config.scheme
                layer.config = layer.config.replace(**changes)

    # ------------------------------------------------------------------ logging
    def chosen_schemes(self) -> dict[str, str]:
        """``{"<layer>.<weight|activation>": scheme}`` of every fixed cell."""
        return {
            f"{name}.{kind}": cell.candidate.scheme.name
            for name, kind, cell in self._cells
            if cell.fixed
        }

    def distributions(self) -> list[tuple[str, str, dict[str, float]]]:
        """``(layer, kind, {scheme: probability})`` of every cell (noise-free softmax)."""
        return [
            (name, kind, dict(zip(cell.names, cell.probabilities().tolist(), strict=True)))
            for name, kind, cell in self._cells
        ]

    def log_distributions(self, trainer: L.Trainer, epoch: int) -> None:
        """Table (every epoch so far) and heatmap of the distributions, on rank 0."""
        folder = run_folder(trainer)  # on every rank: Trainer.log_dir broadcasts
        if not trainer.is_global_zero:
            return
        schemes = list(dict.fromkeys([*self.candidates["weight"], *self.candidates["activation"]]))
        rows = self.distributions()
        for name, kind, probs in rows:
            best = max(probs, key=probs.__getitem__)
            cells = [round(probs[s], 4) if s in probs else "" for s in schemes]
            self._history.append([epoch, name, kind, *cells, best])
        columns = ["epoch", "layer", "kind", *schemes, "argmax"]
        if trainer.loggers:
            log_table(trainer.loggers, "autoq/scheme_distribution", columns, self._history)
        self.heatmap_path = folder / HEATMAP_FILE
        save_heatmap(rows, schemes, self.heatmap_path, title=f"scheme distribution, epoch {epoch}")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("autoq/scheme_distribution", images=[str(self.heatmap_path)])

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "history": self._history,
            "candidates": {k: list(v) for k, v in self.candidates.items()},
            "mode": self.mode,
            "policy": None if self.policy is None else self.policy.to_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = (state_dict.get("mode"), state_dict.get("candidates"))
        mine = (self.mode, {k: list(v) for k, v in self.candidates.items()})
        if saved != mine:
            raise ValueError(
                f"the checkpoint was searched with mode/candidates {saved}; this SchemeSearch "
                f"has {mine}"
            )
        self._pending_state = state_dict.get("optimizer")
        self._history = list(state_dict.get("history", []))
        self._sync_configs()  # model state (``chosen``) is restored before callback state
        policy = state_dict.get("policy")
        if policy is not None:  # fixed before the checkpoint: on_fit_start writes it again
            self.policy = QuantPolicy.from_dict(policy)
            self._restored_policy = True


def save_heatmap(
    rows: Sequence[tuple[str, str, dict[str, float]]],
    schemes: Sequence[str],
    path: Path,
    title: str = "scheme distribution",
) -> Path:
    """A heatmap PNG: one row per (layer, tensor), one column per scheme (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    data = torch.full((len(rows), len(schemes)), float("nan"))
    for i, (_, _, probs) in enumerate(rows):
        for j, s in enumerate(schemes):
            if s in probs:
                data[i, j] = probs[s]
    fig, ax = plt.subplots(figsize=(2.0 + 0.7 * len(schemes), 2.5 + 0.28 * len(rows)))
    image = ax.imshow(data.numpy(), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(schemes)), labels=list(schemes), rotation=45, ha="right")
    labels = [f"{name or '<root>'} {'w' if kind == 'weight' else 'a'}" for name, kind, _ in rows]
    ax.set_yticks(range(len(rows)), labels=labels, fontsize=7)
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


__all__ = ["SchemeSearch", "collapse", "cross_entropy_loss", "save_heatmap"]
