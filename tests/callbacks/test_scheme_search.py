"""SchemeSearch inside a real Trainer: theta moves, exclusion, fixing, reload, resume, DDP."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import lightning as L
import pytest
import torch
import wandb
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_autoq import LayerConfig, QuantPolicy, convert
from lightning_autoq.callbacks import Quantize
from lightning_autoq.callbacks.scheme_search import SchemeSearch
from lightning_autoq.quant import AUTOQNN_SCHEMES
from lightning_autoq.quant.mixture import SchemeMixture, collapse, mixtures
from tests.callbacks.tiny import POLICY, TinyNet, tiny_loader

FEW = ("binary", "clip", "zoom")


def search_loader(seed: int = 1) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(
        torch.randn(24, 1, 8, 8, generator=g), torch.randint(0, 3, (24,), generator=g)
    )
    return DataLoader(data, batch_size=12)


def _trainer(tmp_path: Path, epochs: int, search: SchemeSearch, **kwargs) -> L.Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    return L.Trainer(
        max_epochs=epochs,
        callbacks=[Quantize(POLICY), search],
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kwargs,
    )


def _search(**kwargs) -> SchemeSearch:
    kwargs = {
        "weight_candidates": FEW,
        "act_candidates": FEW,
        "search_dataloader": search_loader(),
        **kwargs,
    }
    return SchemeSearch(**kwargs)


# --------------------------------------------------------------------- a constructed task
class Teacher(L.LightningModule):
    """Regress a fixed linear map: 8-bit clip fits it, binary weights cannot."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16, bias=False)
        self.target = nn.Linear(16, 16, bias=False).requires_grad_(False)
        self.target.weight.data.copy_(self.fc.weight.data)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)

    def training_step(self, batch, batch_idx):
        return mse(self, batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def mse(module: Teacher, batch) -> torch.Tensor:
    (x,) = batch
    return nn.functional.mse_loss(module(x), module.target(x))


def regression_loader(seed: int) -> DataLoader:
    return DataLoader(
        TensorDataset(torch.randn(64, 16, generator=torch.Generator().manual_seed(seed))),
        batch_size=16,
    )


# Pair sampling (two candidates per theta step) finds the better scheme on every seed tried
# (0-4: its probability 0.85-0.93 after 6 epochs, soft 0.91-0.95); hard (GDAS) theta steps
# did not (argmax on 2 of 5 seeds).
@pytest.mark.parametrize(
    ("theta_sampling", "seed"), [("soft", 0), ("pair", 0), ("pair", 1), ("pair", 2)]
)
def test_theta_moves_to_the_clearly_better_scheme(
    tmp_path: Path, theta_sampling: str, seed: int
) -> None:
    L.seed_everything(seed)
    module = Teacher()
    policy = QuantPolicy(
        LayerConfig("clip", 8, act_bits=None, bias_bits=None),
        first_last_bits=None,
        overrides={},
        exclude=["target"],
    )
    search = SchemeSearch(
        0,
        6,
        weight_candidates=("binary", "clip", "ternary"),
        lr=0.1,
        search_dataloader=regression_loader(1),
        loss_fn=mse,
        theta_sampling=theta_sampling,
        seed=seed,
    )
    trainer = L.Trainer(
        max_epochs=6,
        callbacks=[Quantize(policy), search],
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, regression_loader(0))
    cell = module.fc.weight_quant
    assert isinstance(cell, SchemeMixture) and cell.names == ["binary", "clip", "ternary"]
    probs = cell.probabilities()
    assert probs[1] > 0.8 and probs[1] == probs.max(), probs
    assert cell.fixed and cell.candidate.scheme.name == "clip"
    assert module.fc.config.scheme == "clip" and module.fc.config.weight_bits == 8


# --------------------------------------------------------------------- the tiny network
class ThetaWatch(L.Callback):
    """Checks that the weight optimizer's step leaves theta unchanged."""

    def __init__(self, search: SchemeSearch) -> None:
        self.search = search
        self.before: list[torch.Tensor] = []
        self.checked = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        ids = {id(t) for t in self.search.thetas()}
        assert not any(id(p) in ids for g in optimizer.param_groups for p in g["params"])
        # theta requires a gradient only inside theta steps: the weight loss gives it none.
        assert all(t.grad is None and not t.requires_grad for t in self.search.thetas())
        self.before = [t.detach().clone() for t in self.search.thetas()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        after = self.search.thetas()
        assert all(torch.equal(a, b) for a, b in zip(after, self.before, strict=True))
        self.checked += 1


def test_weight_optimizer_never_changes_theta(tmp_path: Path) -> None:
    L.seed_everything(0)
    module = TinyNet()
    search = _search(start_epoch=1, end_epoch=2)
    watch = ThetaWatch(search)
    trainer = _trainer(tmp_path, 2, search)
    trainer.callbacks.append(watch)
    trainer.fit(module, tiny_loader())
    assert watch.checked == 8
    thetas = search.thetas()
    # 3 layers x (weight, activation) cells; theta ids are in no optimizer of the module.
    assert len(thetas) == 6
    assert all(
        id(t) in module.seen_optimizer_params for t in thetas
    )  # configure_optimizers had them
    ids = {id(t) for t in thetas}
    assert not any(id(p) in ids for g in trainer.optimizers[0].param_groups for p in g["params"])
    # The search steps did move theta.
    assert any(t.abs().sum() > 0 for t in thetas)


def test_fixed_policy_is_written_and_reproduces_outputs(tmp_path: Path) -> None:
    L.seed_everything(0)
    module = TinyNet()
    search = _search(start_epoch=0, end_epoch=2, lr=0.05, act_candidates=AUTOQNN_SCHEMES)
    logger = CSVLogger(tmp_path, name="csv")
    trainer = _trainer(tmp_path, 3, search, logger=logger)
    trainer.fit(module, tiny_loader())
    cells = mixtures(module)
    assert len(cells) == 6 and all(cell.fixed for _, cell in cells)
    # The layers' configs follow the chosen candidates.
    for _, layer in [("0", module.model[0]), ("3", module.model[3]), ("6", module.model[6])]:
        assert layer.config.scheme == layer.weight_quant.candidate.scheme.name
        assert layer.config.weight_bits == layer.weight_quant.candidate.bits
        assert layer.config.act_scheme == layer.act_quant.candidate.scheme.name
        assert layer.config.act_bits == layer.act_quant.candidate.bits
    # Policy YAML, heatmap and distribution table next to each other in the log folder.
    log_dir = Path(logger.log_dir)
    assert search.policy_path == log_dir / "scheme_policy.yaml"
    policy = QuantPolicy.load(search.policy_path)
    assert policy == search.policy
    assert (log_dir / "scheme_distribution.png").stat().st_size > 0
    rows = list(csv.reader((log_dir / "autoq_scheme_distribution.csv").open()))
    assert rows[0][:3] == ["epoch", "layer", "kind"] and len(rows) == 1 + 2 * 6
    # Fixed cells compute exactly their candidate; a fresh float model converted with the
    # written policy and given the candidates' state reproduces the outputs bit for bit.
    module.eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        expected = module(x)
        collapsed = collapse(copy.deepcopy(module))
        assert torch.equal(collapsed(x), expected)
        fresh = convert(TinyNet(), policy)
        fresh.load_state_dict(collapsed.state_dict())
        assert torch.equal(fresh.eval()(x), expected)
    # A later stage's setup (Quantize rebuilds layers whose config changed) keeps the cells.
    layer = module.model[3]
    trainer.test(module, tiny_loader(), verbose=False)
    assert module.model[3] is layer and isinstance(layer.weight_quant, SchemeMixture)
    with torch.no_grad():
        assert torch.equal(module.eval()(x), expected)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_resume_mid_search_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    # Search epochs 0-1 then one fixed epoch; the checkpoint is taken after search epoch 0.
    L.seed_everything(0)
    straight = TinyNet()
    s1 = _search(start_epoch=0, end_epoch=2, lr=0.05)
    _trainer(tmp_path / "a", 3, s1, limit_train_batches=2).fit(straight, tiny_loader())

    L.seed_everything(0)
    first = TinyNet()
    s2 = _search(start_epoch=0, end_epoch=2, lr=0.05)
    _trainer(tmp_path / "b", 1, s2, limit_train_batches=2, enable_checkpointing=True).fit(
        first, tiny_loader()
    )
    assert not any(cell.fixed for _, cell in mixtures(first))
    assert any(t.abs().sum() > 0 for t in s2.thetas())
    ckpt = next((tmp_path / "b" / "checkpoints").glob("*.ckpt"))
    L.seed_everything(0)
    resumed = TinyNet()
    s3 = _search(start_epoch=0, end_epoch=2, lr=0.05)
    _trainer(tmp_path / "c", 3, s3, limit_train_batches=2).fit(
        resumed, tiny_loader(), ckpt_path=ckpt
    )
    assert all(cell.fixed for _, cell in mixtures(resumed))
    a, c = _state(straight), _state(resumed)
    assert a.keys() == c.keys()
    for key in a:
        assert torch.equal(a[key], c[key]), key
    assert s3.policy == s1.policy


class _Strategy:
    @staticmethod
    def reduce(tensor, reduce_op="mean"):
        return tensor


class _Trainer:
    """The few trainer attributes a theta step uses."""

    optimizers: list = []
    strategy = _Strategy()
    datamodule = None
    global_step, global_rank, world_size = 0, 0, 1


def test_theta_step_moves_only_theta_and_restores_buffers() -> None:
    module = convert(TinyNet(), POLICY)
    search = _search(lr=0.1)
    trainer = _Trainer()
    search.setup(trainer, module, "fit")  # type: ignore[arg-type]
    search.on_fit_start(trainer, module)  # type: ignore[arg-type]
    module.train()
    module(next(iter(tiny_loader()))[0])  # initialise the running ranges and BN statistics
    buffers = {k: v.clone() for k, v in module.named_buffers()}
    weights = {k: p.detach().clone() for k, p in module.named_parameters() if "theta" not in k}
    search.theta_step(trainer, module, next(iter(search_loader())))  # type: ignore[arg-type]
    for key, value in module.named_buffers():
        assert torch.equal(value, buffers[key]), key
    for key, p in module.named_parameters():
        if "theta" in key:
            assert p.abs().sum() > 0, key
        else:
            assert torch.equal(p, weights[key]) and p.grad is None, key


def test_resuming_past_the_search_range_fixes_the_cells(tmp_path: Path) -> None:
    # A checkpoint whose cells are unfixed, resumed at an epoch past end_epoch (as after a
    # checkpoint saved on validation end of the last search epoch): fixed at epoch start.
    first = TinyNet()
    trainer = _trainer(
        tmp_path / "b", 1, _search(start_epoch=0, end_epoch=2), enable_checkpointing=True
    )
    trainer.fit(first, tiny_loader())
    ckpt = next((tmp_path / "b" / "checkpoints").glob("*.ckpt"))
    resumed = TinyNet()
    search = _search(start_epoch=0, end_epoch=1)
    _trainer(tmp_path / "c", 2, search, limit_train_batches=1).fit(
        resumed, tiny_loader(), ckpt_path=ckpt
    )
    assert all(cell.fixed for _, cell in mixtures(resumed))
    assert search.policy_path is not None and search.policy_path.exists()


# --------------------------------------------------------------------- errors
def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match=r"start_epoch=-1 .*allowed: an integer >= 0"):
        SchemeSearch(-1, 2)
    with pytest.raises(ValueError, match=r"end_epoch=2 .*allowed: int > start_epoch \(2\)"):
        SchemeSearch(2, 2)
    with pytest.raises(ValueError, match=r"mode='net'.*allowed: layer, model"):
        SchemeSearch(mode="net")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown scheme 'nope'; available: .*binary"):
        SchemeSearch(weight_candidates=("clip", "nope"))


def test_needs_quantized_layers_and_a_search_split(tmp_path: Path) -> None:
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[_search()],
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
    )
    with pytest.raises(ValueError, match="put a Quantize callback before SchemeSearch"):
        trainer.fit(TinyNet(), tiny_loader())
    trainer = _trainer(tmp_path, 1, SchemeSearch(weight_candidates=FEW, act_candidates=FEW))
    with pytest.raises(ValueError, match=r"search_dataloader=.*search_size"):
        trainer.fit(TinyNet(), tiny_loader())


