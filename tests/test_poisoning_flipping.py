"""Poisoning base contract and label flipping (random, class-pair, loss-maximising) on the digits."""

from __future__ import annotations

import itertools

import pytest
import torch

from ramparts.data import Dataset, load_digits, train_test_split
from ramparts.errors import RampartsTypeError, UnknownNameError, ValidationError
from ramparts.poisoning import (
    POISONING,
    LossFlip,
    PairFlip,
    PoisonedSet,
    PoisoningAttack,
    RandomFlip,
    check_fraction,
    evaluate_poisoning,
    fraction_sweep,
    linear_pipeline,
)
from ramparts.poisoning.base import relabel


@pytest.fixture(scope="module")
def split() -> tuple[Dataset, Dataset]:
    return train_test_split(load_digits(), seed=0)


@pytest.fixture(scope="module")
def train(split: tuple[Dataset, Dataset]) -> Dataset:
    return split[0]


def _attacks() -> list[PoisoningAttack]:
    return [RandomFlip(), PairFlip(source=1, target=7), LossFlip(steps=20, rounds=2)]


def test_registry_names() -> None:
    assert {"flip_random", "flip_pair", "flip_loss"} <= set(POISONING.names())
    assert POISONING.get("flip_pair") is PairFlip
    with pytest.raises(UnknownNameError, match="flip_random"):
        POISONING.get("flip_nope")


@pytest.mark.parametrize("attack", _attacks(), ids=lambda a: a.name)
def test_contract(attack: PoisoningAttack, train: Dataset) -> None:
    out = attack(train, fraction=0.05, seed=3)
    n = round(0.05 * len(train))
    assert isinstance(out, PoisonedSet)
    assert len(out.data) == len(train)
    assert out.data.classes == train.classes
    assert out.poison.dtype == torch.bool
    assert out.poison.shape == (len(train),)
    assert out.n_poison == n
    assert out.fraction == pytest.approx(n / len(train))
    assert out.attack == attack.name
    assert out.seed == 3
    # flips change exactly the masked labels, never the inputs, and leave the clean set untouched
    changed = out.data.y != train.y
    assert torch.equal(changed, out.poison)
    assert torch.equal(out.data.x, train.x)
    again = attack(train, fraction=0.05, seed=3)
    assert torch.equal(again.poison, out.poison)
    assert torch.equal(again.data.y, out.data.y)


@pytest.mark.parametrize("attack", [RandomFlip(), PairFlip(source=1, target=7)], ids=lambda a: a.name)
def test_seeds_differ(attack: PoisoningAttack, train: Dataset) -> None:
    a = attack(train, fraction=0.05, seed=0)
    b = attack(train, fraction=0.05, seed=1)
    assert not torch.equal(a.poison, b.poison)


def test_zero_fraction_is_clean(train: Dataset) -> None:
    out = RandomFlip()(train, fraction=0.0)
    assert out.n_poison == 0
    assert torch.equal(out.data.y, train.y)


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan")])
def test_fraction_out_of_range(bad: float, train: Dataset) -> None:
    with pytest.raises(ValidationError, match=r"fraction.*\[0, 1\)"):
        RandomFlip()(train, fraction=bad)


@pytest.mark.parametrize("bad", ["x", True, None])
def test_fraction_wrong_type(bad: object) -> None:
    with pytest.raises(RampartsTypeError, match="fraction"):
        check_fraction(bad)
    assert check_fraction(0) == 0.0
    assert check_fraction(0.25, "rate") == 0.25


def test_train_must_be_a_dataset() -> None:
    with pytest.raises(RampartsTypeError, match="train"):
        RandomFlip()(torch.zeros(4, 1, 8, 8), fraction=0.1)  # type: ignore[arg-type]


