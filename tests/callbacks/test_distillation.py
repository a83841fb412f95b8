"""KnowledgeDistillation: the loss is Hinton's KL, the gradient is that of the mixed loss,
and the float teacher never changes nor enters the optimizer or the module's state."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lightning_autoq import LayerConfig, QuantPolicy, convert
from lightning_autoq.callbacks.distillation import KnowledgeDistillation, distillation_loss
from lightning_autoq.callbacks.quantize import Quantize
from lightning_autoq.convert import quantized_layers
from tests.callbacks.tiny import TinyNet, tiny_loader

pytestmark = pytest.mark.usefixtures("single_thread")

POLICY = QuantPolicy(LayerConfig("lsq", weight_bits=3, act_bits=3), first_last_bits=None)


class _Trainer:
    """What the callback reads from the trainer: no AMP scaler, no accumulation."""

    precision_plugin = object()
    accumulate_grad_batches = 1


def test_loss_is_the_kl_formula():
    s, t = torch.randn(5, 7), torch.randn(5, 7) * 2
    temp = 3.0
    expected = F.kl_div(
        F.log_softmax(s / temp, 1), F.softmax(t / temp, 1), reduction="batchmean"
    ) * (temp**2)
    torch.testing.assert_close(distillation_loss(s, t, temp), expected)
    by_hand = F.softmax(t / temp, 1) * (F.log_softmax(t / temp, 1) - F.log_softmax(s / temp, 1))
    torch.testing.assert_close(distillation_loss(s, t, temp), by_hand.sum(1).mean() * 9)


def test_gradient_is_that_of_the_mixed_loss():
    torch.manual_seed(0)
    module = TinyNet()
    teacher_ref = TinyNet()
    teacher_ref.load_state_dict(module.state_dict())
    convert(module, POLICY)  # Quantize first: the callback turns its copy back to float
    cb = KnowledgeDistillation(temperature=2.5, alpha=0.7)
    cb.setup(_Trainer(), module, "fit")  # type: ignore[arg-type]
    assert not quantized_layers(cb.teacher)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,))
    module.train()
    cb.on_train_batch_start(None, module, (x, y), 0)  # type: ignore[arg-type]
    logits = module(x)
    F.cross_entropy(logits, y).backward()
    got = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    teacher_ref.eval()
    with torch.no_grad():
        t = teacher_ref(x)
    torch.testing.assert_close(cb.last_loss, distillation_loss(logits.detach(), t, 2.5))
    module.zero_grad()
    logits = module(x)  # not armed: a plain forward
    mixed = 0.3 * F.cross_entropy(logits, y) + 0.7 * distillation_loss(logits, t, 2.5)
    mixed.backward()
    for n, p in module.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-5, atol=1e-7, msg=n)


def test_teacher_stays_fixed_and_out_of_the_optimizer(tmp_path: Path):
    L.seed_everything(0, verbose=False)
    module = TinyNet()
    kd = KnowledgeDistillation(temperature=4.0, alpha=0.5)
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[Quantize(POLICY), kd],
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    float_state = {k: v.clone() for k, v in module.state_dict().items()}
    trainer.fit(module, tiny_loader())
    teacher = kd.teacher
    assert teacher is not None and not teacher.training
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, float_state[k]), k  # the float snapshot, unchanged
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & module.seen_optimizer_params
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith("teacher") for k in module.state_dict())
    assert kd.last_loss is not None and kd.last_loss > 0
    # The student moved away from the teacher; the teacher is saved with the callback.
    assert not torch.equal(module.model[0].weight, teacher.model[0].weight)
    ckpt = torch.load(next(tmp_path.rglob("*.ckpt")), weights_only=False)
    saved = next(v for k, v in ckpt["callbacks"].items() if "KnowledgeDistillation" in k)
    assert torch.equal(saved["teacher"]["model.0.weight"], float_state["model.0.weight"])


def test_teacher_from_checkpoint(tmp_path: Path):
    other = TinyNet()
    path = tmp_path / "teacher.pt"
    torch.save(other.state_dict(), path)
    module = TinyNet()
    cb = KnowledgeDistillation(teacher_checkpoint=str(path))
    cb.setup(_Trainer(), module, "fit")  # type: ignore[arg-type]
    for k, v in cb.teacher.state_dict().items():
        assert torch.equal(v, other.state_dict()[k])


def test_missing_forward_is_an_error():
    cb = KnowledgeDistillation()
    module = TinyNet()
    cb.setup(_Trainer(), module, "fit")  # type: ignore[arg-type]
    cb.on_train_batch_start(None, module, None, 0)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="no training forward"):
        cb.on_train_batch_end(None, module, None, None, 0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"temperature": 0.0}, "temperature=0.0"), ({"alpha": 1.5}, "alpha=1.5")],
)
def test_bad_arguments(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        KnowledgeDistillation(**kwargs)


def test_logits_must_be_two_dimensional():
    net = nn.Sequential(nn.Conv2d(1, 2, 3))
    module = L.LightningModule()
    module.net = net
    cb = KnowledgeDistillation(module_name="net")
    cb.setup(_Trainer(), module, "fit")  # type: ignore[arg-type]
    cb.on_train_batch_start(None, module, None, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch, classes"):
        net(torch.randn(2, 1, 5, 5))