def test_a_layer_without_candidate_raises(tmp_path: Path) -> None:
    policy = QuantPolicy(LayerConfig("binary", 1, act_bits=None), first_last_bits=None)
    search = SchemeSearch(
        weight_candidates=("ternary", "fixed_point"), search_dataloader=search_loader()
    )
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[Quantize(policy), search],
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
    )
    with pytest.raises(ValueError, match="no weight candidate fits 1 bits"):
        trainer.fit(TinyNet(), tiny_loader())


def test_default_temperature_anneals_from_5_to_half() -> None:
    search = SchemeSearch(2, 6)
    taus = [search.tau(e) for e in range(0, 8)]
    assert taus[2] == pytest.approx(5.0) and taus[5] == pytest.approx(0.5)
    assert taus[0] == taus[2] and taus[7] == taus[5]
    assert taus[2] > taus[3] > taus[4] > taus[5]
    assert SchemeSearch(0, 2, temperature=lambda e: 1.0 + e).tau(1) == 2.0


# --------------------------------------------------------------------- DDP
class SaveTheta(L.Callback):
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module) -> None:
        cells = mixtures(pl_module)
        thetas = {f"{name}.theta": cell.theta.detach().clone() for name, cell in cells}
        chosen = [int(cell.chosen) for _, cell in cells]
        torch.save(
            {"thetas": thetas, "chosen": chosen}, self.folder / f"rank{trainer.global_rank}.pt"
        )


