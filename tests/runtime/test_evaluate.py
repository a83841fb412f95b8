"""count_correct and IntegerModel.predict."""

from __future__ import annotations

import torch

from lightning_autoq.export import export_integer
from lightning_autoq.runtime import count_correct
from tests.export.models import quantized_plain_cnn


def test_count_correct_counts_argmax_hits_over_batches() -> None:
    loader = [
        (torch.tensor([[0.0, 1.0], [2.0, 0.0]]), torch.tensor([1, 1])),
        (torch.tensor([[0.0, 3.0]]), torch.tensor([1])),
    ]
    assert count_correct(lambda x: x, loader) == (2, 3)


def test_predict_quantizes_the_input_then_runs_the_integer_model(single_thread) -> None:
    model = export_integer(quantized_plain_cnn(6), torch.randn(2, 1, 14, 14))
    x = torch.randn(3, 1, 14, 14)
    assert torch.equal(model.predict(x), model(model.quantize_input(x)))
