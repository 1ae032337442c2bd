"""Tests for DP-SGD training (ramparts.protection.dp through ramparts.training.train)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ramparts import data, training, zoo
from ramparts.data import Dataset
from ramparts.errors import RampartsTypeError, UnknownNameError, ValidationError
from ramparts.protection.dp import DPConfig
from ramparts.training import TrainConfig, evaluate, train


@pytest.fixture(scope="module")
def digits_split() -> tuple[Dataset, Dataset]:
    return data.train_test_split(data.load_digits(), test_fraction=0.25, seed=0)


@pytest.fixture(scope="module")
def small(digits_split: tuple[Dataset, Dataset]) -> Dataset:
    return digits_split[0].subset(range(400))


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return zoo.build("mlp", in_channels=1, input_size=8, num_classes=10, hidden=(64,))


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _config(dp: DPConfig, epochs: int = 2, seed: int = 0) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=64, lr=1e-2, seed=seed, dp=dp)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({}, "epsilon"),
        ({"epsilon": 1.0, "noise_multiplier": 1.0}, "epsilon"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": float("inf")}, "epsilon"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"epsilon": 1.0, "max_grad_norm": 0.0}, "max_grad_norm"),
        ({"epsilon": 1.0, "delta": 0.0}, "delta"),
        ({"epsilon": 1.0, "delta": 1.5}, "delta"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], param: str) -> None:
    with pytest.raises(ValidationError, match=rf"^{param}: expected"):
        DPConfig(**kwargs)  # type: ignore[arg-type]


def test_config_rejects_wrong_types_and_unknown_accountant() -> None:
    with pytest.raises(UnknownNameError, match=r"accountant: unknown name 'moments'. Allowed: gdp, prv, rdp"):
        DPConfig(epsilon=1.0, accountant="moments")
    with pytest.raises(RampartsTypeError, match=r"^delta: expected"):
        DPConfig(epsilon=1.0, delta="tiny")
    with pytest.raises(RampartsTypeError, match=r"^poisson: expected True or False"):
        DPConfig(epsilon=1.0, poisson="yes")  # type: ignore[arg-type]
    with pytest.raises(RampartsTypeError, match=r"^dp: expected None or"):
        TrainConfig(dp=8.0)  # type: ignore[arg-type]
    config = TrainConfig(dp=DPConfig(epsilon=2.0))
    assert TrainConfig(**config.to_dict()) == config


def test_delta_must_be_below_one_over_n(small: Dataset) -> None:
    with pytest.raises(ValidationError, match=r"^delta: expected a value below 1/n = 0.0025 for n = 400"):
        train(_mlp(), small, config=_config(DPConfig(epsilon=8.0, delta=0.01)), progress=False)
    assert DPConfig(epsilon=1.0, delta="auto").resolve_delta(400) == pytest.approx(1 / 4000)


def test_spends_at_most_the_target_epsilon(small: Dataset) -> None:
    model = _mlp()
    report = train(model, small, config=_config(DPConfig(epsilon=1.0)), progress=False)
    privacy = report.privacy
    assert privacy is not None
    assert 0.5 < privacy.epsilon <= 1.0
    assert privacy.delta == 1e-5
    assert privacy.accountant == "rdp"
    assert privacy.sample_rate == pytest.approx(1 / 7)  # 400 examples, expected batch 64: 7 batches
    assert privacy.steps == 2 * 7
    assert privacy.noise_multiplier > 0
    assert privacy.max_grad_norm == 1.0
    epsilons = [e.epsilon for e in report.history]
    assert epsilons[0] is not None
    assert epsilons[0] < epsilons[1] == pytest.approx(privacy.epsilon)
    summary = json.loads(json.dumps(report.summary()))
    assert summary["privacy"]["epsilon"] == pytest.approx(privacy.epsilon)
    assert summary["privacy"]["steps"] == 14
    assert summary["config"]["dp"]["epsilon"] == 1.0


def test_prv_accountant_is_tighter_than_rdp_for_the_same_noise(small: Dataset) -> None:
    rdp_model, prv_model = _mlp(), _mlp()
    rdp = train(rdp_model, small, config=_config(DPConfig(noise_multiplier=2.0)), progress=False).privacy
    prv = train(
        prv_model, small, config=_config(DPConfig(noise_multiplier=2.0, accountant="prv")), progress=False
    ).privacy
    assert rdp is not None
    assert prv is not None
    assert prv.accountant == "prv"
    assert 0.5 * rdp.epsilon < prv.epsilon < rdp.epsilon
    assert _same(_weights(rdp_model), _weights(prv_model))  # the accountant only measures


def test_privacy_costs_accuracy_but_generous_epsilon_learns(digits_split: tuple[Dataset, Dataset]) -> None:
    train_set, test_set = digits_split
    accuracy = {}
    for eps in (None, 8.0, 1.0):
        model = _mlp()
        dp = DPConfig(epsilon=eps) if eps is not None else None
        train(model, train_set, config=TrainConfig(epochs=4, batch_size=64, lr=1e-2, dp=dp), progress=False)
        accuracy[eps] = evaluate(model, test_set)
    assert accuracy[None] > accuracy[8.0] > 0.5
    assert accuracy[None] > accuracy[1.0] > 0.1


def test_same_seed_same_weights(small: Dataset) -> None:
    dp = DPConfig(noise_multiplier=2.0)
    first, second, other = _mlp(), _mlp(), _mlp()
    train(first, small, config=_config(dp, seed=3), progress=False)
    train(second, small, config=_config(dp, seed=3), progress=False)
    train(other, small, config=_config(dp, seed=4), progress=False)
    assert _same(_weights(first), _weights(second))
    assert not _same(_weights(first), _weights(other))


def test_callers_model_is_plain_and_trained(small: Dataset, tmp_path: Path) -> None:
    model = _mlp()
    before = _weights(model)
    train(model, small, config=_config(DPConfig(epsilon=1.0)), progress=False)
    assert type(model) is zoo.MLP
    assert not model.training
    assert not _same(before, _weights(model))
    for module in model.modules():
        assert not module._forward_hooks
        assert not module._backward_hooks
        assert not module._forward_pre_hooks
    for p in model.parameters():
        assert not any(hasattr(p, a) for a in ("grad_sample", "_forward_counter", "summed_grad"))
    zoo.save_model(
        model,
        tmp_path / "private",
        arch="mlp",
        config={"in_channels": 1, "input_size": 8, "num_classes": 10, "hidden": [64]},
    )
    reloaded, _ = zoo.load_model(tmp_path / "private")
    assert _same(_weights(model), _weights(reloaded))
    again = train(model, small, config=_config(DPConfig(epsilon=1.0), epochs=1), progress=False)  # eval mode
    assert again.privacy is not None
    assert again.privacy.steps == 7


def test_empty_poisson_batches_still_step(small: Dataset) -> None:
    tiny = small.subset(range(20))  # expected batch 1: about a third of the batches are empty
    config = TrainConfig(epochs=2, batch_size=1, lr=1e-2, dp=DPConfig(noise_multiplier=1.0, delta=1e-3))
    report = train(_mlp(), tiny, config=config, progress=False)
    assert report.privacy is not None
    assert report.privacy.steps == 40
    assert all(math.isfinite(loss) for loss in report.train_loss)


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10)
    )


def test_batchnorm_refused_unless_fix_modules(small: Dataset) -> None:
    model = _bn_model()
    with pytest.raises(ValidationError, match=r"^model: .*: 1 \(BatchNorm2d\).*DPConfig\(fix_modules=True\)"):
        train(model, small, config=_config(DPConfig(epsilon=1.0)), progress=False)
    assert isinstance(model[1], nn.BatchNorm2d)
    report = train(model, small, config=_config(DPConfig(epsilon=1.0, fix_modules=True)), progress=False)
    assert isinstance(model[1], nn.GroupNorm)
    assert report.privacy is not None
    assert report.privacy.epsilon <= 1.0
    assert evaluate(model, small) > 0.2


def test_custom_loss_hook_refused_soft_targets_accepted(small: Dataset) -> None:
    def hook(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    with pytest.raises(ValidationError, match=r"^loss_hook: expected None .* with dp"):
        train(_mlp(), small, config=_config(DPConfig(epsilon=1.0)), loss_hook=hook, progress=False)
    soft = F.one_hot(small.y, 10).float() * 0.9 + 0.01
    model = _mlp()
    report = train(model, small, config=_config(DPConfig(epsilon=1.0)), soft_targets=soft, progress=False)
    assert report.privacy is not None
    assert report.privacy.steps == 14
    assert evaluate(model, small) > 0.3


def test_resumed_run_spends_the_same_epsilon(
    small: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(DPConfig(epsilon=1.0), epochs=3)
    straight = _mlp()
    full = train(straight, small, config=config, progress=False)

    calls = 0
    accuracy = training._accuracy

    def crash_in_epoch_three(*args: object, **kwargs: object) -> float:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        return accuracy(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(training, "_accuracy", crash_in_epoch_three)
    interrupted = _mlp()
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, small, config=config, checkpoint_dir=tmp_path, progress=False)
    assert type(interrupted) is zoo.MLP
    assert not any(hasattr(p, "grad_sample") for p in interrupted.parameters())
    monkeypatch.undo()

    resumed_model = _mlp(seed=9)
    resumed = train(resumed_model, small, config=config, checkpoint_dir=tmp_path, progress=False)
    assert resumed.resumed_from == 2
    assert full.privacy is not None
    assert resumed.privacy == full.privacy
    assert [e.epsilon for e in resumed.history] == [e.epsilon for e in full.history]
    assert _same(_weights(straight), _weights(resumed_model))

    longer = _config(DPConfig(epsilon=1.0), epochs=4)
    with pytest.raises(ValidationError, match=r"^epochs: expected the noise multiplier .* the checkpoint"):
        train(_mlp(), small, config=longer, checkpoint_dir=tmp_path, progress=False)


def test_non_private_summary_has_no_privacy(small: Dataset) -> None:
    report = train(_mlp(), small, config=TrainConfig(epochs=1, batch_size=64), progress=False)
    assert report.privacy is None
    assert report.summary()["privacy"] is None
    assert report.history[0].epsilon is None


def test_fixed_size_batches_and_secure_mode(small: Dataset) -> None:
    report = train(
        _mlp(), small, config=_config(DPConfig(noise_multiplier=2.0, poisson=False)), progress=False
    )
    assert report.privacy is not None
    assert not report.privacy.poisson
    assert report.privacy.steps == 14
    if importlib.util.find_spec("torchcsprng") is None:
        with pytest.raises(ValidationError, match=r"^secure_mode: expected torchcsprng installed"):
            train(_mlp(), small, config=_config(DPConfig(epsilon=1.0, secure_mode=True)), progress=False)
