"""``layer_table`` / ``format_table`` / ``weight_size_bits`` against values read off the model."""

from __future__ import annotations

import pytest
from torch import nn

from lightning_autoq import LayerConfig, QuantPolicy, convert
from lightning_autoq.convert import format_table, layer_table, weight_size_bits
from lightning_autoq.convert.report import COLUMNS
from lightning_autoq.nn import QUANT_LAYERS

pytestmark = pytest.mark.usefixtures("single_thread")


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, bias=False),
        nn.Flatten(),
        nn.Linear(24, 10),
        nn.Linear(10, 3),
    )


POLICY = QuantPolicy(
    LayerConfig("clip", 3, 4, granularity="channel"),
    overrides={"4": {"act_bits": None}, "2": {"act_scheme": "fixed_point"}},
    exclude=["5"],
)


def test_layer_table_rows_follow_the_model():
    model = _model()
    float_layers = {n: m for n, m in model.named_modules() if type(m) in QUANT_LAYERS}
    configs = POLICY.resolve(list(float_layers))
    convert(model, POLICY)
    rows = layer_table(model)
    expected = []
    for name, module in float_layers.items():
        cfg = configs[name]
        if cfg is None:
            continue
        act_scheme = cfg.act_scheme or cfg.scheme
        expected.append(
            [
                name,
                type(module).__name__,
                cfg.scheme,
                cfg.weight_bits,
                act_scheme if cfg.act_bits is not None else "-",
                cfg.act_bits if cfg.act_bits is not None else "-",
                cfg.granularity,
                sum(p.numel() for p in module.parameters()),
            ]
        )
    assert rows == expected
    assert [r[0] for r in rows] == ["0", "2", "4"]
    assert rows[0][3] == 8 and rows[1][3] == 3  # first layer at first_last_bits
    assert rows[1][7] == 6 * 6 * 3 * 3  # no bias
    assert all(len(r) == len(COLUMNS) for r in rows)


def test_weight_size_bits_sums_numel_times_bits():
    model = _model()
    float_layers = {n: m for n, m in model.named_modules() if type(m) in QUANT_LAYERS}
    configs = POLICY.resolve(list(float_layers))
    expected = sum(
        float_layers[n].weight.numel() * cfg.weight_bits
        for n, cfg in configs.items()
        if cfg is not None
    )
    convert(model, POLICY)
    assert weight_size_bits(model) == expected
    # 8-bit first layer (162 weights), 3-bit middle conv (324), last quantized linear is not
    # the model's last layer (excluded), so it keeps the default 3 bits (240 weights).
    assert expected == 162 * 8 + 324 * 3 + 240 * 3
    assert weight_size_bits(_model()) == 0


def test_format_table_layout():
    model = convert(_model(), POLICY)
    rows = layer_table(model)
    text = format_table(rows)
    lines = text.split("\n")
    assert len(lines) == len(rows) + 2
    assert lines[0].split() == list(COLUMNS)
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert len({len(line) for line in lines}) == 1  # every line padded to the same width
    starts = [lines[0].index(c) for c in COLUMNS]
    dash_runs = [
        i for i, ch in enumerate(lines[1]) if ch == "-" and (i == 0 or lines[1][i - 1] == " ")
    ]
    assert dash_runs == starts
    for row, line in zip(rows, lines[2:], strict=True):
        for value, start in zip(row, starts, strict=True):
            assert line[start:].startswith(str(value))


def test_format_table_custom_columns():
    text = format_table([["a", 1], ["bbbb", 22]], columns=("x", "yy"))
    assert text.split("\n") == ["x     yy", "----  --", "a     1 ", "bbbb  22"]


def test_layer_table_reads_configs_when_quantizers_are_wrapped():
    """After a scheme search the input quantizers are search cells; the table still works."""
    from lightning_autoq.quant import Quantizer
    from lightning_autoq.quant.mixture import SchemeMixture

    model = convert(_model(), POLICY)
    layer = model[2]
    cell = SchemeMixture(
        [Quantizer(n, 4, kind="activation", signed=None) for n in ("clip", "zoom")]
    )
    layer.act_quant = cell
    row = next(r for r in layer_table(model) if r[0] == "2")
    assert row[4:6] == ["fixed_point", 4]
