"""Adversarial training (PGD, TRADES, fast AT with its monitor) and defensive distillation on the digits."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ramparts import zoo
from ramparts.data import Dataset, load_digits
from ramparts.defenses.adversarial_training import (
    FastATMonitor,
    fast_adversarial_training,
    linf_pgd,
    pgd_training,
    trades,
)
from ramparts.defenses.distillation import TemperatureScaled, check_temperature, distill
from ramparts.errors import RampartsError
from ramparts.evasion import ATTACKS
from ramparts.oracles import TorchOracle
from ramparts.protection.dp import DPConfig
from ramparts.threat import ThreatModel
from ramparts.training import EpochStats, TrainConfig, evaluate, train

EPS = 0.15
CONFIG = TrainConfig(epochs=15, batch_size=64, lr=3e-3, device="cpu")


@pytest.fixture(scope="module")
def split() -> tuple[Dataset, Dataset]:
    """1400 training digits and 397 held-out ones, in a seeded random order."""
    ds = load_digits()
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
    return ds.subset(perm[:1400]), ds.subset(perm[1400:])


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return zoo.build("mlp", in_channels=1, input_size=8, num_classes=10, hidden=(64,))


def _pgd_accuracy(model: nn.Module, test: Dataset) -> tuple[float, float]:
    """(clean, robust) accuracy under the library's PGD-20 at EPS on 200 held-out digits."""
    attack = ATTACKS.get("pgd")(steps=20)
    result = attack(
        TorchOracle(model, input_shape=(1, 8, 8)), test.x[:200], test.y[:200], ThreatModel(eps=EPS)
    )
    return result.clean_accuracy, result.robust_accuracy


@pytest.fixture(scope="module")
def plain(split: tuple[Dataset, Dataset]) -> tuple[float, float]:
    model = _mlp()
    train(model, split[0], config=CONFIG, progress=False)
    return _pgd_accuracy(model, split[1])


HOOKS: dict[str, Callable[[], Any]] = {
    "pgd": lambda: pgd_training(eps=EPS, steps=5),
    "trades": lambda: trades(eps=EPS, steps=5, beta=3.0),
    "fast": lambda: fast_adversarial_training(eps=EPS),
}


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_adversarial_training_raises_pgd_accuracy(
    split: tuple[Dataset, Dataset], plain: tuple[float, float], name: str
) -> None:
    model = _mlp()
    train(model, split[0], config=CONFIG, loss_hook=HOOKS[name](), progress=False)
    clean, robust = _pgd_accuracy(model, split[1])
    plain_clean, plain_robust = plain
    assert plain_robust < 0.2  # the undefended model breaks at this eps
    assert robust > plain_robust + 0.3
    assert clean > plain_clean - 0.1


def test_inner_pgd_stays_in_the_ball_and_raises_the_loss(split: tuple[Dataset, Dataset]) -> None:
    model = _mlp()
    train(model, split[0], config=TrainConfig(epochs=3, batch_size=64, lr=3e-3, device="cpu"), progress=False)
    x, y = split[1].x[:64], split[1].y[:64]
    x_adv = linf_pgd(
        model,
        x,
        lambda z: F.cross_entropy(z, y, reduction="sum"),
        eps=0.1,
        step_size=0.03,
        steps=5,
        bounds=(0.0, 1.0),
    )
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6
    assert float(x_adv.min()) >= 0.0
    assert float(x_adv.max()) <= 1.0
    with torch.no_grad():
        assert float(F.cross_entropy(model(x_adv), y)) > float(F.cross_entropy(model(x), y))


def test_hook_attacks_in_eval_mode_and_leaves_no_parameter_gradients() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)
    )
    model.train()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    bn = model[1]
    assert isinstance(bn, nn.BatchNorm2d)
    loss = pgd_training(eps=0.1, steps=5)(model, x, y)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert int(bn.num_batches_tracked) == 1  # only the outer, adversarial forward pass updated BatchNorm
    assert loss.ndim == 0
    assert math.isfinite(float(loss.detach()))