def test_random_flip_never_keeps_label(train: Dataset) -> None:
    out = RandomFlip()(train, fraction=0.3, seed=0)
    assert bool((out.data.y[out.poison] != train.y[out.poison]).all())
    # the new labels spread over several classes, not one fixed shift
    assert len(set(out.data.y[out.poison].tolist())) == train.num_classes


def test_pair_flip_only_touches_source(train: Dataset) -> None:
    out = PairFlip(source=3, target=8)(train, fraction=0.05, seed=0)
    assert bool((train.y[out.poison] == 3).all())
    assert bool((out.data.y[out.poison] == 8).all())


def test_pair_flip_errors(train: Dataset) -> None:
    with pytest.raises(ValidationError, match=r"target.*source=2"):
        PairFlip(source=2, target=2)
    with pytest.raises(ValidationError, match=r"source.*\[0, 9\]"):
        PairFlip(source=10, target=2)(train, fraction=0.01)
    available = int((train.y == 1).sum())
    with pytest.raises(ValidationError, match=f"has {available} records of class 1"):
        PairFlip(source=1, target=7)(train, fraction=0.2)


def test_loss_flip_errors() -> None:
    with pytest.raises(ValidationError, match="l2"):
        LossFlip(l2=-1.0)
    with pytest.raises(RampartsTypeError, match="steps"):
        LossFlip(steps=2.5)  # type: ignore[arg-type]


def test_faulty_subclass_is_caught(train: Dataset) -> None:
    class Liar(PoisoningAttack):
        name = "liar"

        def _run(self, train: Dataset, n_poison: int, gen: torch.Generator) -> tuple[Dataset, torch.Tensor]:
            return relabel(train, torch.arange(n_poison + 1), torch.zeros(n_poison + 1, dtype=torch.int64))

    with pytest.raises(RuntimeError, match="budget"):
        Liar()(train, fraction=0.1)


def test_loss_flip_beats_random_flip(split: tuple[Dataset, Dataset]) -> None:
    train, test = split
    pipeline = linear_pipeline(epochs=50)
    baseline = pipeline(train)
    acc = {}
    for attack in (RandomFlip(), LossFlip()):
        result = evaluate_poisoning(attack(train, fraction=0.1, seed=0), test, pipeline, baseline=baseline)
        acc[attack.name] = result.clean_accuracy
        assert result.attack_success is None
        assert result.baseline_accuracy > 0.94
    # measured: baseline 0.964, random 0.951, loss 0.871
    assert acc["flip_loss"] < acc["flip_random"] - 0.04


def test_fraction_sweep_random_flip(split: tuple[Dataset, Dataset]) -> None:
    train, test = split
    result = fraction_sweep(RandomFlip(), train, test, linear_pipeline(epochs=50), [0.4, 0.1, 0.0, 0.2])
    assert [p["fraction"] for p in result.curve] == [0.0, 0.1, 0.2, 0.4]
    assert [p["n_poison"] for p in result.curve] == [0] + [round(f * len(train)) for f in (0.1, 0.2, 0.4)]
    accs = [p["clean_accuracy"] for p in result.curve]
    assert result.fraction == 0.4
    assert result.clean_accuracy == accs[-1]
    assert result.baseline_accuracy == accs[0]
    assert accs[-1] < accs[0] - 0.02  # 40% random flips cost the linear model accuracy
    assert all(later <= earlier + 0.02 for earlier, later in itertools.pairwise(accs))
    assert result.summary()["curve"] == result.curve


def test_evaluate_poisoning_needs_a_baseline(split: tuple[Dataset, Dataset]) -> None:
    train, test = split
    poisoned = RandomFlip()(train, fraction=0.05)
    with pytest.raises(ValidationError, match="clean_train"):
        evaluate_poisoning(poisoned, test, linear_pipeline(epochs=5))
    result = evaluate_poisoning(poisoned, test, linear_pipeline(epochs=5), clean_train=train)
    assert 0.0 < result.baseline_accuracy <= 1.0
    assert result.n_poison == poisoned.n_poison
