"""Tests for ramparts.training: the loop, its determinism and checkpoints, evaluation, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ramparts import data, zoo
from ramparts.data import Dataset
from ramparts.errors import RampartsTypeError, UnknownNameError, ValidationError
from ramparts.training import TrainConfig, evaluate, predict_logits, train


@pytest.fixture(scope="module")
def digits_split() -> tuple[Dataset, Dataset]:
    return data.train_test_split(data.load_digits(), test_fraction=0.25, seed=0)


@pytest.fixture(scope="module")
def small(digits_split: tuple[Dataset, Dataset]) -> Dataset:
    train_set, _ = digits_split
    return train_set.subset(range(300))


def _small_cnn(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return zoo.build(
        "small_cnn", in_channels=1, input_size=8, num_classes=10, width=8, hidden=32, dropout=dropout
    )


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": 2.5}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"momentum": 1.0}, "momentum"),
        ({"seed": -1}, "seed"),
        ({"device": "quantum"}, "device"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], param: str) -> None:
    with pytest.raises(ValidationError, match=rf"^{param}: expected"):
        TrainConfig(**kwargs)  # type: ignore[arg-type]


def test_config_rejects_unknown_optimizer_and_non_numbers() -> None:
    with pytest.raises(UnknownNameError, match=r"optimizer: unknown name 'rmsprop'. Allowed: adam, sgd"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(RampartsTypeError, match="lr: expected a finite number"):
        TrainConfig(lr="fast")  # type: ignore[arg-type]


def test_small_cnn_learns_digits(digits_split: tuple[Dataset, Dataset]) -> None:
    train_set, test_set = digits_split
    torch.manual_seed(0)
    model = zoo.build("small_cnn", in_channels=1, input_size=8, num_classes=10)
    report = train(
        model, train_set, config=TrainConfig(epochs=8, batch_size=32, lr=1e-3), val=test_set, progress=False
    )
    accuracy = evaluate(model, test_set)
    assert accuracy >= 0.95
    assert report.val_acc[-1] == pytest.approx(accuracy)
    assert len(report.history) == 8
    assert report.train_loss[-1] < report.train_loss[0]
    summary = report.summary()
    assert json.loads(json.dumps(summary))["final_val_acc"] == pytest.approx(accuracy)
    assert summary["epochs_done"] == 8
    assert summary["config"]["lr"] == 1e-3


def test_training_is_deterministic_and_leaves_global_rng_alone(small: Dataset) -> None:
    config = TrainConfig(epochs=2, batch_size=32, seed=5)
    first = _small_cnn(dropout=0.3)
    train(first, small, config=config, progress=False)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    second = _small_cnn(dropout=0.3)
    state_after_init = torch.get_rng_state()
    train(second, small, config=config, progress=False)
    assert torch.equal(torch.get_rng_state(), state_after_init)
    assert not torch.equal(before, state_after_init)
    assert _same(_weights(first), _weights(second))
    third = _small_cnn(dropout=0.3)
    train(third, small, config=TrainConfig(epochs=2, batch_size=32, seed=6), progress=False)
    assert not _same(_weights(first), _weights(third))


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_resume_equals_uninterrupted_run(small: Dataset, tmp_path: Path, optimizer: str) -> None:
    config = TrainConfig(epochs=3, batch_size=32, lr=0.01, optimizer=optimizer, seed=1)
    straight = _small_cnn(dropout=0.3)
    full = train(straight, small, config=config, progress=False)

    interrupted = _small_cnn(dropout=0.3)
    train(
        interrupted, small, config=TrainConfig(**{**config.to_dict(), "epochs": 1}), checkpoint_dir=tmp_path
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001.safetensors", "epoch-0001.state.pt"]
    resumed_model = _small_cnn(seed=99, dropout=0.3)  # different init: the checkpoint must override it
    resumed = train(resumed_model, small, config=config, checkpoint_dir=tmp_path, progress=False)

    assert resumed.resumed_from == 1
    assert len(resumed.history) == 3
    assert _same(_weights(straight), _weights(resumed_model))
    assert resumed.train_loss == pytest.approx(full.train_loss)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0003.safetensors", "epoch-0003.state.pt"]
    again = train(_small_cnn(seed=7), small, config=config, checkpoint_dir=tmp_path, progress=False)
    assert again.resumed_from == 3
    assert again.train_loss == resumed.train_loss


def test_cyclic_schedule_rises_to_lr_and_falls_to_zero() -> None:
    config = TrainConfig(lr=0.1, schedule="cyclic")
    rates = [config.lr_at(step, 100) for step in range(101)]
    assert rates[0] == rates[100] == 0.0
    assert max(rates) == rates[40] == pytest.approx(0.1)
    assert rates[20] == rates[70] == pytest.approx(0.05)
    assert TrainConfig(lr=0.1).lr_at(57, 100) == 0.1
    with pytest.raises(ValidationError, match="schedule"):
        TrainConfig(schedule="cosine")


def test_cyclic_run_stopped_and_resumed_equals_uninterrupted(small: Dataset, tmp_path: Path) -> None:
    config = TrainConfig(epochs=3, batch_size=32, lr=0.01, seed=1, schedule="cyclic")
    straight = _small_cnn(dropout=0.3)
    full = train(straight, small, config=config, progress=False)
    stopped = _small_cnn(dropout=0.3)
    train(stopped, small, config=config, checkpoint_dir=tmp_path, progress=False, on_epoch=lambda s, m: True)
    resumed_model = _small_cnn(seed=99, dropout=0.3)
    resumed = train(resumed_model, small, config=config, checkpoint_dir=tmp_path, progress=False)
    assert resumed.resumed_from == 1
    assert _same(_weights(straight), _weights(resumed_model))
    assert resumed.train_loss == pytest.approx(full.train_loss)
    with pytest.raises(ValidationError, match=r"epochs: .*cyclic learning rate"):
        train(
            _small_cnn(),
            small,
            config=TrainConfig(**{**config.to_dict(), "epochs": 4}),
            checkpoint_dir=tmp_path,
        )


def test_resume_refuses_changed_config(small: Dataset, tmp_path: Path) -> None:
    train(
        _small_cnn(),
        small,
        config=TrainConfig(epochs=1, batch_size=64),
        checkpoint_dir=tmp_path,
        progress=False,
    )
    with pytest.raises(ValidationError, match=r"config: expected the values the checkpoint .*'lr': 0\.001"):
        train(
            _small_cnn(), small, config=TrainConfig(epochs=2, batch_size=64, lr=0.5), checkpoint_dir=tmp_path
        )


def test_loss_hook_replaces_the_batch_loss(small: Dataset) -> None:
    calls: list[int] = []

    def hook(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert model.training
        calls.append(x.shape[0])
        return F.cross_entropy(model(x), y)

    train(_small_cnn(), small, config=TrainConfig(epochs=2, batch_size=64), loss_hook=hook, progress=False)
    assert calls == [64, 64, 64, 64, 44] * 2

    def bad_hook(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y, reduction="none")

    with pytest.raises(RampartsTypeError, match="loss_hook: expected a scalar loss tensor"):
        train(_small_cnn(), small, config=TrainConfig(epochs=1), loss_hook=bad_hook, progress=False)


def test_train_rejects_mismatched_model_and_divergence(small: Dataset) -> None:
    five_classes = zoo.build("mlp", in_channels=1, input_size=8, num_classes=5)
    with pytest.raises(ValidationError, match=r"model: expected logits of shape \(1, 10\)"):
        train(five_classes, small, config=TrainConfig(epochs=1), progress=False)
    cifar_like = Dataset(torch.rand(4, 3, 32, 32), torch.arange(4), tuple("0123456789"), "rgb")
    with pytest.raises(ValidationError, match="val: expected the train set's input shape"):
        train(_small_cnn(), small, val=cifar_like, progress=False)
    diverging = TrainConfig(epochs=2, lr=1e30, optimizer="sgd")
    with pytest.raises(ValidationError, match="lr: expected a learning rate at which the loss stays finite"):
        train(
            zoo.build("mlp", in_channels=1, input_size=8, num_classes=10),
            small,
            config=diverging,
            progress=False,
        )


def test_evaluate_and_predict_logits_are_batch_independent(small: Dataset) -> None:
    model = _small_cnn().train()
    full = predict_logits(model, small, batch_size=512)
    chunked = predict_logits(model, small.x, batch_size=7)
    assert full.shape == (len(small), 10)
    assert torch.allclose(full, chunked, atol=1e-5)
    assert model.training  # restored
    expected = float((full.argmax(1) == small.y).float().mean())
    assert evaluate(model, small, batch_size=50) == pytest.approx(expected)
    with pytest.raises(ValidationError, match="batch_size"):
        predict_logits(model, small, batch_size=0)


def test_soft_targets_train_towards_the_given_probabilities() -> None:
    ds = data.load_digits().subset(range(300))
    torch.manual_seed(0)
    teacher = zoo.build("mlp", in_channels=1, input_size=8, num_classes=10)
    train(teacher, ds, config=TrainConfig(epochs=5, seed=0), progress=False)
    with torch.no_grad():
        soft = teacher(ds.x).softmax(dim=1)
    torch.manual_seed(1)
    student = zoo.build("mlp", in_channels=1, input_size=8, num_classes=10)
    train(student, ds, config=TrainConfig(epochs=15, seed=0), progress=False, soft_targets=soft)
    with torch.no_grad():
        agree = (student(ds.x).argmax(dim=1) == soft.argmax(dim=1)).float().mean()
    assert float(agree) > 0.9
    with pytest.raises(ValidationError, match="soft_targets"):
        train(student, ds, config=TrainConfig(epochs=1), progress=False, soft_targets=soft[:10])
    with pytest.raises(ValidationError, match="soft_targets"):
        train(student, ds, config=TrainConfig(epochs=1), progress=False, soft_targets=soft * 2)