def test_ddp_two_processes_keep_theta_identical(tmp_path: Path) -> None:
    L.seed_everything(0)
    search = _search(start_epoch=0, end_epoch=2, mode="model", lr=0.05)
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[Quantize(POLICY), search, SaveTheta(tmp_path)],
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
    )
    trainer.fit(TinyNet(), tiny_loader())
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert r0["chosen"] == r1["chosen"] and min(r0["chosen"]) >= 0
    assert r0["thetas"].keys() == r1["thetas"].keys() and len(r0["thetas"]) == 6
    for key, value in r0["thetas"].items():
        assert torch.equal(value, r1["thetas"][key]), key
        assert value.abs().sum() > 0
    # mode="model": every weight cell shares one theta (and every activation cell another).
    weight_thetas = [v for k, v in r0["thetas"].items()]
    assert torch.equal(weight_thetas[0], weight_thetas[2])
    assert (tmp_path / "scheme_policy.yaml").exists()


def test_wandb_gets_the_table_and_heatmap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb.finish()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = L.pytorch.loggers.WandbLogger(save_dir=str(tmp_path), offline=True, project="t")
    trainer = _trainer(tmp_path, 1, _search(start_epoch=0, end_epoch=1), logger=logger)
    trainer.fit(TinyNet(), tiny_loader())
    wandb.finish()
    run = next(tmp_path.glob("wandb/offline-run-*/files/media"))
    tables = list(run.glob("table/autoq/scheme_distribution_*.table.json"))
    images = list(run.glob("images/autoq/scheme_distribution_*.png"))
    assert len(tables) == 1 and len(images) == 1


