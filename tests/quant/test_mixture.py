"""SchemeMixture: Gumbel-softmax mixing, fixing, collapsing, tied logits."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_autoq.quant import AUTOQNN_SCHEMES, Quantizer
from lightning_autoq.quant.mixture import SchemeMixture, candidate_bits, collapse, mixtures


def test_candidate_bits_clamps_into_the_scheme_range() -> None:
    assert [candidate_bits(s, 2) for s in AUTOQNN_SCHEMES] == [1, 2, 2, 2, 2, 2, 2, 2]
    assert candidate_bits("power_of_two", 8) == 4
    assert candidate_bits("binary", 8) == 1
    assert candidate_bits("ternary", 1) is None
    assert candidate_bits("fixed_point", 1) is None
    with pytest.raises(ValueError, match="available"):
        candidate_bits("nope", 2)


def _cell(**kwargs) -> SchemeMixture:
    return SchemeMixture([Quantizer("clip", 2), Quantizer("binary", 1)], **kwargs)


def test_eval_output_is_the_softmax_weighted_sum() -> None:
    cell = _cell(tau=2.0).eval()
    with torch.no_grad():
        cell.theta.copy_(torch.tensor([0.3, -0.4]))
    x = torch.randn(5, 7)
    m = torch.softmax(torch.tensor([0.3, -0.4]) / 2.0, 0)
    expected = m[0] * cell.candidates[0](x) + m[1] * cell.candidates[1](x)
    torch.testing.assert_close(cell(x), expected)


def test_training_noise_comes_from_the_generator_and_theta_gets_a_gradient() -> None:
    cell = _cell()
    x = torch.randn(5, 7)
    cell.generator = torch.Generator().manual_seed(3)
    a = cell(x)
    cell.generator = torch.Generator().manual_seed(3)
    b = cell(x)
    torch.testing.assert_close(a, b)
    cell.generator = torch.Generator().manual_seed(4)
    assert not torch.equal(cell(x), a)
    a.square().sum().backward()
    assert cell.theta.grad is not None and cell.theta.grad.abs().sum() > 0


def test_low_temperature_selects_the_larger_logit() -> None:
    cell = _cell(tau=1e-3).eval()
    with torch.no_grad():
        cell.theta.copy_(torch.tensor([0.0, 1.0]))
    x = torch.randn(4, 4)
    torch.testing.assert_close(cell(x), cell.candidates[1](x))


def test_fixed_cell_returns_exactly_its_candidate() -> None:
    cell = _cell()
    with torch.no_grad():
        cell.theta.copy_(torch.tensor([2.0, 1.0]))
    assert not cell.fixed
    cell.fix()
    assert cell.fixed and int(cell.chosen) == 0 and cell.candidate is cell.candidates[0]
    x = torch.randn(3, 6, requires_grad=True)
    out = cell(x)
    assert torch.equal(out, cell.candidates[0](x))
    out.sum().backward()
    assert cell.theta.grad is None
    with pytest.raises(ValueError, match=r"allowed: 0\.\.1"):
        cell.fix(2)


def test_collapse_swaps_fixed_cells_and_keeps_outputs() -> None:
    model = nn.Sequential(nn.Identity(), _cell())
    with pytest.raises(RuntimeError, match="still searching"):
        collapse(model)
    model[1].fix(1)
    x = torch.randn(2, 5)
    before = model(x)
    collapsed = collapse(copy.deepcopy(model))
    assert isinstance(collapsed[1], Quantizer) and collapsed[1].scheme.name == "binary"
    assert torch.equal(collapsed(x), before)
    assert not mixtures(collapsed)


def test_tied_theta_is_one_parameter_and_round_trips_the_state_dict() -> None:
    theta = nn.Parameter(torch.zeros(3))
    a = SchemeMixture([Quantizer("clip", 2), Quantizer("zoom", 2)], theta, slots=[0, 2])
    b = SchemeMixture([Quantizer("binary", 1), Quantizer("zoom", 2)], theta, slots=[1, 2])
    model = nn.Sequential(a, b)
    assert len(list(model.parameters())) == 1
    with torch.no_grad():
        theta.copy_(torch.tensor([1.0, 2.0, 3.0]))
    assert a.logits().tolist() == [1.0, 3.0] and b.logits().tolist() == [2.0, 3.0]
    state = model.state_dict()
    assert torch.equal(state["0.theta"], state["1.theta"])
    theta2 = nn.Parameter(torch.zeros(3))
    fresh = nn.Sequential(
        SchemeMixture([Quantizer("clip", 2), Quantizer("zoom", 2)], theta2, slots=[0, 2]),
        SchemeMixture([Quantizer("binary", 1), Quantizer("zoom", 2)], theta2, slots=[1, 2]),
    )
    fresh.load_state_dict(state)
    assert fresh[0].theta is fresh[1].theta and fresh[0].theta.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="slots"):
        SchemeMixture([Quantizer("clip", 2)], theta, slots=[3])


def _hard(**kwargs) -> SchemeMixture:
    cands = [Quantizer("clip", 2), Quantizer("binary", 1), Quantizer("zoom", 2)]
    return SchemeMixture(cands, sampling="hard", **kwargs)


def test_hard_sampling_runs_one_candidate_with_a_straight_through_gradient() -> None:
    cell = _hard(tau=0.7)
    x = torch.randn(6, 5)
    seen = set()
    for seed in range(20):
        cell.generator = torch.Generator().manual_seed(seed)
        out = cell(x)
        index = cell.last_index
        assert index is not None
        seen.add(index)
        assert torch.equal(out, cell.candidates[index](x))  # exactly the candidate in value
        cell.generator = torch.Generator().manual_seed(seed)
        assert cell.resample() == index  # the same noise picks the same candidate
        cell.clear_sample()
        cell.theta.grad = None
        out.square().sum().backward()
        grad = cell.theta.grad
        assert grad is not None and grad.abs().sum() > 0
        # The gradient is that of the sampled candidate's Gumbel-softmax weight.
        cell.generator = torch.Generator().manual_seed(seed)
        noise = cell._gumbel()
        theta = cell.theta.detach().clone().requires_grad_(True)
        m = torch.softmax((theta + noise) / 0.7, 0)[index]
        (m * cell.candidates[index](x).square().sum() * 2).backward()
        torch.testing.assert_close(grad, theta.grad)
    assert seen == {0, 1, 2}


def test_hard_sample_drawn_ahead_is_kept_and_eval_runs_the_argmax() -> None:
    cell = _hard()
    x = torch.randn(4, 4)
    cell.generator = torch.Generator().manual_seed(0)
    index = cell.resample()
    outs = [cell(x) for _ in range(5)]
    assert all(cell.last_index == index for _ in outs) and all(
        torch.equal(o, outs[0]) for o in outs
    )
    cell.clear_sample()
    indices = set()
    for _ in range(30):
        cell(x)
        indices.add(cell.last_index)
    assert len(indices) > 1  # without a drawn sample every forward draws afresh
    cell.theta.requires_grad_(False)
    cell(x).sum()  # no straight-through factor: no graph to theta
    assert cell.theta.grad is None
    with torch.no_grad():
        cell.theta.copy_(torch.tensor([0.0, 0.0, 2.0]))
    cell.eval()
    assert torch.equal(cell(x), cell.candidates[2](x)) and cell.last_index == 2
    with pytest.raises(ValueError, match=r"sampling='gdas' is not allowed; allowed: soft, hard"):
        SchemeMixture([Quantizer("clip", 2)], sampling="gdas")  # type: ignore[arg-type]


def _pair(**kwargs) -> SchemeMixture:
    cands = [
        Quantizer("clip", 2),
        Quantizer("binary", 1),
        Quantizer("zoom", 2),
        Quantizer("ternary", 2),
    ]
    return SchemeMixture(cands, sampling="pair", **kwargs)


def test_pair_sampling_mixes_two_drawn_candidates_and_only_their_logits_learn() -> None:
    cell = _pair(tau=0.8)
    with torch.no_grad():
        cell.theta.copy_(torch.tensor([0.5, -0.3, 0.2, 0.0]))
    x = torch.randn(6, 5)
    pairs = set()
    for seed in range(30):
        cell.generator = torch.Generator().manual_seed(seed)
        first = cell.resample()
        indices, _ = cell._draw  # type: ignore[misc]
        assert first == indices[0] and len(set(indices)) == 2
        pairs.add(frozenset(indices))
        cell.theta.grad = None
        out = cell(x)
        assert cell.last_index is None  # a mixture
        theta = cell.theta.detach()
        m = torch.softmax(theta[indices] / 0.8, 0)
        expected = m[0] * cell.candidates[indices[0]](x) + m[1] * cell.candidates[indices[1]](x)
        torch.testing.assert_close(out, expected)
        out.square().sum().backward()
        grad = cell.theta.grad
        assert grad is not None
        others = [i for i in range(4) if i not in indices]
        assert grad[indices].abs().min() > 0 and torch.all(grad[others] == 0)
        cell.clear_sample()
    assert len(pairs) > 3  # the draws cover several pairs


def test_pair_draws_follow_the_probabilities_and_eval_runs_the_argmax() -> None:
    cell = _pair()
    with torch.no_grad():
        cell.theta.copy_(torch.tensor([1.5, 0.0, -1.0, 0.0]))
    cell.generator = torch.Generator().manual_seed(0)
    firsts = torch.tensor([cell.resample() for _ in range(4000)])
    frequency = torch.bincount(firsts, minlength=4).float() / len(firsts)
    # Gumbel top-1 is a draw from softmax(theta): the first of the pair follows it.
    torch.testing.assert_close(frequency, cell.probabilities(), atol=0.03, rtol=0)
    x = torch.randn(3, 4)
    cell.eval()
    assert torch.equal(cell(x), cell.candidates[0](x)) and cell.last_index == 0
    single = SchemeMixture([Quantizer("clip", 2)], sampling="pair")
    assert torch.equal(single(x), single.candidates[0](x)) and single.last_index == 0
