"""BadNets backdoor: the trigger, the contract, its errors, and the attack end to end on the digits."""

from __future__ import annotations

import pytest
import torch

from ramparts.data import Dataset, load_digits, load_shared, train_test_split
from ramparts.defenses.detection import DetectionResult
from ramparts.errors import RampartsTypeError, UnknownNameError, ValidationError
from ramparts.poisoning import POISONING, BadNets, fraction_sweep, linear_pipeline, zoo_pipeline
from ramparts.poisoning.evaluate import retrain_without
from ramparts.training import TrainConfig


@pytest.fixture(scope="module")
def split() -> tuple[Dataset, Dataset]:
    return train_test_split(load_digits(), seed=0)


def test_registered() -> None:
    assert POISONING.get("badnets") is BadNets
    assert BadNets.name == "badnets"


def test_trigger_square_bottom_right() -> None:
    x = torch.zeros(2, 1, 8, 8)
    out = BadNets(patch_size=3).apply_trigger(x)
    assert torch.equal(x, torch.zeros(2, 1, 8, 8))  # the input is not modified in place
    assert bool((out[:, :, 5:, 5:] == 1.0).all())
    assert float(out.sum()) == 2 * 9


@pytest.mark.parametrize(
    ("position", "corner"),
    [("top-left", (0, 0)), ("top-right", (0, 6)), ("bottom-left", (6, 0)), ("center", (3, 3))],
)
def test_trigger_positions(position: str, corner: tuple[int, int]) -> None:
    out = BadNets(patch_size=2, position=position, value=0.5).apply_trigger(torch.zeros(1, 3, 8, 8))
    r, c = corner
    assert bool((out[:, :, r : r + 2, c : c + 2] == 0.5).all())
    assert float(out.sum()) == pytest.approx(3 * 4 * 0.5)


def test_trigger_checkerboard() -> None:
    out = BadNets(patch_size=3, pattern="checkerboard", position="top-left").apply_trigger(
        torch.full((1, 1, 5, 5), 0.3)
    )
    patch = out[0, 0, :3, :3]
    assert torch.equal(patch, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]))
    assert bool((out[0, 0, 3:, :] == 0.3).all())


def test_contract(split: tuple[Dataset, Dataset]) -> None:
    train, _ = split
    attack = BadNets(target_class=4, patch_size=2)
    out = attack(train, fraction=0.05, seed=1)
    n = round(0.05 * len(train))
    assert out.n_poison == n
    assert len(out.data) == len(train)
    assert bool((out.data.y[out.poison] == 4).all())
    assert bool((train.y[out.poison] != 4).all())
    assert torch.equal(out.data.y[~out.poison], train.y[~out.poison])
    assert torch.equal(out.data.x[~out.poison], train.x[~out.poison])
    assert torch.equal(out.data.x[out.poison], attack.apply_trigger(train.x[out.poison]))
    assert out.config == {
        "target_class": 4,
        "patch_size": 2,
        "position": "bottom-right",
        "value": 1.0,
        "pattern": "square",
    }
    again = attack(train, fraction=0.05, seed=1)
    assert torch.equal(again.poison, out.poison)
    assert torch.equal(again.data.x, out.data.x)
    assert not torch.equal(attack(train, fraction=0.05, seed=2).poison, out.poison)


def test_errors(split: tuple[Dataset, Dataset]) -> None:
    train, _ = split
    with pytest.raises(ValidationError, match=r"patch_size.*8x8"):
        BadNets(patch_size=9)(train, fraction=0.05)
    with pytest.raises(ValidationError, match=r"target_class.*\[0, 9\]"):
        BadNets(target_class=10)(train, fraction=0.05)
    with pytest.raises(UnknownNameError, match="bottom-right"):
        BadNets(position="middle")
    with pytest.raises(UnknownNameError, match="checkerboard"):
        BadNets(pattern="star")
    with pytest.raises(ValidationError, match="value"):
        BadNets(value=2.0)
    with pytest.raises(RampartsTypeError, match="patch_size"):
        BadNets(patch_size=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="fraction"):
        BadNets()(train, fraction=1.0)