# --------------------------------------------------------------------- cost options
def test_theta_every_spaces_the_theta_steps_and_weight_steps_run_one_candidate(
    tmp_path: Path,
) -> None:
    L.seed_everything(0)
    module = TinyNet()
    search = _search(start_epoch=0, end_epoch=1, theta_every=3)
    steps: list[int] = []
    original = search.theta_step

    def counting(trainer, pl_module, batch):
        steps.append(trainer.global_step)
        return original(trainer, pl_module, batch)

    search.theta_step = counting  # type: ignore[method-assign]

    class OneCandidate(L.Callback):
        ran: list[set] = []

        def on_before_backward(self, trainer, pl_module, loss) -> None:
            cells = [cell for _, cell in mixtures(pl_module)]
            self.ran.append({cell.last_index for cell in cells})
            assert all(cell.sampling == "hard" and cell.last_index is not None for cell in cells)

    probe = OneCandidate()
    trainer = _trainer(tmp_path, 1, search)
    trainer.callbacks.append(probe)
    trainer.fit(module, tiny_loader())
    assert steps == [0, 3]  # batches 0 and 3 of 4
    assert len(probe.ran) == 4


def test_search_over_int_se_layers_with_their_bias_window(tmp_path: Path) -> None:
    L.seed_everything(0)
    policy = QuantPolicy(
        LayerConfig("int_se", 4, 4, bias_bits=8, scheme_options={"candidates": 2}),
        first_last_bits=None,
    )
    search = _search(
        start_epoch=0,
        end_epoch=2,
        weight_candidates=("int_se", "clip"),
        act_candidates=("int_se", "clip"),
        theta_sampling="hard",
        lr=0.05,
    )
    module = TinyNet()
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[Quantize(policy), search],
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, tiny_loader())
    assert search.fixed
    layer = module.model[0]
    cell = layer.weight_quant
    assert cell.candidates[0].scheme.candidates == 2  # the layer's options reach its scheme
    assert cell.candidates[1].scheme.name == "clip"
    module.eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.isfinite(module(x)).all()
    chosen = (layer.weight_quant.candidate.scheme.name, layer.act_quant.candidate.scheme.name)
    if chosen == ("int_se", "int_se"):
        s_acc = layer.accumulator_exponent()
        s_b = layer.bias_quant.exponent(layer.bias, s_acc)
        assert s_acc <= s_b <= s_acc + 7
    expected_options = {"candidates": 2} if chosen[0] == "int_se" else {}
    assert layer.config.scheme_options == expected_options


def test_cost_options_are_validated() -> None:
    with pytest.raises(ValueError, match=r"theta_every=0 is not allowed; allowed: int >= 1"):
        SchemeSearch(theta_every=0)
    with pytest.raises(ValueError, match=r"theta_sampling='x' is not allowed; allowed: soft, hard"):
        SchemeSearch(theta_sampling="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"weight_sampling='x' is not allowed"):
        SchemeSearch(weight_sampling="x")  # type: ignore[arg-type]
