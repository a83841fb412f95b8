"""Benchmark of AutoQNN's scheme search (QSS, https://arxiv.org/abs/2304.03782).

On Fashion-MNIST ResNet-20 at W2A2 and W3A3, with equal epochs and the same training images:
the test accuracy of the searched policy (``SchemeSearch`` then training on with the fixed
policy) against each single AutoQNN scheme used everywhere, and the time of a search step
(theta step + weight step) against a plain QAT step (target: at most 2x).

Each single scheme runs at ``min(bits, its largest width)`` (binary 1 bit, ternary 2); the
first and last layers at 8 bits clamped likewise, as in the search's candidates. ``--mode
layer model`` runs both searches (logits per tensor, one set for the whole model); each
searched policy is saved as ``scheme_policy_w{b}a{b}_{mode}.yaml`` in ``--out-dir``.

    python benchmarks/scheme_search.py            # full: 20 epochs (10 search), all data
    python benchmarks/scheme_search.py --quick    # smoke test: a subset, 1 epoch
    python benchmarks/scheme_search.py --step-time-only   # only the step-time ratio
    python benchmarks/scheme_search.py --device cuda      # on a GPU

The step times are measured in one process, plain QAT and search runs interleaved
(``--rounds`` rounds of ``--steps`` batches each), so a shared machine's load hits both alike.

Writes ``benchmarks/results/scheme_search.json`` (``--step-time-only``:
``scheme_search_step_time.json``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lightning_autoq import AUTOQNN_SCHEMES, LayerConfig, QuantPolicy  # noqa: E402
from lightning_autoq.callbacks import Quantize  # noqa: E402
from lightning_autoq.callbacks.scheme_search import SchemeSearch  # noqa: E402
from lightning_autoq.data import FashionMNISTDataModule  # noqa: E402
from lightning_autoq.quant.mixture import SAMPLINGS, candidate_bits  # noqa: E402
from lightning_autoq.utils.benchmarking import (  # noqa: E402
    StepTimer,
    accelerator,
    add_model_arguments,
    add_run_arguments,
    require_device,
    resnet20_classifier,
    write_json,
)

RESULTS = ROOT / "benchmarks" / "results" / "scheme_search.json"
DEVICES = ("auto", "cpu", "cuda")


def datamodule(args: argparse.Namespace) -> FashionMNISTDataModule:
    return FashionMNISTDataModule(
        args.data_dir,
        batch_size=args.batch_size,
        val_size=0,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        search_size=args.search_size,
        augment=not args.quick,
        download=False,
    )


def _trainer(args: argparse.Namespace, callbacks: list[L.Callback], **kwargs: Any) -> L.Trainer:
    return L.Trainer(
        callbacks=callbacks,
        accelerator=accelerator(args.device),
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.out_dir,
        **kwargs,
    )


def run(args: argparse.Namespace, callbacks: list[L.Callback]) -> float:
    """Train ResNet-20 for ``args.epochs`` epochs with ``callbacks``; the test accuracy."""
    L.seed_everything(0, verbose=False)
    dm = datamodule(args)
    module = resnet20_classifier(args, lr=args.lr, weight_decay=1e-4)
    trainer = _trainer(args, callbacks, max_epochs=args.epochs)
    trainer.fit(module, datamodule=dm)
    return float(trainer.test(module, datamodule=dm, verbose=False)[0]["test/acc"])


def make_search(args: argparse.Namespace, end_epoch: int, mode: str) -> SchemeSearch:
    return SchemeSearch(
        0,
        end_epoch,
        mode=mode,  # type: ignore[arg-type]
        lr=args.theta_lr,
        weight_candidates=args.weight_candidates,
        act_candidates=args.act_candidates,
        weight_sampling=args.weight_sampling,
        theta_sampling=args.theta_sampling,
        theta_every=args.theta_every,
    )


def step_times(args: argparse.Namespace, bits: int) -> dict[str, Any]:
    """Mean step times of plain QAT (clip everywhere) and of the search, interleaved.

    Means, over a whole number of ``theta_every`` periods after as many warm-up steps (at
    least 2): with ``theta_every > 1`` a median would miss the theta steps.
    """
    dm = datamodule(args)
    policy = single_policy("clip", bits)
    period = args.theta_every
    skip = period * math.ceil(2 / period)
    timed = period * max(1, math.ceil((args.steps - 2) / period))
    dm.setup("fit")
    available = len(dm.train_dataloader())
    if skip + timed > available:
        raise SystemExit(
            f"--steps {args.steps} with --theta-every {period} needs {skip + timed} batches per "
            f"epoch; the training split has {available}: raise --train-subset"
        )
    times: dict[str, list[float]] = {"qat": [], "search": []}
    for _ in range(args.rounds):
        for kind in ("qat", "search"):
            L.seed_everything(0, verbose=False)
            module = resnet20_classifier(args, lr=args.lr, weight_decay=1e-4)
            timer = StepTimer(skip=skip)
            callbacks: list[L.Callback] = [timer, Quantize(policy)]
            if kind == "search":
                callbacks.append(make_search(args, 1, args.mode[0]))
            trainer = _trainer(
                args, callbacks, max_epochs=1, limit_train_batches=skip + timed, limit_val_batches=0
            )
            trainer.fit(module, datamodule=dm)
            times[kind] += timer.times
    qat, search = statistics.fmean(times["qat"]), statistics.fmean(times["search"])
    print(
        f"W{bits}A{bits} step time: search {search * 1e3:.1f} ms, QAT {qat * 1e3:.1f} ms, "
        f"ratio {search / qat:.2f}x (target <= 2x; {len(times['search'])} steps each)",
        flush=True,
    )
    return {"search": search, "qat": qat, "ratio": search / qat, "steps": len(times["search"])}


def single_policy(scheme: str, bits: int) -> QuantPolicy:
    b = candidate_bits(scheme, bits)
    assert b is not None
    return QuantPolicy(LayerConfig(scheme, b, b), first_last_bits=candidate_bits(scheme, 8))


def searched_row(args: argparse.Namespace, bits: int, mode: str) -> dict[str, Any]:
    """Search over ``args.search_epochs`` epochs, then train on with the fixed policy."""
    search = make_search(args, args.search_epochs, mode)
    acc = run(args, [Quantize(single_policy("clip", bits)), search])
    assert search.policy is not None
    chosen = search.chosen_schemes()
    policy_file = Path(args.out_dir) / f"scheme_policy_w{bits}a{bits}_{mode}.yaml"
    search.policy.save(policy_file)
    # How decided the search ended: the chosen scheme's probability, averaged over tensors.
    decided = [max(dist.values()) for _, _, dist in search.distributions()]
    print(f"searched policy ({mode}): acc {acc:.4f}", flush=True)
    return {
        "test_acc": acc,
        "policy_file": str(policy_file),
        "scheme_counts": dict(Counter(chosen.values())),
        "mean_chosen_probability": statistics.fmean(decided),
        "chosen": chosen,
        "policy": search.policy.to_dict(),
    }


def bench_bits(args: argparse.Namespace, bits: int) -> dict[str, Any]:
    print(f"== W{bits}A{bits}", flush=True)
    searched = {mode: searched_row(args, bits, mode) for mode in args.mode}
    single: dict[str, float] = {}
    for scheme in args.schemes:
        single[scheme] = run(args, [Quantize(single_policy(scheme, bits))])
        print(f"single {scheme:16s} acc {single[scheme]:.4f}", flush=True)
    return {
        "searched": searched,
        "single": single,
        "best_single": max(single, key=single.__getitem__) if single else None,
        "step_time_s": step_times(args, bits),
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="subset, 1 epoch: a smoke test")
    p.add_argument("--step-time-only", action="store_true", help="only the step-time ratio")
    p.add_argument("--steps", type=int, default=8, help="batches per step-time run")
    p.add_argument("--rounds", type=int, default=2, help="interleaved step-time rounds")
    p.add_argument("--weight-sampling", choices=SAMPLINGS, default="hard")
    p.add_argument("--theta-sampling", choices=SAMPLINGS, default="pair")
    p.add_argument("--theta-every", type=int, default=1)
    p.add_argument("--bits", type=int, nargs="+", default=[2, 3])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--search-epochs", type=int, default=10)
    p.add_argument("--mode", nargs="+", choices=["layer", "model"], default=["layer"])
    p.add_argument("--theta-lr", type=float, default=3e-3, help="the theta optimizer's lr")
    p.add_argument("--schemes", nargs="*", default=list(AUTOQNN_SCHEMES), help="single runs")
    p.add_argument("--weight-candidates", nargs="+", default=list(AUTOQNN_SCHEMES))
    p.add_argument("--act-candidates", nargs="+", default=list(AUTOQNN_SCHEMES))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--search-size", type=int, default=11000)
    add_model_arguments(p)
    add_run_arguments(p, RESULTS, "runs/benchmarks/scheme_search")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.search_epochs = 1, 1
        args.train_subset = args.train_subset or 2000
        args.test_subset = args.test_subset or 1000
        args.search_size = min(args.search_size, 500)
    require_device(p, args.device)
    if args.steps < 3 or args.rounds < 1 or args.theta_every < 1:
        p.error("--steps must be >= 3 (2 warm-up steps), --rounds and --theta-every >= 1")
    if not 0 < args.search_epochs <= args.epochs:
        p.error(f"--search-epochs={args.search_epochs} must be in 1..--epochs ({args.epochs})")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    start = time.perf_counter()
    out = args.out
    if args.step_time_only and out == RESULTS:
        out = RESULTS.with_name("scheme_search_step_time.json")
    results: dict[str, Any] = {}
    report = {
        "benchmark": "scheme_search",
        "quick": args.quick,
        "device": "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in {"out", "out_dir"}
        },
        "results": results,
        "complete": False,
    }
    for b in args.bits:  # the JSON is rewritten after each bit-width: a cut run keeps its rows
        row = {"step_time_s": step_times(args, b)} if args.step_time_only else bench_bits(args, b)
        results[f"w{b}a{b}"] = row
        report["wall_s"] = time.perf_counter() - start
        write_json(report, out)
    report["complete"] = True
    write_json(report, out)
    print(f"wrote {out} ({report['wall_s']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
