"""lightning_autoq next to Brevitas, torch.ao, torchao and NNCF on Fashion-MNIST ResNet-20.

One float ResNet-20 is trained first (or loaded with ``--init-checkpoint``); every contender
fine-tunes a copy of it at W4A4, W3A3 and W2A2 with the same epochs, images, seed and
optimizer (SGD, momentum 0.9, cosine schedule, weight decay 1e-4 off quantizer, norm and
bias parameters), in the same Lightning loop. The first conv and the last linear are at
``--edge-bits`` (8) for every contender; the JSON lists each contender's layers and bits as
read back from its model. Reported per contender and bit-width: test accuracy, the median
training-step time over the same batch relative to the float model's, the size of what the
library exports (and the theoretical packed size), and whether that is integer-only.

Contenders (``--contenders``): ``autoq_lsq`` and ``autoq_int_se`` (lightning_autoq; INT-SE is
exported with ``export_integer`` and checked bit-exact, LSQ with dyadic requantization and
checked by top-1 agreement), ``brevitas``, ``torch_ao``
(``prepare_qat_fx`` with k-bit FakeQuantize, then ``convert_fx``), ``torchao`` and ``nncf``
(checked for applicability; not trained, see the JSON for why). ``--policy-yaml`` adds
policies written by SchemeSearch (QSS) or PrecisionLearning (QPL), trained the same way.

    python benchmarks/peers.py --quick                          # smoke test: subset, width 8
    python benchmarks/peers.py --device cuda --epochs 15        # the full comparison
    python benchmarks/peers.py --device cuda --epochs 15 \\
        --policy-yaml qss=runs/benchmarks/scheme_search/scheme_policy.yaml

Writes ``benchmarks/results/peers.json`` and ``peers.png`` (atomically).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import peer_libs as peers  # noqa: E402
from lightning_autoq import LayerConfig, QuantPolicy, convert  # noqa: E402
from lightning_autoq.callbacks.batchnorm_lock import BatchNormLock  # noqa: E402
from lightning_autoq.convert import layer_table  # noqa: E402
from lightning_autoq.data import FashionMNISTDataModule  # noqa: E402
from lightning_autoq.export.integer import (  # noqa: E402
    ExportError,
    compare_with_simulation,
    export_integer,
    lock_for_export,
)
from lightning_autoq.models import ImageClassifier, resnet20  # noqa: E402
from lightning_autoq.models.checkpoint import load_model_weights  # noqa: E402
from lightning_autoq.runtime import packed_size_bytes, save  # noqa: E402
from lightning_autoq.utils.benchmarking import (  # noqa: E402
    accelerator,
    add_run_arguments,
    require_device,
    write_json,
)

RESULTS = ROOT / "benchmarks" / "results" / "peers.json"
DEVICES = ("auto", "cpu", "cuda")
TRAINED = ("autoq_lsq", "autoq_int_se", "brevitas", "torch_ao")
CHECKED = ("torchao", "nncf")
CONTENDERS = TRAINED + CHECKED
OPTIONAL = {"brevitas": "brevitas", "torch_ao": "torch.ao.quantization", "torchao": "torchao"}
OPTIONAL["nncf"] = "nncf"
DataFactory = Callable[[argparse.Namespace], L.LightningDataModule]

DESCRIPTIONS = {
    "autoq_lsq": "lightning_autoq convert() with QuantPolicy(LayerConfig('lsq', k, k), "
    "first_last_bits=edge): LSQ weights (per tensor) and LSQ layer inputs (per tensor, "
    "signedness from the first batch) of every conv/linear; BN, ReLU, bias-free convs float; "
    "the classifier bias 8-bit fixed point; exported with export_integer(scales='dyadic') "
    "(BN folded, integer multipliers and shifts; checked by top-1 agreement with the "
    "simulation, not bit-exact)",
    "autoq_int_se": "lightning_autoq INT-SE (power-of-two shared exponent) weights and layer "
    "inputs at k bits, edges at edge bits, bias 8-bit fixed point, BatchNormLock from epoch 0 "
    "(BN statistics come from the float checkpoint, folded and locked); then "
    "lightning_autoq.export.export_integer (integer-only program, checked bit-exact) saved "
    "as .int.safetensors with packed k-bit weights",
    "brevitas": "brevitas.nn.QuantConv2d/QuantLinear swapped in for every conv/linear: "
    "Int8WeightPerTensorFloat at k bits with a learned scale (PARAMETER_FROM_STATS, narrow "
    "range as Brevitas defaults: 2-bit weights are ternary), input_quant Int8ActPerTensorFloat "
    "(first layer) / Uint8ActPerTensorFloat (others) at k bits, learned scale after Brevitas' "
    "30-step statistics warm-up; BN, ReLU, biases float; exported with export_onnx_qcdq",
    "torch_ao": "torch.ao FX graph mode: prepare_qat_fx with a QConfigMapping of FakeQuantize "
    "(weights MovingAveragePerChannelMinMaxObserver per-channel symmetric "
    "[-2^(k-1), 2^(k-1)-1]; activations MovingAverageMinMaxObserver affine [0, 2^k-1]) "
    "global, the first conv and the last linear at edge bits; conv-BN(-ReLU) fused with "
    "simulated BN folding; activation fake-quant on op outputs (torch.ao's rule); after "
    "training convert_fx (x86 backend) on CPU",
    "torchao": "torchao.quantization.quantize_(model, QATConfig(IntxFakeQuantizeConfig("
    "torch.int{k}, per_channel), step='prepare')) applied to a copy to see what it covers",
    "nncf": "nncf.quantize (NNCF's torch entry point; QAT is fine-tuning its result) asked "
    "for k-bit weights and activations through AdvancedQuantizationParameters",
}

NNCF_NOTES = (
    "Found with nncf 3.4.0 while writing this benchmark: its hardware configs ANY/CPU/GPU "
    "allow 8-bit quantizers only; NPU allows 4-bit weights and per-tensor symmetric 4-bit "
    "activations but not at adaptive_avg_pool2d, and no 3- or 2-bit activations; its CPU "
    "fake-quantize kernels are a C++ extension compiled at first use (the 60 s load limit "
    "ran out on a 2-core machine) and its CUDA ones need nvcc; per-layer bits (8-bit first "
    "and last layers) have no option in nncf.quantize."
)


# --- data, training and timing ----------------------------------------------------------------


def fashion_mnist(args: argparse.Namespace) -> L.LightningDataModule:
    return FashionMNISTDataModule(
        args.data_dir,
        batch_size=args.batch_size,
        val_size=0,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        augment=not args.quick,
        seed=args.seed,
        download=False,
    )


def _trainer(args: argparse.Namespace, callbacks: list[L.Callback], epochs: int) -> L.Trainer:
    return L.Trainer(
        callbacks=callbacks,
        max_epochs=epochs,
        accelerator=accelerator(args.device),
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.out_dir,
    )


def train(
    args: argparse.Namespace,
    model: nn.Module,
    lr: float,
    epochs: int,
    callbacks: list[L.Callback] | None = None,
) -> tuple[nn.Module, float]:
    """Fit ``model`` in the shared loop; the trained network and its test accuracy."""
    L.seed_everything(args.seed, verbose=False)
    dm = args.make_datamodule(args)
    module = ImageClassifier(model, lr=lr, weight_decay=1e-4, optimizer="sgd")
    trainer = _trainer(args, list(callbacks or []), epochs)
    trainer.fit(module, datamodule=dm)
    acc = float(trainer.test(module, datamodule=dm, verbose=False)[0]["test/acc"])
    return module.model, acc


def device_of(args: argparse.Namespace) -> torch.device:
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def step_ratio(
    args: argparse.Namespace, ctx: dict[str, Any], model: nn.Module
) -> tuple[float, float]:
    """Median step seconds of ``model`` and its ratio to the float model's, timed just before
    (so a shared machine's load changes hit both alike)."""
    fp = step_seconds(args, ctx["fp"], ctx["batch"])
    step = step_seconds(args, model, ctx["batch"])
    return step, step / fp


def step_seconds(args: argparse.Namespace, model: nn.Module, batch: tuple[Tensor, Tensor]) -> float:
    """Median seconds of a forward + backward + SGD step of a copy of ``model`` on ``batch``.

    ``--warmup-steps`` untimed steps first: Brevitas' activation quantizers collect
    statistics for their first 30 training steps and only then train their scale, so with
    fewer (quick mode) its figure is that of the statistics phase.
    """
    device = device_of(args)
    model = copy.deepcopy(model).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    x, y = batch[0].to(device), batch[1].to(device)
    times = []
    for i in range(args.warmup_steps + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= args.warmup_steps:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- lightning_autoq contenders -------------------------------------------------------------


def autoq_layers(model: nn.Module) -> dict[str, dict[str, Any]]:
    return {
        row[0]: {
            "scheme": row[2],
            "weight_bits": row[3],
            "input_scheme": row[4],
            "input_bits": row[5],
        }
        for row in layer_table(model)
    }


def integer_export(
    args: argparse.Namespace, model: nn.Module, test: list[tuple[Tensor, Tensor]], name: str
) -> dict[str, Any]:
    """export_integer, a check against the simulation on every test batch, the file and its
    accuracy. Power-of-two scales are exported bit-exact; float steps (LSQ) with dyadic
    requantization, checked by the share of test predictions that agree."""
    model = model.cpu().eval()
    try:
        integer_model = export_integer(model, test[0][0], check=True)
        requant = "shift"
    except ExportError as err:
        try:
            integer_model = export_integer(model, test[0][0], check=True, scales="dyadic")
            requant = "dyadic"
        except ExportError as dyadic_err:
            reason = f"export_integer: {err}; with scales='dyadic': {dyadic_err}"
            return {"integer_only": False, "integer_only_reason": reason}
    simulation = lock_for_export(model)
    mismatches = elements = correct = total = agreeing = 0
    for x, y in test:
        report = compare_with_simulation(simulation, integer_model, x)
        mismatches += report.mismatches
        elements += report.elements
        agreeing += round(report.top1_agreement * int(y.numel()))
        with torch.no_grad():
            logits = integer_model.predict(x)
        correct += int((logits.argmax(1) == y).sum())
        total += int(y.numel())
    path = save(integer_model.program, Path(args.out_dir) / f"{name}.int.safetensors")
    sizes = packed_size_bytes(integer_model.program)
    return {
        "format": "lightning_autoq integer program (.int.safetensors: packed weights + JSON)",
        "bytes": path.stat().st_size,
        "packed_weight_bytes": sizes["weights"],
        "bias_bytes": sizes["other"],
        "integer_only": True,
        "requant": requant,
        "bit_exact": mismatches == 0,
        "top1_agreement": agreeing / max(total, 1),
        "checked_outputs": elements,
        "mismatched_outputs": mismatches,
        "integer_test_acc": correct / max(total, 1),
        "max_accumulator_bits": max(r["accumulator_bits"] for r in integer_model.program.report),
    }


def autoq_run(
    args: argparse.Namespace,
    ctx: dict[str, Any],
    policy: QuantPolicy,
    name: str,
    callbacks: list[L.Callback] | None = None,
) -> dict[str, Any]:
    model = convert(copy.deepcopy(ctx["fp"]), policy)
    step = step_ratio(args, ctx, model)
    model, acc = train(args, model, args.lr, args.epochs, callbacks)
    layers = autoq_layers(model)
    export = integer_export(args, model, ctx["test"], name)
    if "bytes" not in export:
        export["format"] = "none (no integer export; theoretical packed size only)"
    bits = {n: r["weight_bits"] for n, r in layers.items()}
    return entry(ctx, acc, step, layers, export, bits)


def entry(
    ctx: dict[str, Any],
    acc: float,
    step: tuple[float, float],
    layers: dict[str, Any],
    export: dict[str, Any],
    bits: dict[str, int],
) -> dict[str, Any]:
    return {
        "status": "ok",
        "test_acc": acc,
        "step_s": step[0],
        "step_x_float": step[1],
        "packed_weight_bytes_theoretical": peers.packed_weight_bytes(ctx["fp"], bits),
        "export": export,
        "integer_only": bool(export.get("integer_only")),
        "layers": layers,
    }


def strip_prefix(policy: QuantPolicy, names: list[str]) -> QuantPolicy:
    """A policy saved from a LightningModule (keys ``model.*``) re-keyed for the bare network."""
    data = policy.to_dict()
    if not any(k.startswith("model.") for k in [*data["overrides"], *data["exclude"]]):
        return policy
    data["overrides"] = {k.removeprefix("model."): v for k, v in data["overrides"].items()}
    data["exclude"] = [k.removeprefix("model.") for k in data["exclude"]]
    stripped = QuantPolicy.from_dict(data)
    stripped.resolve(names)  # fails with the policy's own message if a key matches nothing
    return stripped


# --- peers ------------------------------------------------------------------------------------


def run_contender(
    args: argparse.Namespace, ctx: dict[str, Any], name: str, bits: int
) -> dict[str, Any]:
    edge, fp, batch = args.edge_bits, ctx["fp"], ctx["batch"]
    if name == "autoq_lsq":
        policy = QuantPolicy(LayerConfig("lsq", bits, bits), first_last_bits=edge)
        return autoq_run(args, ctx, policy, f"lsq_w{bits}a{bits}")
    if name == "autoq_int_se":
        policy = QuantPolicy(LayerConfig("int_se", bits, bits, bias_bits=8), first_last_bits=edge)
        lock = BatchNormLock(lock_epoch=0, module_name="model")
        return autoq_run(args, ctx, policy, f"int_se_w{bits}a{bits}", [lock])
    if name == "brevitas":
        model = peers.brevitas_model(fp, bits, edge)
        step = step_ratio(args, ctx, model)
        model, acc = train(args, model, args.lr, args.epochs)
        layers = peers.brevitas_layers(model)
        export = peers.brevitas_export(model, ctx["test"][0][0])
        return entry(ctx, acc, step, layers, export, peers.layer_bits(fp, bits, edge))
    if name == "torch_ao":
        model = peers.torch_ao_model(fp, bits, edge, batch[0])
        layers = peers.torch_ao_layers(model)
        step = step_ratio(args, ctx, model)
        model, acc = train(args, model, args.lr, args.epochs)
        export = peers.torch_ao_export(model, ctx["test"])
        return entry(ctx, acc, step, layers, export, peers.layer_bits(fp, bits, edge))
    if name == "torchao":
        cover = peers.torchao_coverage(fp, bits)
        reason = (
            "torchao's QAT fake-quantizes nn.Linear (and nn.Embedding) layers only: on "
            f"ResNet-20 it fake-quantized {cover['fake_quantized_layers']} and left the "
            f"{len(cover['left_float'])} convolutions in float; the classifier is at "
            f"{edge} bits for every contender, so there is no W{bits}A{bits} model to train"
        )
        return {"status": "not_applicable", "reason": reason, **cover}
    if name == "nncf":
        error = peers.nncf_probe(fp, bits, batch[0])
        if error is None:
            reason = f"nncf.quantize accepted W{bits}A{bits}; this benchmark does not train it"
        else:
            reason = f"nncf.quantize refused W{bits}A{bits}: {error}"
        return {"status": "skipped", "reason": reason, "notes": NNCF_NOTES}
    raise ValueError(f"contender {name!r} is not one of {', '.join(CONTENDERS)}")


def float_model(args: argparse.Namespace) -> tuple[nn.Module, float, str]:
    """The shared float checkpoint: trained here, or loaded from ``--init-checkpoint``."""
    L.seed_everything(args.seed, verbose=False)
    model = resnet20(in_channels=args.in_channels, width=args.width)
    if args.init_checkpoint is not None:
        load_model_weights(model, args.init_checkpoint)
        dm = args.make_datamodule(args)
        module = ImageClassifier(model)
        trainer = _trainer(args, [], 1)
        acc = float(trainer.test(module, datamodule=dm, verbose=False)[0]["test/acc"])
        return model.cpu(), acc, str(args.init_checkpoint)
    model, acc = train(args, model, args.fp_lr, args.fp_epochs)
    path = Path(args.out_dir) / "fp.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model.cpu(), acc, str(path)


def shared_batches(args: argparse.Namespace) -> tuple[tuple[Tensor, Tensor], list]:
    """The timed training batch and the test batches (CPU), from the same data module."""
    dm = args.make_datamodule(args)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    dm.setup("test")
    return (batch[0], batch[1]), [(x, y) for x, y in dm.test_dataloader()]


def policy_files(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    names = [n for n, _ in peers.weight_layers(ctx["fp"])]
    rows = {}
    for label, path in args.policy_yaml:
        print(f"== policy {label} ({path})", flush=True)
        policy = strip_prefix(QuantPolicy.load(path), names)
        row = autoq_run(args, ctx, policy, f"policy_{label}")
        row["policy_file"] = str(path)
        weights = [r["weight_bits"] for r in row["layers"].values()]
        row["mean_weight_bits"] = statistics.fmean(weights)
        rows[label] = row
        print(f"policy {label}: acc {row['test_acc']:.4f}", flush=True)
    return rows


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(report["results"])
    names = [c for c in report["contenders"] if c in TRAINED]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        accs, steps = [], []
        for key in keys:
            row = report["results"][key].get(name, {})
            ok = row.get("status") == "ok"
            accs.append(row["test_acc"] if ok else 0.0)
            steps.append(row["step_x_float"] if ok else 0.0)
        xs = [j + i * width for j in range(len(keys))]
        axes[0].bar(xs, accs, width, label=name)
        axes[1].bar(xs, steps, width, label=name)
    centers = [j + 0.4 - width / 2 for j in range(len(keys))]
    for ax, label in zip(axes, ("test accuracy", "training step time / float"), strict=True):
        ax.set_xticks(centers, [k.upper() for k in keys])
        ax.set_ylabel(label)
    axes[0].axhline(report["float"]["test_acc"], color="k", linewidth=0.8, label="float")
    axes[1].axhline(1.0, color="k", linewidth=0.8)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"ResNet-20 width {report['config']['width']}, {report['device']}", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def _policy_arg(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep:
        label, path = Path(text).stem, text
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"--policy-yaml {text!r}: no such file {path!r}")
    return label, Path(path)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="subset, width 8, 1 epoch, 3+3 timed steps: smoke test"
    )
    p.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    p.add_argument("--bits", type=int, nargs="+", default=[4, 3, 2])
    p.add_argument("--edge-bits", type=int, default=8, help="bits of the first and last layer")
    p.add_argument("--policy-yaml", type=_policy_arg, nargs="+", default=[], metavar="[LABEL=]PATH")
    p.add_argument("--epochs", type=int, default=15, help="QAT epochs of every contender")
    p.add_argument("--fp-epochs", type=int, default=15, help="epochs of the float model")
    p.add_argument("--init-checkpoint", default=None, help="float weights instead of training")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=int, default=None, help="ResNet-20 width (16; quick: 8)")
    p.add_argument("--lr", type=float, default=0.01, help="QAT peak learning rate")
    p.add_argument("--fp-lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="timed training steps (20; quick: 5)")
    p.add_argument(
        "--warmup-steps", type=int, default=None, help="untimed steps before them (32; quick: 3)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    add_run_arguments(p, RESULTS, "runs/benchmarks/peers")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.fp_epochs = 1, 1
        args.train_subset = args.train_subset or 1000
        args.test_subset = args.test_subset or 500
    args.width = args.width or (8 if args.quick else 16)
    args.steps = args.steps or (3 if args.quick else 20)
    if args.warmup_steps is None:
        args.warmup_steps = 3 if args.quick else 32
    require_device(p, args.device)
    if args.epochs < 1 or args.fp_epochs < 1:
        p.error(f"--epochs={args.epochs} and --fp-epochs={args.fp_epochs} must be >= 1")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads={args.threads} must be >= 1")
    if args.steps < 1 or args.warmup_steps < 0:
        p.error(f"--steps={args.steps} must be >= 1, --warmup-steps={args.warmup_steps} >= 0")
    bad = [b for b in args.bits if not 2 <= b <= 4]
    if bad:
        p.error(f"--bits {bad}: allowed 2, 3, 4")
    if not 2 <= args.edge_bits <= 8:
        p.error(f"--edge-bits={args.edge_bits}: allowed 2..8")
    labels = [label for label, _ in args.policy_yaml]
    if len(set(labels)) != len(labels):
        p.error(f"--policy-yaml labels {labels} must be distinct (use LABEL=PATH)")
    return args


def contender_row(
    args: argparse.Namespace, ctx: dict[str, Any], name: str, bits: int
) -> dict[str, Any]:
    """The contender's result, or why it was skipped (its library does not import)."""
    reason = peers.missing(OPTIONAL[name]) if name in OPTIONAL else None
    if reason is not None:
        return {"status": "skipped", "reason": reason}
    return run_contender(args, ctx, name, bits)


def main(argv: list[str] | None = None, make_datamodule: DataFactory | None = None) -> dict:
    """Run the benchmark; ``make_datamodule`` replaces Fashion-MNIST (tests use fake data)."""
    args = parse(argv)
    args.make_datamodule = make_datamodule or fashion_mnist
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.in_channels = 1
    start = time.perf_counter()
    print("== float", flush=True)
    fp, fp_acc, checkpoint = float_model(args)
    batch, test = shared_batches(args)
    ctx: dict[str, Any] = {"fp": fp, "batch": batch, "test": test}
    ctx["fp_step"] = step_seconds(args, fp, batch)
    print(f"float: acc {fp_acc:.4f}, step {ctx['fp_step'] * 1e3:.1f} ms", flush=True)
    results: dict[str, dict[str, Any]] = {f"w{b}a{b}": {} for b in args.bits}
    # Trained contenders first, then the checks: importing NNCF/torchao cannot touch timings.
    order = [n for n in CONTENDERS if n in args.contenders]
    for name in order:
        for bits in args.bits:
            results[f"w{bits}a{bits}"][name] = r = contender_row(args, ctx, name, bits)
            if r["status"] == "ok":
                print(
                    f"W{bits}A{bits} {name:13s} acc {r['test_acc']:.4f}  step "
                    f"{r['step_x_float']:.2f}x float  integer-only {r['integer_only']}",
                    flush=True,
                )
            else:
                print(f"W{bits}A{bits} {name:13s} {r['status']}: {r['reason'][:160]}", flush=True)
    report = {
        "benchmark": "peers",
        "command": "python benchmarks/peers.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "device": device_of(args).type,
        "torch_threads": torch.get_num_threads(),
        "versions": {
            d: peers.version(d)
            for d in ("torch", "lightning", "lightning-autoq", "brevitas", "torchao", "nncf")
        },
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in {"out", "out_dir", "make_datamodule", "policy_yaml"}
        },
        "edge_layers": list(peers.edge_names(fp)),
        "contenders": {n: DESCRIPTIONS[n] for n in args.contenders},
        "float": {
            "test_acc": fp_acc,
            "step_s": ctx["fp_step"],
            "checkpoint": checkpoint,
            "fp32_weight_bytes": 4 * sum(m.weight.numel() for _, m in peers.weight_layers(fp)),
        },
        "results": results,
        "policy_files": policy_files(args, ctx),
    }
    report["wall_s"] = time.perf_counter() - start
    write_json(report, args.out)
    plot(report, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png').name} ({report['wall_s']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