def test_badnets_digits_mlp(split: tuple[Dataset, Dataset]) -> None:
    train, test = split
    pipeline = zoo_pipeline(
        "mlp", {"hidden": (128,)}, TrainConfig(epochs=30, batch_size=64, lr=3e-3, device="cpu")
    )
    result = fraction_sweep(BadNets(patch_size=2), train, test, pipeline, [0.05])
    clean = result.curve[0]
    assert len(result.curve) == 2
    # measured: clean model 0.973 / ASR 0.0; 5% poison 0.969 / ASR 0.958
    assert clean["attack_success"] < 0.05
    assert result.attack_success is not None
    assert result.attack_success > 0.8
    assert result.accuracy_drop < 0.03
    assert result.extra["baseline_attack_success"] == clean["attack_success"]


def test_retrain_without_the_flagged_records_removes_the_backdoor(split: tuple[Dataset, Dataset]) -> None:
    train, test = split
    pipeline = zoo_pipeline(
        "mlp", {"hidden": (128,)}, TrainConfig(epochs=30, batch_size=64, lr=3e-3, device="cpu")
    )
    attack = BadNets(patch_size=2)
    clean = pipeline(train)
    sweep = fraction_sweep(attack, train, test, pipeline, [0.05], baseline=clean)
    poisoned = attack(train, fraction=0.05, seed=0)
    oracle = DetectionResult("oracle", {}, poisoned.poison.clone(), poisoned.poison.float())
    outcome = retrain_without(
        poisoned, oracle, test, pipeline, attack=attack, before=sweep.curve[-1], baseline=clean
    )
    assert outcome["detection"]["recall"] == 1.0
    assert outcome["detection"]["clean_fpr"] == 0.0
    assert outcome["after"]["poisons_left"] == 0
    assert outcome["after"]["records_left"] == len(train) - poisoned.n_poison
    assert outcome["before"]["attack_success"] > 0.8
    assert outcome["after"]["attack_success"] < 0.05, "without its poisons the backdoor is gone"
    with pytest.raises(ValidationError, match="found"):
        retrain_without(
            poisoned,
            DetectionResult("x", {}, torch.zeros(3, dtype=torch.bool), torch.zeros(3)),
            test,
            pipeline,
            attack=attack,
            before=sweep.curve[-1],
            baseline=clean,
        )


def test_zoo_pipeline_is_deterministic(split: tuple[Dataset, Dataset]) -> None:
    train, _ = split
    pipeline = zoo_pipeline("mlp", {"hidden": (16,)}, TrainConfig(epochs=2, batch_size=128, device="cpu"))
    a, b = pipeline(train), pipeline(train)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not a.training


@pytest.mark.slow
def test_badnets_mnist_lenet() -> None:
    try:
        train, test = load_shared("mnist", split="train"), load_shared("mnist", split="test")
    except (FileNotFoundError, ValidationError) as exc:
        pytest.skip(f"MNIST not available: {exc}")
    config = TrainConfig(epochs=2, batch_size=128, device="cpu")
    result = fraction_sweep(BadNets(), train, test, zoo_pipeline("lenet5", {}, config), [0.01])
    assert result.attack_success is not None
    assert result.attack_success > 0.95
    assert result.accuracy_drop < 0.01


def test_pipeline_errors() -> None:
    with pytest.raises(UnknownNameError, match="small_cnn"):
        zoo_pipeline("no_such_net", {}, TrainConfig())
    with pytest.raises(RampartsTypeError, match="config"):
        zoo_pipeline("mlp", {}, {"epochs": 1})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="lr"):
        linear_pipeline(lr=0.0)
    with pytest.raises(ValidationError, match="epochs"):
        linear_pipeline(epochs=0)