def test_pgd_training_resumes_to_the_same_weights(split: tuple[Dataset, Dataset], tmp_path: Path) -> None:
    hook = pgd_training(eps=EPS, steps=3)
    config = TrainConfig(epochs=4, batch_size=128, lr=3e-3, device="cpu", seed=3)
    whole = _mlp()
    train(whole, split[0], config=config, loss_hook=hook, progress=False)
    first = _mlp()
    half = TrainConfig(epochs=2, batch_size=128, lr=3e-3, device="cpu", seed=3)
    train(first, split[0], config=half, loss_hook=hook, progress=False, checkpoint_dir=tmp_path)
    resumed = _mlp(seed=1)  # different initial weights: everything must come from the checkpoint
    report = train(resumed, split[0], config=config, loss_hook=hook, progress=False, checkpoint_dir=tmp_path)
    assert report.resumed_from == 2
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def _monitor(split: tuple[Dataset, Dataset], **kw: Any) -> FastATMonitor:
    return FastATMonitor(split[1].x[:100], split[1].y[:100], eps=EPS, **kw)


def test_monitor_stops_on_a_collapse_and_keeps_the_best_weights(split: tuple[Dataset, Dataset]) -> None:
    monitor = _monitor(split, drop=0.2)
    model = nn.Linear(2, 2)
    stops = []
    for epoch, acc in enumerate([0.30, 0.45, 0.52, 0.40, 0.31], start=1):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        stops.append(monitor.observe(acc, model))
    assert stops == [False, False, False, False, True]  # 0.40 is within 0.2 of 0.52, 0.31 is not
    assert monitor.best_epoch == 3
    assert monitor.best_accuracy == 0.52
    assert monitor.stopped_at == 5
    monitor.restore(model)
    assert torch.equal(model.weight, torch.full((2, 2), 3.0))


def test_monitor_stops_train_early_through_on_epoch(split: tuple[Dataset, Dataset]) -> None:
    scripted = iter([0.4, 0.6, 0.1, 0.5, 0.5])

    class Scripted(FastATMonitor):
        def robust_accuracy(self, model: nn.Module) -> float:
            return next(scripted)

    monitor = Scripted(split[1].x[:10], split[1].y[:10], eps=EPS)
    model = _mlp()
    report = train(
        model, split[0], config=TrainConfig(epochs=5, lr=3e-3, device="cpu"), on_epoch=monitor, progress=False
    )
    assert len(report.history) == 3
    assert monitor.stopped_at == 3
    assert monitor.best_epoch == 2


def test_monitor_measures_pgd_accuracy_each_epoch(split: tuple[Dataset, Dataset]) -> None:
    monitor = _monitor(split, steps=5)
    model = _mlp()
    report = train(
        model,
        split[0],
        config=TrainConfig(epochs=4, batch_size=64, lr=3e-3, device="cpu"),
        loss_hook=fast_adversarial_training(eps=EPS),
        on_epoch=monitor,
        progress=False,
    )
    assert len(monitor.history) == len(report.history) == 4
    assert all(0.0 <= a <= 1.0 for a in monitor.history)
    assert monitor.best_accuracy == max(monitor.history) > 0.2
    again = monitor.robust_accuracy(model)
    assert again == monitor.robust_accuracy(model)  # seeded random start: the same measure twice
    monitor.restore(model)
    assert monitor.robust_accuracy(model) == monitor.best_accuracy


def test_adversarial_hooks_are_refused_under_dp(split: tuple[Dataset, Dataset]) -> None:
    config = TrainConfig(epochs=1, device="cpu", dp=DPConfig(noise_multiplier=1.0, delta=1e-4))
    with pytest.raises(RampartsError, match="loss_hook"):
        train(_mlp(), split[0], config=config, loss_hook=pgd_training(eps=EPS), progress=False)


def _median_input_gradient(model: nn.Module, data: Dataset) -> float:
    """Median over the correctly classified inputs of |grad_x CE(model(x), y)|_2, model at T = 1."""
    x = data.x.clone().requires_grad_(True)
    logits = model(x)
    F.cross_entropy(logits, data.y, reduction="sum").backward()
    assert x.grad is not None
    right = logits.argmax(dim=1) == data.y
    return float(x.grad.flatten(1).norm(dim=1)[right].median())


def test_distillation_masks_gradients_and_keeps_accuracy(split: tuple[Dataset, Dataset]) -> None:
    train_set, test = split
    config = TrainConfig(epochs=30, batch_size=64, lr=1e-2, device="cpu")
    baseline = _mlp()
    train(baseline, train_set, config=config, progress=False)
    result = distill(_mlp(), train_set, temperature=20, config=config)
    assert result.temperature == 20.0
    assert len(result.student_report.history) == 30
    assert evaluate(result.student, test) > evaluate(baseline, test) - 0.05
    assert _median_input_gradient(result.student, test) < 1e-3 * _median_input_gradient(baseline, test)


