"""Training-step time of a quantized ResNet-20 relative to the float one, per scheme.

    python benchmarks/step_time.py            # width 16, batch 128, 20 timed steps
    python benchmarks/step_time.py --quick    # 5 timed steps

Writes benchmarks/results/step_time.json and step_time.png. Each figure is the median
wall-clock time of a forward + backward + SGD step on random 1x28x28 inputs, every layer
quantized at the bits shown (4, or the nearest the scheme allows), on the threads torch is
given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from lightning_autoq import LayerConfig, QuantPolicy, available_schemes, convert
from lightning_autoq.models import resnet20
from lightning_autoq.quant import scheme_class

RESULTS = Path(__file__).resolve().parent / "results"


def step_time(model: nn.Module, batch: int, steps: int) -> float:
    """Median seconds per training step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def bits_for(name: str) -> int:
    low, high = scheme_class(name).bit_range
    return min(max(4, low), high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    steps = 5 if args.quick else 20
    torch.manual_seed(0)
    float_time = step_time(resnet20(in_channels=1, width=args.width), args.batch, steps)
    rows = []
    for name in available_schemes():
        bits = bits_for(name)
        model = convert(
            resnet20(in_channels=1, width=args.width),
            QuantPolicy(LayerConfig(name, weight_bits=bits, act_bits=bits), first_last_bits=None),
        )
        seconds = step_time(model, args.batch, steps)
        ratio = seconds / float_time
        rows.append({"scheme": name, "bits": bits, "seconds": seconds, "x_float": ratio})
        print(f"{name:<16} W{bits}A{bits}  {1000 * seconds:7.1f} ms/step  {ratio:5.2f}x float")
    print(f"{'float':<16}        {1000 * float_time:7.1f} ms/step")
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "command": "python benchmarks/step_time.py" + (" --quick" if args.quick else ""),
        "model": f"resnet20 width {args.width}, batch {args.batch}, 1x28x28",
        "threads": torch.get_num_threads(),
        "float_seconds": float_time,
        "schemes": rows,
    }
    (RESULTS / "step_time.json").write_text(json.dumps(result, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh([f"{r['scheme']} W{r['bits']}A{r['bits']}" for r in rows], [r["x_float"] for r in rows])
    ax.axvline(1.0, color="k", linewidth=0.8)
    ax.set_xlabel("training step time / float step time")
    ax.set_title(result["model"])
    fig.tight_layout()
    fig.savefig(RESULTS / "step_time.png", dpi=120)
    print(f"written {RESULTS / 'step_time.json'} and step_time.png")


if __name__ == "__main__":
    main()
