"""Bad input gets a clear error naming the bad value and what is allowed (docs/reliability.md).

One parametrized case per row of the table in ``docs/reliability.md``: argument checks at
construction, then the checks that need a model (setup and first batch), data, export and the
runtime, and last the atomic writes (no half-written policy, export or data file).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_autoq import LayerConfig, QuantPolicy, convert
from lightning_autoq.callbacks.batchnorm_lock import BatchNormLock
from lightning_autoq.callbacks.distillation import KnowledgeDistillation
from lightning_autoq.callbacks.incremental import IncrementalQuantization
from lightning_autoq.callbacks.integer_export import IntegerExport
from lightning_autoq.callbacks.oscillation import OscillationDampening, OscillationFreezing
from lightning_autoq.callbacks.precision_learning import PrecisionLearning
from lightning_autoq.callbacks.quantize import Quantize
from lightning_autoq.callbacks.scheme_search import SchemeSearch
from lightning_autoq.data import FashionMNISTDataModule, ImageFolderDataModule, write_idx
from lightning_autoq.data.in_memory import InMemoryImageDataModule
from lightning_autoq.data.loading import make_loader
from lightning_autoq.export import ExportError, export_integer
from lightning_autoq.quant import Quantizer
from lightning_autoq.quant.finite import NonFiniteError
from lightning_autoq.runtime import IntegerModel, count_correct, load, save
from lightning_autoq.runtime.format import pack_codes
from tests.callbacks.tiny import TinyNet, tiny_loader
from tests.export.models import quantized_plain_cnn

LSQ = QuantPolicy(LayerConfig("lsq", weight_bits=4, act_bits=4))
INT_SE = QuantPolicy(LayerConfig("int_se", weight_bits=4, act_bits=4, bias_bits=8))

# (argument and bad value, call, error type, regex the message must match: the bad value AND
# the allowed values). The ids are the "test" column of the docs table.
CONSTRUCTION: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    # --- LayerConfig / QuantPolicy / Quantizer
    ("scheme-unknown", lambda: LayerConfig("foo"), ValueError, r"'foo'; available: .*lsq"),
    ("weight_bits-0", lambda: LayerConfig(weight_bits=0), ValueError, r"bits=0 .*allowed: 2\.\.8"),
    ("weight_bits-9", lambda: LayerConfig(weight_bits=9), ValueError, r"bits=9 .*allowed: 2\.\.8"),
    ("act_bits-9", lambda: LayerConfig(act_bits=9), ValueError, r"act .*bits=9 .*allowed: 2\.\.8"),
    ("bias_bits-0", lambda: LayerConfig(bias_bits=0), ValueError, r"bias .*bits=0 .*allowed"),
    (
        "act_scheme-unknown",
        lambda: LayerConfig(act_scheme="nope"),
        ValueError,
        r"'nope'; available: ",
    ),
    (
        "granularity",
        lambda: LayerConfig(granularity="row"),
        ValueError,
        r"granularity='row' is not allowed; allowed: tensor, channel",
    ),
    (
        "backward",
        lambda: LayerConfig(backward="magic"),
        ValueError,
        r"backward='magic' is not allowed; allowed: ste, clipped",
    ),
    (
        "grad_ratio-inf",
        lambda: LayerConfig(grad_ratio=math.inf),
        ValueError,
        r"grad_ratio=inf is not allowed; allowed: a finite value > 0",
    ),
    (
        "act_signed",
        lambda: LayerConfig(act_signed="yes"),
        ValueError,
        r"act_signed='yes' is not allowed; allowed: True, False, None",
    ),
    (
        "scheme_options-unknown",
        lambda: LayerConfig("int_se", scheme_options={"wings": 2}),
        ValueError,
        r"\['wings'\] for scheme 'int_se'; allowed: candidates",
    ),
    (
        "override-bits-0",
        lambda: QuantPolicy(overrides={"fc": {"weight_bits": 0}}),
        ValueError,
        r"override 'fc': weight_bits=0 is not allowed; allowed: 1\.\.8",
    ),
    (
        "override-field",
        lambda: QuantPolicy(overrides={"fc": {"wbits": 4}}),
        ValueError,
        r"\['wbits'\]; allowed: .*weight_bits",
    ),
    (
        "override-scheme",
        lambda: QuantPolicy(overrides={"fc": {"scheme": "foo"}}),
        ValueError,
        r"'foo'; available: ",
    ),
    (
        "first_last_bits-9",
        lambda: QuantPolicy(first_last_bits=9),
        ValueError,
        r"first_last_bits=9 is not allowed; allowed: 1\.\.8 or None",
    ),
    (
        "first_last_bits-0",
        lambda: QuantPolicy(first_last_bits=0),
        ValueError,
        r"first_last_bits=0 is not allowed; allowed: 1\.\.8 or None",
    ),
    (
        "exclude-string",
        lambda: QuantPolicy(exclude="fc"),
        ValueError,
        r"exclude='fc' is not allowed; allowed: a list of layer names",
    ),
    ("pattern-invalid", lambda: QuantPolicy(exclude=["re:("]), ValueError, r"'re:\(': "),
    (
        "policy-yaml-list",
        lambda: QuantPolicy.from_yaml("- a\n- b\n"),
        ValueError,
        r"type list is not allowed; allowed: a mapping with default",
    ),
    (
        "policy-yaml-field",
        lambda: QuantPolicy.from_yaml("defaults: {}\n"),
        ValueError,
        r"\['defaults'\]; allowed: default, first_last_bits",
    ),
    (
        "quantizer-bits-9",
        lambda: Quantizer("clip", 9),
        ValueError,
        r"bits=9 is not allowed for scheme 'clip'; allowed: ",
    ),
    (
        "quantizer-kind",
        lambda: Quantizer("clip", 4, kind="bias"),
        ValueError,
        r"kind='bias' is not allowed; allowed: weight, activation",
    ),
    (
        "quantizer-range_mode",
        lambda: Quantizer("clip", 4, range_mode="running"),
        ValueError,
        r"range_mode='running' .*allowed: dynamic",
    ),
    (
        "quantizer-signed",
        lambda: Quantizer("clip", 4, kind="activation", signed="auto"),
        ValueError,
        r"signed='auto' is not allowed; allowed: True, False, None",
    ),
    (
        "quantizer-ema_decay",
        lambda: Quantizer("clip", 4, kind="activation", ema_decay=1.0),
        ValueError,
        r"ema_decay=1\.0 is not allowed; allowed: \[0, 1\)",
    ),
    # --- callbacks
    (
        "Quantize-policy",
        lambda: Quantize("lsq"),  # type: ignore[arg-type]
        TypeError,
        r"policy must be a QuantPolicy, got str",
    ),
    (
        "SchemeSearch-start-negative",
        lambda: SchemeSearch(-1, 5),
        ValueError,
        r"start_epoch=-1 is not allowed; allowed: an integer >= 0",
    ),
    (
        "SchemeSearch-start-bool",
        lambda: SchemeSearch(True, 5),  # type: ignore[arg-type]
        ValueError,
        r"start_epoch=True is not allowed; allowed: an integer >= 0",
    ),
    (
        "SchemeSearch-range-reversed",
        lambda: SchemeSearch(5, 2),
        ValueError,
        r"end_epoch=2 is not allowed; allowed: int > start_epoch \(5\)",
    ),
    (
        "SchemeSearch-scheme-unknown",
        lambda: SchemeSearch(0, 2, weight_candidates=["lsq", "foo"]),
        ValueError,
        r"'foo'; available: ",
    ),
    (
        "SchemeSearch-candidates-empty",
        lambda: SchemeSearch(0, 2, act_candidates=[]),
        ValueError,
        r"act_candidates is empty; available: ",
    ),
    (
        "SchemeSearch-mode",
        lambda: SchemeSearch(0, 2, mode="net"),  # type: ignore[arg-type]
        ValueError,
        r"mode='net' is not allowed; allowed: layer, model",
    ),
    (
        "SchemeSearch-sampling",
        lambda: SchemeSearch(0, 2, theta_sampling="gumbel"),  # type: ignore[arg-type]
        ValueError,
        r"theta_sampling='gumbel' is not allowed; allowed: ",
    ),
    (
        "SchemeSearch-theta_every",
        lambda: SchemeSearch(0, 2, theta_every=0),
        ValueError,
        r"theta_every=0 is not allowed; allowed: int >= 1",
    ),
    (
        "SchemeSearch-temperature",
        lambda: SchemeSearch(0, 2, temperature=0.0),
        ValueError,
        r"temperature=0\.0 is not allowed; allowed: > 0",
    ),
    (
        "PrecisionLearning-start-negative",
        lambda: PrecisionLearning(-1, 5, weight_budget_bits=3.0),
        ValueError,
        r"start_epoch=-1 is not allowed; allowed: an integer >= 0",
    ),
    (
        "PrecisionLearning-range-reversed",
        lambda: PrecisionLearning(5, 2, weight_budget_bits=3.0),
        ValueError,
        r"end_epoch=2 is not allowed; allowed: an integer >= 6",
    ),
    (
        "PrecisionLearning-no-budget",
        lambda: PrecisionLearning(0, 2),
        ValueError,
        r"needs a budget; allowed: weight_budget_bits",
    ),
    (
        "PrecisionLearning-budget-0",
        lambda: PrecisionLearning(0, 2, weight_budget_bits=0.0),
        ValueError,
        r"weight_budget_bits=0\.0 is not allowed; allowed: > 0",
    ),
    (
        "PrecisionLearning-budget-twice",
        lambda: PrecisionLearning(0, 2, weight_budget_bits=3.0, weight_budget_bytes=100),
        ValueError,
        r"given twice .*allowed: one of them",
    ),
    (
        "PrecisionLearning-memory-negative",
        lambda: PrecisionLearning(0, 2, memory_budget_bytes=-5),
        ValueError,
        r"memory_budget_bytes=-5 is not allowed; allowed: > 0",
    ),
    (
        "PrecisionLearning-min_bits-0",
        lambda: PrecisionLearning(0, 2, weight_budget_bits=3.0, min_bits=0),
        ValueError,
        r"min_bits=0 is not allowed; allowed: 1\.\.8",
    ),
    (
        "PrecisionLearning-max_bits-9",
        lambda: PrecisionLearning(0, 2, weight_budget_bits=3.0, max_bits=9),
        ValueError,
        r"max_bits=9 is not allowed; allowed: 1\.\.8",
    ),
    (
        "PrecisionLearning-bits-reversed",
        lambda: PrecisionLearning(0, 2, weight_budget_bits=3.0, min_bits=6, max_bits=3),
        ValueError,
        r"min_bits=6 > max_bits=3; allowed: min <= max",
    ),
    (
        "PrecisionLearning-gamma",
        lambda: PrecisionLearning(0, 2, weight_budget_bits=3.0, gamma=-1.0),
        ValueError,
        r"gamma=-1\.0 is not allowed; allowed: >= 0",
    ),
    (
        "PrecisionLearning-ramp",
        lambda: PrecisionLearning(0, 2, weight_budget_bits=3.0, ramp_epochs=0),
        ValueError,
        r"ramp_epochs=0 is not allowed; allowed: an integer >= 1",
    ),
    (
        "PrecisionLearning-unsupported",
        lambda: PrecisionLearning(0, 2, weight_budget_bits=3.0, unsupported="skip"),
        ValueError,
        r"unsupported='skip' is not allowed; allowed: error, keep",
    ),
    (
        "Incremental-schedule-empty",
        lambda: IncrementalQuantization(schedule=[]),
        ValueError,
        r"schedule=\[\] is not allowed; allowed: a non-empty list",
    ),
    (
        "Incremental-schedule-1.5",
        lambda: IncrementalQuantization(schedule=[0.5, 1.5]),
        ValueError,
        r"schedule\[1\]=1\.5 is not allowed; allowed: a number in \[0, 1\]",
    ),
    (
        "Incremental-schedule-decreasing",
        lambda: IncrementalQuantization(schedule=[0.75, 0.5]),
        ValueError,
        r"schedule\[1\]=0\.5 is below .*allowed: a non-decreasing sequence",
    ),
    (
        "Incremental-strategy",
        lambda: IncrementalQuantization(strategy="largest"),  # type: ignore[arg-type]
        ValueError,
        r"strategy='largest' is not allowed; allowed: random, magnitude",
    ),
    (
        "Incremental-start-negative",
        lambda: IncrementalQuantization(start_epoch=-2),
        ValueError,
        r"start_epoch=-2 is not allowed; allowed: an integer >= 0",
    ),
    (
        "Incremental-epochs_per_step-0",
        lambda: IncrementalQuantization(epochs_per_step=0),
        ValueError,
        r"epochs_per_step=0 is not allowed; allowed: an integer >= 1",
    ),
    (
        "BatchNormLock-negative",
        lambda: BatchNormLock(lock_epoch=-1),
        ValueError,
        r"lock_epoch=-1 is not allowed; allowed: an integer >= 0",
    ),
    (
        "Dampening-range-reversed",
        lambda: OscillationDampening(start_epoch=4, end_epoch=3),
        ValueError,
        r"end_epoch=3 is not allowed; allowed: > start_epoch=4",
    ),
    (
        "Dampening-start-negative",
        lambda: OscillationDampening(start_epoch=-1),
        ValueError,
        r"start_epoch=-1 is not allowed; allowed: an integer >= 0",
    ),
    (
        "Dampening-weight-inf",
        lambda: OscillationDampening(weight=math.inf),
        ValueError,
        r"weight=inf is not allowed; allowed: a finite value >= 0",
    ),
    (
        "Dampening-schedule",
        lambda: OscillationDampening(schedule="step"),  # type: ignore[arg-type]
        ValueError,
        r"schedule='step' is not allowed; allowed: ",
    ),
    (
        "Freezing-range-reversed",
        lambda: OscillationFreezing(start_epoch=3, end_epoch=3),
        ValueError,
        r"end_epoch=3 is not allowed; allowed: > start_epoch=3",
    ),
    (
        "Freezing-threshold-0",
        lambda: OscillationFreezing(threshold_start=0.0),
        ValueError,
        r"threshold_start=0\.0 is not allowed; allowed: \(0, 1\]",
    ),
    (
        "Freezing-momentum",
        lambda: OscillationFreezing(momentum=2.0),
        ValueError,
        r"momentum=2\.0 is not allowed; allowed: \(0, 1\]",
    ),
    (
        "Freezing-bn_batches",
        lambda: OscillationFreezing(bn_batches=-1),
        ValueError,
        r"bn_batches=-1 is not allowed; allowed: an integer >= 0",
    ),
    (
        "Distillation-temperature",
        lambda: KnowledgeDistillation(temperature=0.0),
        ValueError,
        r"temperature=0\.0 is not allowed; allowed: > 0",
    ),
    (
        "Distillation-alpha",
        lambda: KnowledgeDistillation(alpha=1.5),
        ValueError,
        r"alpha=1\.5 is not allowed; allowed: \[0, 1\]",
    ),
    (
        "IntegerExport-check_batches",
        lambda: IntegerExport(check_batches=0),
        ValueError,
        r"check_batches=0 is not allowed; allowed: >= 1",
    ),
    # --- data modules
    (
        "data-batch_size-0",
        lambda: FashionMNISTDataModule(batch_size=0),
        ValueError,
        r"batch_size=0 is not allowed; allowed: an integer >= 1",
    ),
    (
        "data-num_workers-negative",
        lambda: FashionMNISTDataModule(num_workers=-1),
        ValueError,
        r"num_workers=-1 is not allowed; allowed: an integer >= 0",
    ),
    (
        "data-val_size-negative",
        lambda: FashionMNISTDataModule(val_size=-1),
        ValueError,
        r"val_size=-1 is not allowed; allowed: an integer >= 0",
    ),
    (
        "data-train_subset-0",
        lambda: FashionMNISTDataModule(train_subset=0),
        ValueError,
        r"train_subset=0 is not allowed; allowed: an integer >= 1 or None",
    ),
    (
        "data-search_size-negative",
        lambda: FashionMNISTDataModule(search_size=-1),
        ValueError,
        r"search_size=-1 is not allowed; allowed: an integer >= 0",
    ),
    (
        "data-image_size-0",
        lambda: ImageFolderDataModule("a", "b", image_size=0),
        ValueError,
        r"image_size=0 is not allowed; allowed: an integer >= 1",
    ),
    # --- runtime
    (
        "pack_codes-bits-17",
        lambda: pack_codes(torch.zeros(4, dtype=torch.int32), 17),
        ValueError,
        r"bits=17 is not allowed; allowed: 1\.\.16",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [pytest.param(c, e, m, id=i) for i, c, e, m in CONSTRUCTION],
)
def test_a_bad_argument_is_refused_at_construction(
    call: Callable[[], Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        call()


# ----------------------------------------------------------------------------- policies
def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        pytest.param(
            QuantPolicy(overrides={"re:conv.*": {"weight_bits": 2}}),
            r"policy key 're:conv\.\*' matches no quantizable layer; layers: 0, 2",
            id="override-pattern",
        ),
        pytest.param(
            QuantPolicy(overrides={"fc": {"weight_bits": 2}}),
            r"policy key 'fc' matches no quantizable layer; layers: 0, 2",
            id="override-name",
        ),
        pytest.param(
            QuantPolicy(exclude=["head"]),
            r"policy key 'head' matches no quantizable layer; layers: 0, 2",
            id="exclude",
        ),
        pytest.param(
            QuantPolicy(LayerConfig("binary", weight_bits=1, act_bits=1)),
            r"layer '0': .*bits=8 is not allowed for scheme 'binary'; allowed: 1 "
            r"\(first_last_bits=8 applies",
            id="first_last_bits-vs-scheme",
        ),
    ],
)
def test_a_policy_that_does_not_fit_the_model_names_the_key_and_the_layers(
    policy: QuantPolicy, message: str
) -> None:
    model = _mlp()
    with pytest.raises(ValueError, match=message):
        convert(model, policy)
    assert type(model[0]) is nn.Linear  # nothing converted


def test_a_model_without_quantizable_layers_lists_the_supported_types() -> None:
    with pytest.raises(ValueError, match=r"ReLU has no quantizable layer \(exact types: .*Linear"):
        convert(nn.ReLU())


def test_precision_learning_exclude_matching_no_layer_lists_the_layers() -> None:
    net = TinyNet()
    convert(net, LSQ)
    qpl = PrecisionLearning(0, 2, weight_budget_bits=3.0, exclude=["model.9"])
    with pytest.raises(ValueError, match=r"exclude entry 'model\.9' matches no .*model\.0, "):
        qpl.setup(None, net, "fit")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- budgets
def test_a_weight_budget_below_min_bits_everywhere_fails_at_setup() -> None:
    net = TinyNet()
    convert(net, QuantPolicy(LSQ.default, first_last_bits=None))
    qpl = PrecisionLearning(0, 2, weight_budget_bits=1.0, min_bits=2)
    with pytest.raises(ValueError, match=r"weight budget .*impossible.*allowed: a budget of at"):
        qpl.setup(None, net, "fit")  # type: ignore[arg-type]


def test_a_memory_budget_that_cannot_be_met_fails_on_the_first_batch(tmp_path: Path) -> None:
    qpl = PrecisionLearning(0, 1, memory_budget_bytes=1, min_bits=2)
    trainer = _trainer(tmp_path, [Quantize(LSQ), qpl])
    with pytest.raises(ValueError, match=r"memory budget of 1\.0 bytes .*impossible.*allowed"):
        trainer.fit(TinyNet(), train_dataloaders=tiny_loader())


# ----------------------------------------------------------------------------- NaN / Inf
def _trainer(tmp_path: Path, callbacks: list[L.Callback]) -> L.Trainer:
    return L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
    )


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_quantize_refuses_non_finite_weights_naming_the_parameter(
    tmp_path: Path, value: float
) -> None:
    net = TinyNet()
    with torch.no_grad():
        net.model[3].weight[0, 0, 0, 0] = value
    kind = "NaN" if math.isnan(value) else "Inf"
    counts = "1 NaN and 0 Inf" if kind == "NaN" else "0 NaN and 1 Inf"
    with pytest.raises(NonFiniteError, match=rf"parameter 'model\.3\.weight' holds {counts}"):
        _trainer(tmp_path, [Quantize(LSQ)]).fit(net, train_dataloaders=tiny_loader())
    assert type(net.model[3]) is nn.Conv2d  # refused before any layer was swapped


def test_non_finite_batch_norm_statistics_are_named() -> None:
    net = TinyNet()
    net.model[1].running_var[2] = math.inf
    with pytest.raises(NonFiniteError, match=r"buffer 'model\.1\.running_var' holds 0 NaN and 1"):
        convert(net, LSQ)


@pytest.mark.parametrize("train", [True, False], ids=["training", "calibration"])
def test_a_first_batch_with_nan_names_the_layer_and_leaves_it_uncalibrated(train: bool) -> None:
    model = convert(_mlp(), LSQ).train(train)
    x = torch.randn(5, 4)
    x[1, 2] = math.nan
    with pytest.raises(NonFiniteError, match=r"layer '0': the input of the first batch \(lsq, 8"):
        model(x)
    assert not bool(model[0].act_quant.initialized)
    out = model(torch.randn(5, 4))  # a finite batch then calibrates as usual
    assert torch.isfinite(out).all() and bool(model[0].act_quant.initialized)
    assert torch.isfinite(model[0].act_quant.scale).all()


def test_a_nan_input_batch_fails_training_at_the_first_step(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 1, 8, 8, generator=g)
    x[3, 0, 4, 4] = math.nan
    loader = DataLoader(TensorDataset(x, torch.randint(0, 3, (24,), generator=g)), batch_size=12)
    with pytest.raises(NonFiniteError, match=r"layer 'model\.0': the input of the first batch"):
        _trainer(tmp_path, [Quantize(LSQ)]).fit(TinyNet(), train_dataloaders=loader)


@pytest.fixture(scope="module")
def integer_model() -> tuple[nn.Module, IntegerModel]:
    model = quantized_plain_cnn(6)
    return model, export_integer(model, torch.randn(4, 1, 14, 14))


@pytest.mark.parametrize(
    ("example", "message"),
    [
        pytest.param(
            torch.full((2, 1, 14, 14), math.nan),
            r"example_input holds 392 NaN and 0 Inf of 392 values; allowed: finite values",
            id="nan",
        ),
        pytest.param(
            torch.full((2, 1, 14, 14), -math.inf),
            r"example_input holds 0 NaN and 392 Inf of 392 values; allowed: finite",
            id="inf",
        ),
        pytest.param(
            torch.zeros(0, 1, 14, 14),
            r"example_input='a torch\.float32 tensor of shape \(0, 1, 14, 14\)' is not "
            r"allowed; allowed: a non-empty float batch",
            id="empty",
        ),
        pytest.param(
            torch.zeros(2, 1, 14, 14, dtype=torch.uint8),
            r"example_input='a torch\.uint8 tensor .*allowed: a non-empty float batch",
            id="integer",
        ),
    ],
)
def test_export_refuses_a_bad_example_input(integer_model, example, message: str) -> None:
    model, _ = integer_model
    with pytest.raises(ExportError, match=message):
        export_integer(model, example)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_the_integer_model_refuses_non_finite_inputs(integer_model, value: float) -> None:
    _, int_model = integer_model
    x = torch.randn(2, 1, 14, 14)
    x[0, 0, 0, 0] = value
    with pytest.raises(ValueError, match=r"the input holds \d NaN and \d Inf of 392 values; allow"):
        int_model.quantize_input(x)
    with pytest.raises(ValueError, match=r"allowed: finite values"):
        int_model.predict(x)


def test_the_integer_model_refuses_float_codes(integer_model) -> None:
    _, int_model = integer_model
    with pytest.raises(TypeError, match=r"takes integer codes, got torch\.float32"):
        int_model(torch.zeros(1, 1, 14, 14))


# ----------------------------------------------------------------------------- untraceable
class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace ``if x.sum() > 0``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        if x.sum() > 0:
            x = torch.relu(x)
        return self.fc(x.flatten(1))


def test_batchnorm_lock_on_an_untraceable_model_says_what_to_do() -> None:
    model = convert(Untraceable(), INT_SE)
    with pytest.raises(ValueError, match=r"cannot trace Untraceable with torch\.fx .*module_name="):
        BatchNormLock().setup(None, model, "fit")  # type: ignore[arg-type]


def test_export_of_an_untraceable_model_says_what_to_do() -> None:
    model = convert(Untraceable(), INT_SE)
    model(torch.randn(4, 1, 8, 8))  # calibrate
    with pytest.raises(ExportError, match=r"cannot trace Untraceable .*traceable submodule"):
        export_integer(model.eval(), torch.randn(2, 1, 8, 8))


# ----------------------------------------------------------------------------- empty data
class _Synthetic(InMemoryImageDataModule):
    num_classes, in_channels, image_size = 3, 1, 8
    mean, std, padding = (0.5,), (0.25,), 1

    def __init__(self, n_train: int, n_test: int, **kwargs: Any) -> None:
        super().__init__(batch_size=4, augment=False, **kwargs)
        self.sizes = (n_train, n_test)

    def load(self):
        n_train, n_test = self.sizes
        g = torch.Generator().manual_seed(0)

        def images(n: int) -> torch.Tensor:
            return torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)

        return images(n_train), torch.zeros(n_train).long(), images(n_test), torch.zeros(n_test)


@pytest.mark.parametrize(
    ("sizes", "kwargs", "message"),
    [
        pytest.param(
            (0, 5),
            {"val_size": 0},
            r"_Synthetic loaded 0 training and 5 test images; allowed: a dataset with images",
            id="no-training-images",
        ),
        pytest.param(
            (6, 0),
            {"val_size": 0},
            r"_Synthetic loaded 6 training and 0 test images; allowed",
            id="no-test-images",
        ),
        pytest.param(
            (6, 5),
            {"val_size": 6},
            r"val_size=6 must be smaller than the 6 training images",
            id="val_size-takes-all",
        ),
        pytest.param(
            (6, 5),
            {"val_size": 2, "train_subset": 5},
            r"train_subset=5 is larger than the 4 images available",
            id="train_subset-too-large",
        ),
    ],
)
def test_empty_datasets_fail_at_setup(sizes, kwargs, message: str) -> None:
    dm = _Synthetic(*sizes, **kwargs)
    with pytest.raises(ValueError, match=message):
        dm.setup("fit")


def test_an_empty_split_has_no_loader() -> None:
    empty = TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0))
    with pytest.raises(ValueError, match=r"Owner has an empty training set; allowed: at least"):
        make_loader(
            empty, batch_size=4, num_workers=0, shuffle=True, owner="Owner", split="training"
        )


def test_a_search_split_that_takes_every_training_image_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "fm"
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", torch.zeros(n, 28, 28, dtype=torch.uint8))
        write_idx(
            folder / f"{prefix}-labels-idx1-ubyte",
            torch.randint(0, 10, (n,), generator=g).to(torch.uint8),
        )
    dm = FashionMNISTDataModule(str(folder), val_size=10, search_size=20, download=False)
    with pytest.raises(ValueError, match=r"search_size=20 must be smaller than the 20 training"):
        dm.setup("fit")


def test_an_empty_search_loader_fails_at_fit_start(tmp_path: Path) -> None:
    search = SchemeSearch(0, 1, weight_candidates=["lsq", "clip"], search_dataloader=[])
    trainer = _trainer(tmp_path, [Quantize(LSQ), search])
    model = TinyNet()
    with pytest.raises(ValueError, match=r"the search dataloader is empty; allowed: one with at"):
        trainer.fit(model, train_dataloaders=tiny_loader())
    assert trainer.global_step == 0  # refused before any training step


def test_evaluating_on_no_data_is_an_error_not_zero_accuracy() -> None:
    with pytest.raises(ValueError, match=r"gave 0 samples; allowed: at least one sample"):
        count_correct(lambda x: x, [])


@pytest.mark.parametrize("layout", ["missing", "empty", "no-images"])
def test_image_folders_that_hold_no_images_are_named(tmp_path: Path, layout: str) -> None:
    train = tmp_path / "train"
    if layout != "missing":
        train.mkdir()
    if layout == "no-images":
        (train / "cat").mkdir()
        (train / "cat" / "notes.txt").write_text("no image here")
    dm = ImageFolderDataModule(str(train), str(train), num_workers=0)
    error = FileNotFoundError if layout == "missing" else ValueError
    allowed = "an existing folder" if layout == "missing" else "a folder with one subfolder"
    with pytest.raises(error, match=rf"train_dir='{re.escape(str(train))}' .*allowed: {allowed}"):
        dm.setup("fit")


def test_loading_a_file_that_is_not_an_export_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.int.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"is not a readable safetensors file"):
        load(path)


# ----------------------------------------------------------------------------- atomic writes
def _fail_midway(real: Callable[..., Any]) -> Callable[..., Any]:
    """A writer that writes part of the bytes to its target, then fails (a full disk)."""

    def write(self: Path, data: bytes) -> int:
        real(self, data[: len(data) // 2])
        raise OSError("No space left on device")

    return write


def test_a_policy_write_that_fails_midway_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "policy.yaml"
    old = QuantPolicy(LayerConfig("clip", weight_bits=2, act_bits=2))
    old.save(path)
    before = path.read_bytes()
    monkeypatch.setattr(Path, "write_bytes", _fail_midway(Path.write_bytes))
    with pytest.raises(OSError, match="No space left"):
        LSQ.save(path)
    assert path.read_bytes() == before  # the old policy, whole
    assert [p.name for p in tmp_path.iterdir()] == ["policy.yaml"]  # no temporary file left
    assert QuantPolicy.load(path) == old


def test_an_export_write_that_fails_midway_keeps_the_old_file(
    integer_model, tmp_path: Path, monkeypatch
) -> None:
    _, int_model = integer_model
    path = save(int_model.program, tmp_path / "model.int.safetensors")
    before = path.read_bytes()
    from safetensors.torch import save_file as real_save

    def partial(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as handle:
            handle.truncate(100)  # half-written
        raise OSError("No space left on device")

    monkeypatch.setattr("lightning_autoq.runtime.format.save_file", partial)
    with pytest.raises(OSError, match="No space left"):
        save(int_model.program, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.int.safetensors"]
    loaded = load(path)
    assert loaded.tensors.keys() == int_model.program.tensors.keys()
    assert all(torch.equal(t, int_model.program.tensors[k]) for k, t in loaded.tensors.items())


def test_an_idx_write_that_fails_midway_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(Path, "write_bytes", _fail_midway(Path.write_bytes))
    with pytest.raises(OSError, match="No space left"):
        write_idx(tmp_path / "images-idx3-ubyte", torch.zeros(3, 4, 4, dtype=torch.uint8))
    assert list(tmp_path.iterdir()) == []