def test_temperature_scaled_divides_the_logits() -> None:
    model = _mlp()
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(TemperatureScaled(model, 4.0)(x), model(x) / 4.0)


BAD: list[tuple[Callable[[], Any], str]] = [
    (lambda: pgd_training(eps=0), "eps"),
    (lambda: pgd_training(eps=-0.1), "eps"),
    (lambda: pgd_training(eps=2.0), "eps"),
    (lambda: pgd_training(eps=0.1, steps=0), "steps"),
    (lambda: pgd_training(eps=0.1, steps=2.5), "steps"),
    (lambda: pgd_training(eps=0.1, step_size=0), "step_size"),
    (lambda: pgd_training(eps=0.1, random_start=1), "random_start"),
    (lambda: pgd_training(eps=0.1, bounds=(1.0, 0.0)), "bounds"),
    (lambda: trades(eps=0.1, beta=-1.0), "beta"),
    (lambda: trades(eps=0.1, steps=0), "steps"),
    (lambda: trades(eps=float("nan")), "eps"),
    (lambda: fast_adversarial_training(eps=0.1, alpha=0), "alpha"),
    (lambda: fast_adversarial_training(eps="0.1"), "eps"),
    (
        lambda: FastATMonitor(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), eps=0.1, drop=0),
        "drop",
    ),
    (lambda: FastATMonitor(torch.rand(4, 1, 8, 8), torch.zeros(3, dtype=torch.long), eps=0.1), "val_y"),
    (
        lambda: FastATMonitor(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), eps=0.1).restore(
            nn.Linear(1, 1)
        ),
        "best_state",
    ),
    (lambda: check_temperature(0), "temperature"),
    (lambda: check_temperature(-1.0), "temperature"),
    (lambda: check_temperature(float("inf")), "temperature"),
    (lambda: check_temperature(True), "temperature"),
    (lambda: TemperatureScaled(_mlp(), 0.0), "temperature"),
    (lambda: TemperatureScaled("model", 2.0), "model"),  # type: ignore[arg-type]
    (lambda: distill(_mlp(), load_digits(), temperature=-5, config=TrainConfig()), "temperature"),
    (lambda: distill(_mlp(), load_digits(), temperature=5, config={"epochs": 1}), "config"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("make", "param"), BAD, ids=[f"{p}-{i}" for i, (_, p) in enumerate(BAD)])
def test_bad_parameters_name_themselves(make: Callable[[], Any], param: str) -> None:
    with pytest.raises((ValueError, TypeError), match=param) as info:
        make()
    assert isinstance(info.value, RampartsError)
    assert "expected" in str(info.value)


def test_epoch_callback_returning_none_trains_every_epoch(split: tuple[Dataset, Dataset]) -> None:
    seen: list[int] = []

    def record(stats: EpochStats, model: nn.Module) -> None:
        seen.append(stats.epoch)

    report = train(
        _mlp(), split[0], config=TrainConfig(epochs=3, device="cpu"), on_epoch=record, progress=False
    )
    assert seen == [1, 2, 3]
    assert len(report.history) == 3


def test_trades_with_beta_zero_is_the_clean_cross_entropy() -> None:
    model = _mlp().train()
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    torch.manual_seed(0)
    loss = trades(eps=0.1, beta=0.0, steps=2)(model, x, y)
    assert torch.allclose(loss, F.cross_entropy(model(x), y))
    torch.manual_seed(0)
    assert float(trades(eps=0.1, beta=6.0, steps=2)(model, x, y).detach()) > float(loss.detach())  # KL > 0


def test_hooks_describe_themselves() -> None:
    hook = pgd_training(eps=0.2, steps=8)
    assert hook.step_size == pytest.approx(2.5 * 0.2 / 8)
    assert fast_adversarial_training(eps=0.2).alpha == pytest.approx(0.25)
    described = json.loads(json.dumps(hook.to_dict()))
    assert described == {
        "defense": "pgd_training",
        "eps": 0.2,
        "step_size": hook.step_size,
        "steps": 8,
        "random_start": True,
        "bounds": [0.0, 1.0],
    }
