"""PrecisionLearning inside a real Trainer: budgets, STE gradient, freeze and repair, resume."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from lightning_autoq import LayerConfig, QuantPolicy, convert
from lightning_autoq.callbacks import Quantize
from lightning_autoq.callbacks.precision_learning import PrecisionLearning
from lightning_autoq.callbacks.scheme_search import SchemeSearch
from lightning_autoq.convert import weight_size_bits
from lightning_autoq.quant.learned_bits import LearnedBits, strip_learned_bits
from lightning_autoq.quant.mixture import collapse
from tests.callbacks.tiny import TinyNet, tiny_loader

POLICY6 = QuantPolicy(LayerConfig("clip", weight_bits=6, act_bits=6), first_last_bits=None)
N_WEIGHTS = 36 + 144 + 192  # TinyNet's three layers


def _trainer(tmp_path: Path, epochs: int, callbacks: list, **kwargs) -> L.Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    return L.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kwargs,
    )


def _fit(tmp_path: Path, qpl: PrecisionLearning, epochs: int, policy=POLICY6, **kw) -> TinyNet:
    L.seed_everything(0)
    module = TinyNet()
    _trainer(tmp_path, epochs, [Quantize(policy), qpl], **kw).fit(module, tiny_loader())
    return module


def _bits(module: nn.Module) -> dict[str, float]:
    return {n: float(p.detach()) for n, p in module.named_parameters() if n.endswith("bits_float")}


def test_precision_loss_lowers_bits_when_over_budget(tmp_path: Path) -> None:
    qpl = PrecisionLearning(0, 3, weight_budget_bits=3.0, gamma=50.0, lr=0.1)
    module = _fit(tmp_path, qpl, 3)
    assert all(b < 6 for b in qpl.current_bits().values())
    assert weight_size_bits(module) <= 3.0 * N_WEIGHTS


def test_precision_loss_leaves_bits_alone_inside_the_budget(tmp_path: Path) -> None:
    # Inside the budget the hinge is flat: any gamma gives the run of gamma = 0 exactly.
    runs = []
    for gamma in (0.0, 100.0):
        qpl = PrecisionLearning(0, 2, weight_budget_bits=8.0, gamma=gamma, lr=0.1)
        runs.append(_bits(_fit(tmp_path / str(gamma), qpl, 1)))
    assert runs[0] == runs[1]
    assert any(b != 6.0 for b in runs[0].values())  # the task loss did move the bits


def test_task_loss_gradient_reaches_the_bits(tmp_path: Path) -> None:
    module = convert(TinyNet(), POLICY6)
    qpl = PrecisionLearning(0, 2, weight_budget_bits=3.0)
    qpl.setup(None, module, "fit")  # type: ignore[arg-type]
    for slot in qpl._slots:
        slot.param.requires_grad_(True)
    x, y = next(iter(tiny_loader()))
    nn.functional.cross_entropy(module(x), y).backward()
    grads = [slot.param.grad for slot in qpl._slots]
    assert all(g is not None and g != 0 for g in grads)
    assert all(p.grad is not None for n, p in module.named_parameters() if n.endswith("weight"))


def test_bits_have_their_own_optimizer_without_weight_decay(tmp_path: Path) -> None:
    qpl = PrecisionLearning(0, 1, weight_budget_bits=4.0)
    L.seed_everything(0)
    module = TinyNet()
    trainer = _trainer(tmp_path, 1, [Quantize(POLICY6), qpl], limit_train_batches=1)
    trainer.fit(module, tiny_loader())
    user = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
    bits = {id(s.param) for s in qpl._slots}
    assert bits and not bits & user
    assert qpl.optimizer is not None
    assert all(g["weight_decay"] == 0 for g in qpl.optimizer.param_groups)


def test_final_policy_meets_the_budget_after_repair(tmp_path: Path) -> None:
    # lr tiny: the learned bits stay at 6, far over a 2.5-bit budget -> the repair must act.
    qpl = PrecisionLearning(0, 1, weight_budget_bits=2.5, gamma=0.0, lr=1e-6)
    module = _fit(tmp_path, qpl, 2, logger=L.pytorch.loggers.CSVLogger(tmp_path, name="csv"))
    assert qpl.frozen
    assert weight_size_bits(module) <= 2.5 * N_WEIGHTS
    assert qpl.model_size_bytes() * 8 == weight_size_bits(module)
    assert max(qpl.current_bits().values()) <= 3
    assert qpl.policy_path is not None and qpl.policy_path.exists()
    assert qpl.plot_path is not None and qpl.plot_path.exists()
    assert any(p.name.endswith("metrics.csv") for p in tmp_path.rglob("*.csv"))
    # frozen: the bits no longer move in the following epoch
    assert all(b == int(b) for b in _bits(module).values())


@pytest.mark.parametrize("fill_budget", [True, False])
def test_bits_under_budget_are_filled_up_to_it(tmp_path: Path, fill_budget: bool) -> None:
    # Start at 2 bits with a 4-bit budget: gamma 0 and a tiny lr leave them at 2.
    policy2 = QuantPolicy(LayerConfig("clip", weight_bits=2, act_bits=6), first_last_bits=None)
    qpl = PrecisionLearning(
        0, 1, weight_budget_bits=4.0, gamma=0.0, lr=1e-6, fill_budget=fill_budget
    )
    module = _fit(tmp_path, qpl, 1, policy=policy2)
    size = weight_size_bits(module)
    assert size <= 4.0 * N_WEIGHTS
    if fill_budget:  # no tensor could gain one more bit within the budget
        assert size > 4.0 * N_WEIGHTS - 36 and max(qpl.current_bits().values()) > 2
    else:
        assert set(qpl.current_bits().values()) == {2}
    with pytest.raises(ValueError, match="fill_budget=1 is not allowed"):
        PrecisionLearning(0, 1, weight_budget_bits=4.0, fill_budget=1)  # type: ignore[arg-type]


def test_policy_yaml_reloads_and_reproduces_the_model(tmp_path: Path) -> None:
    qpl = PrecisionLearning(0, 1, weight_budget_bits=3.5, gamma=0.0, lr=1e-6)
    module = _fit(tmp_path, qpl, 1)
    assert qpl.policy_path is not None
    policy = QuantPolicy.load(qpl.policy_path)
    fresh = convert(TinyNet(), policy)
    learned = qpl.current_bits()
    for name, layer in [("model.0", fresh.model[0]), ("model.3", fresh.model[3])]:
        assert layer.weight_quant.bits == learned[f"{name}.w"]
    x = next(iter(tiny_loader()))[0]
    module.eval()
    with torch.no_grad():
        expected = module(x)
    strip_learned_bits(module)
    fresh.load_state_dict(module.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), expected)


def test_resume_mid_run_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    def make() -> PrecisionLearning:
        return PrecisionLearning(0, 3, weight_budget_bits=3.0, gamma=20.0, lr=0.1)

    straight = make()
    a = _fit(tmp_path / "a", straight, 4, limit_train_batches=2)
    first = make()
    _fit(tmp_path / "b", first, 1, limit_train_batches=2, enable_checkpointing=True)
    assert not first.frozen
    ckpt = next((tmp_path / "b" / "checkpoints").glob("*.ckpt"))
    resumed = make()
    L.seed_everything(0)
    c = TinyNet()
    trainer = _trainer(tmp_path / "c", 4, [Quantize(POLICY6), resumed], limit_train_batches=2)
    trainer.fit(c, tiny_loader(), ckpt_path=ckpt)
    assert resumed.frozen and straight.frozen
    assert _bits(a) == _bits(c)
    assert resumed.policy == straight.policy
    for (k, v), (k2, v2) in zip(a.state_dict().items(), c.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k


def test_memory_budget_learns_activation_bits(tmp_path: Path) -> None:
    # per-sample input elements: 64 + 144 + 64 = 272; budget 3 bits on average
    qpl = PrecisionLearning(0, 2, memory_budget_bytes=272 * 3 / 8, gamma=20.0, lr=0.1)
    module = _fit(tmp_path, qpl, 2)
    assert qpl._act_elements == {"model.0": 64, "model.3": 144, "model.6": 64}
    assert {s.kind for s in qpl._slots} == {"activation"}
    term = qpl._memory_term()
    assert term is not None and term.size_of(qpl.current_bits()) <= term.budget_bits
    assert all(layer.weight_quant.bits == 6 for layer in (module.model[0], module.model[3]))


def test_composes_with_scheme_search(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    search_data = torch.utils.data.TensorDataset(
        torch.randn(24, 1, 8, 8, generator=g), torch.randint(0, 3, (24,), generator=g)
    )
    search = SchemeSearch(
        0,
        1,
        weight_candidates=("clip", "zoom", "binary"),
        act_candidates=("clip", "fixed_point"),
        search_dataloader=torch.utils.data.DataLoader(search_data, batch_size=12),
    )
    qpl = PrecisionLearning(1, 2, weight_budget_bits=3.0, gamma=10.0, unsupported="keep")
    L.seed_everything(0)
    module = TinyNet()
    callbacks = [Quantize(POLICY6), search, qpl]
    _trainer(tmp_path, 3, callbacks, limit_train_batches=2).fit(module, tiny_loader())
    assert search.fixed and qpl.frozen
    assert weight_size_bits(module) <= 3.0 * N_WEIGHTS
    assert qpl.policy is not None
    configs = qpl.policy.resolve(["model.0", "model.3", "model.6"])
    chosen = search.chosen_schemes()
    for name, cfg in configs.items():
        assert cfg is not None and cfg.scheme == chosen[f"{name}.weight"]
    collapse(module)
    strip_learned_bits(module)
    fresh = convert(TinyNet(), qpl.policy)
    fresh.load_state_dict(module.state_dict())


def test_unsupported_scheme_names_the_layer(tmp_path: Path) -> None:
    policy = QuantPolicy(
        LayerConfig("clip", 4, 4),
        first_last_bits=None,
        overrides={"model.3": {"scheme": "binary", "weight_bits": 1, "act_scheme": "clip"}},
    )
    module = convert(TinyNet(), policy)
    with pytest.raises(ValueError, match=r"layer 'model.3'.*'binary' has a fixed bit-width"):
        PrecisionLearning(0, 1, weight_budget_bits=3.0).setup(None, module, "fit")  # type: ignore[arg-type]
    module = convert(TinyNet(), policy)
    kept = PrecisionLearning(0, 1, weight_budget_bits=3.0, unsupported="keep")
    kept.setup(None, module, "fit")  # type: ignore[arg-type]
    assert [s.layer for s in kept._slots] == ["model.0", "model.6"]
    assert not isinstance(module.model[3].weight_quant, LearnedBits)


def test_bad_budgets_are_refused() -> None:
    with pytest.raises(ValueError, match="needs a budget"):
        PrecisionLearning(0, 1)
    with pytest.raises(ValueError, match=r"weight_budget_bits=-3.0 is not allowed"):
        PrecisionLearning(0, 1, weight_budget_bits=-3.0)
    with pytest.raises(ValueError, match=r"memory_budget_bytes=-1 is not allowed"):
        PrecisionLearning(0, 1, memory_budget_bytes=-1)
    with pytest.raises(ValueError, match="given twice"):
        PrecisionLearning(0, 1, weight_budget_bits=3.0, weight_budget_bytes=100)
    with pytest.raises(ValueError, match=r"min_bits=0 is not allowed; allowed: 1..8"):
        PrecisionLearning(0, 1, weight_budget_bits=3.0, min_bits=0)
    with pytest.raises(ValueError, match=r"end_epoch=0 is not allowed"):
        PrecisionLearning(0, 0, weight_budget_bits=3.0)
    module = convert(TinyNet(), POLICY6)
    impossible = PrecisionLearning(0, 1, weight_budget_bits=1.5, min_bits=2)
    with pytest.raises(ValueError, match=r"weight budget .* is impossible"):
        impossible.setup(None, module, "fit")  # type: ignore[arg-type]


def test_gamma_schedule_warms_up_then_ramps() -> None:
    qpl = PrecisionLearning(2, 8, weight_budget_bits=3.0, gamma=4.0, warmup_epochs=2, ramp_epochs=2)
    assert [qpl.gamma_at(e) for e in range(9)] == [0, 0, 0, 0, 2.0, 4.0, 4.0, 4.0, 0]
