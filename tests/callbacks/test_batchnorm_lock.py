"""BatchNormLock inside a real Trainer: learn, then lock and train the folded form."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_autoq import LayerConfig, QuantPolicy
from lightning_autoq.callbacks import Quantize
from lightning_autoq.callbacks.batchnorm_lock import BatchNormLock
from lightning_autoq.callbacks.incremental import IncrementalQuantization
from lightning_autoq.export import fold_batchnorm
from tests.callbacks.tiny import TinyNet, tiny_loader

INT_SE = QuantPolicy(LayerConfig("int_se", weight_bits=4, act_bits=4))


class BNProbe(L.Callback):
    def __init__(self) -> None:
        self.stats: list[tuple[torch.Tensor, ...]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        bn = pl_module.model[1]
        self.stats.append(
            tuple(t.detach().clone() for t in (bn.running_mean, bn.running_var, bn.weight))
        )


def _fit(tmp_path: Path, epochs: int, callbacks: list, ckpt=None, **kwargs) -> TinyNet:
    L.seed_everything(0)
    module = TinyNet()
    kwargs.setdefault("enable_checkpointing", False)
    L.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        accelerator="cpu",
        **kwargs,
    ).fit(module, tiny_loader(), ckpt_path=ckpt)
    return module


def test_learn_then_lock(tmp_path: Path) -> None:
    probe = BNProbe()
    L.seed_everything(0)
    initial_var = torch.ones(4)
    module = _fit(tmp_path, 3, [Quantize(INT_SE), BatchNormLock(lock_epoch=1), probe])
    layer, bn = module.model[0], module.model[1]
    assert layer.batchnorm is bn and bool(layer.bn_locked)
    assert "model.0.bn_locked" in module.state_dict()
    (mean0, var0, _), (mean1, var1, g1), (mean2, var2, g2) = probe.stats
    assert not torch.equal(var0, initial_var)  # epoch 0: statistics learned
    assert torch.equal(mean1, mean0) and torch.equal(var1, var0)  # locked from epoch 1
    assert torch.equal(mean2, mean0) and torch.equal(var2, var0)
    assert not torch.equal(g2, g1)  # gamma trains through the folded weight
    # Eval output is conv with the quantized folded weight; the BN passes through.
    module.eval()
    x = next(iter(tiny_loader()))[0]
    w, b = fold_batchnorm(layer.weight, layer.bias, bn)
    expected = torch.nn.functional.conv2d(
        layer.act_quant(x),
        layer.weight_quant(w),
        layer.bias_quant(b, layer.accumulator_exponent(w)),
    )
    assert torch.equal(module.model[:2](x), expected)


def test_lock_then_incremental_quantizes_folded_weights_and_resumes(tmp_path: Path) -> None:
    def callbacks():
        return [
            Quantize(INT_SE),
            BatchNormLock(lock_epoch=1),
            IncrementalQuantization([0.5, 1.0], start_epoch=1),
        ]

    straight = _fit(tmp_path / "a", 3, callbacks())
    _fit(tmp_path / "b", 2, callbacks(), enable_checkpointing=True)
    ckpt = next((tmp_path / "b").rglob("*.ckpt"))
    resumed = _fit(tmp_path / "c", 3, callbacks(), ckpt=ckpt)
    for m in (straight, resumed):
        layer = m.model[0]
        assert layer.weight_quant.mask.all()
        # Fully quantized: the effective weight is the frozen folded one, on its grid.
        assert torch.equal(layer.quantized_weight(), layer.weight_quant.frozen)
    sa, sr = straight.state_dict(), resumed.state_dict()
    assert sa.keys() == sr.keys()
    for key in sa:
        assert torch.equal(sa[key], sr[key]), key


def test_invalid_lock_epoch_and_untraceable_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lock_epoch=-1 is not allowed; allowed: an integer >= 0"):
        BatchNormLock(lock_epoch=-1)

    class Dynamic(TinyNet):
        def forward(self, x):
            return self.model(x) if x.sum() > 0 else self.model(-x)

    with pytest.raises(ValueError, match="cannot trace Dynamic"):
        L.Trainer(
            max_epochs=1,
            callbacks=[Quantize(INT_SE), BatchNormLock()],
            logger=False,
            enable_progress_bar=False,
            enable_checkpointing=False,
            default_root_dir=tmp_path,
        ).fit(Dynamic(), tiny_loader())


def test_restore_float_after_lock_gives_back_the_float_model(tmp_path: Path) -> None:
    from lightning_autoq import restore_float

    module = _fit(tmp_path, 2, [Quantize(INT_SE), BatchNormLock(lock_epoch=1)])
    layer, bn = module.model[0], module.model[1]
    assert layer.is_bn_locked() and bn._forward_hooks and bn._forward_pre_hooks
    restore_float(module)
    assert type(module.model[0]) is torch.nn.Conv2d and module.model[1] is bn
    assert not bn._forward_hooks and not bn._forward_pre_hooks
    assert "_autoq_folded_into" not in bn.__dict__ and layer.batchnorm is None
    # It computes as a float TinyNet with the same parameters and statistics, in eval and in
    # train mode (where the BN learns its statistics again).
    reference = TinyNet()
    reference.load_state_dict(module.state_dict())
    x = next(iter(tiny_loader()))[0]
    for train in (False, True):
        module.train(train)
        reference.train(train)
        with torch.no_grad():
            assert torch.equal(module(x), reference(x))
    assert torch.equal(bn.running_mean, reference.model[1].running_mean)


def test_to_float_releases_the_batchnorm_and_the_layer_stays_consistent(tmp_path: Path) -> None:
    module = _fit(tmp_path, 2, [Quantize(INT_SE), BatchNormLock(lock_epoch=1)])
    layer, bn = module.model[0], module.model[1]
    float_conv = layer.to_float()
    assert layer.batchnorm is None and not layer.is_bn_locked() and not bn._forward_hooks
    module.eval()
    x = next(iter(tiny_loader()))[0]
    with torch.no_grad():
        # The quantized layer now quantizes its unfolded weight; the BN runs after it.
        expected = bn(layer(x))
        assert torch.equal(module.model[:2](x), expected)
        assert torch.equal(float_conv(x), torch.nn.functional.conv2d(x, layer.weight, layer.bias))
