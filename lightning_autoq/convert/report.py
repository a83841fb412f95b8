"""A per-layer summary of a quantized model: what the Quantize callback logs."""

from __future__ import annotations

from torch import nn

from lightning_autoq.convert.convert import quantized_layers

COLUMNS: tuple[str, ...] = (
    "layer",
    "type",
    "scheme",
    "weight_bits",
    "act_scheme",
    "act_bits",
    "granularity",
    "params",
)


def layer_table(model: nn.Module) -> list[list[object]]:
    """One row per quantized layer, in the order of :data:`COLUMNS`.

    Read from each layer's config, which the search and bit-learning callbacks keep up to
    date (the quantizer modules may be wrapped in search cells or learned-bit wrappers).
    """
    rows: list[list[object]] = []
    for name, layer in quantized_layers(model):
        cfg = layer.config
        quantized_input = cfg.act_bits is not None
        rows.append(
            [
                name,
                type(layer).float_class.__name__,
                cfg.scheme,
                cfg.weight_bits,
                (cfg.act_scheme or cfg.scheme) if quantized_input else "-",
                cfg.act_bits if quantized_input else "-",
                cfg.granularity,
                sum(p.numel() for p in layer.parameters(recurse=False)),
            ]
        )
    return rows


def weight_size_bits(model: nn.Module) -> int:
    """Storage of the quantized weights in bits (sum of weights x bits)."""
    return sum(
        layer.weight.numel() * layer.config.weight_bits for _, layer in quantized_layers(model)
    )


def format_table(rows: list[list[object]], columns: tuple[str, ...] = COLUMNS) -> str:
    """Fixed-width text rendering of ``rows`` for the console."""
    cells = [list(map(str, columns)), *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
