"""Poison Frogs (Shafahi et al. 2018): crafting, batching, determinism, errors and a tiny transfer kill."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ramparts import zoo
from ramparts.data import load_digits
from ramparts.errors import RampartsTypeError, ValidationError
from ramparts.poisoning import (
    FrogsCraft,
    PoisonFrogs,
    evaluate_end_to_end,
    evaluate_transfer,
    penultimate,
)
from ramparts.results import PoisonResult
from ramparts.training import TrainConfig, train

TARGET, BASE = 3, 8


@pytest.fixture(scope="module")
def setting() -> dict[str, object]:
    """An MLP trained on the 8 digit classes other than 3 and 8, and a 3-vs-8 transfer task."""
    torch.manual_seed(0)
    ds = load_digits()
    task = (ds.y == TARGET) | (ds.y == BASE)
    model = zoo.build("mlp", in_channels=1, input_size=8, num_classes=10)
    config = TrainConfig(epochs=15, batch_size=64, lr=2e-3, seed=0, device="cpu")
    train(model, ds.subset(~task), config=config, progress=False)
    idx = task.nonzero().flatten()
    idx = idx[torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(0))]
    rest = ds.subset(idx[200:])
    pool = rest.subset(torch.arange(60, len(rest)))
    return {
        "model": model,
        "features": penultimate(model),
        "train": ds.subset(idx[:200]),
        "test": rest.subset(torch.arange(60)),
        "targets": pool.subset((pool.y == TARGET).nonzero().flatten()[:30]),
        "bases": pool.x[pool.y == BASE],
    }


def test_penultimate_drops_last_linear_of_zoo_models() -> None:
    for arch, size in (("mlp", 8), ("small_cnn", 8), ("lenet5", 8), ("carlini_cnn", 28), ("resnet18", 8)):
        model = zoo.build(arch, in_channels=1, input_size=size, num_classes=10).eval()
        feats = penultimate(model)
        x = torch.rand(2, 1, size, size)
        out = feats(x).flatten(1)
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        assert out.shape == (2, last.in_features), arch
        assert torch.allclose(last(out), model(x), atol=1e-5), arch
    with pytest.raises(RampartsTypeError, match="model"):
        penultimate(nn.Conv2d(1, 1, 3))


def test_craft_collides_features_and_stays_near_base(setting: dict) -> None:
    targets, bases = setting["targets"].x[:8], setting["bases"][:8]
    craft = PoisonFrogs(lr=0.1, steps=300).craft(setting["features"], targets, bases)
    assert isinstance(craft, FrogsCraft)
    assert craft.poisons.shape == targets.shape
    assert float(craft.poisons.min()) >= 0.0
    assert float(craft.poisons.max()) <= 1.0
    ratio = craft.feature_after / craft.feature_before
    assert float(ratio.max()) < 0.15  # measured ~0.04 on average
    assert bool((craft.l2 < 0.8 * craft.target_l2).all())
    assert int(craft.steps.max()) <= 300
    assert int(craft.steps.min()) >= 1


def test_batch_equals_one_by_one(setting: dict) -> None:
    attack = PoisonFrogs(lr=0.1, steps=60)
    targets, bases = setting["targets"].x[:4], setting["bases"][:4]
    batch = attack.craft(setting["features"], targets, bases)
    for i in range(4):
        one = attack.craft(setting["features"], targets[i : i + 1], bases[i : i + 1])
        assert torch.allclose(one.poisons[0], batch.poisons[i], atol=1e-4)
        assert int(one.steps[0]) == int(batch.steps[i])


def test_converged_pairs_stop_early(setting: dict) -> None:
    attack = PoisonFrogs(lr=0.1, steps=400, tol=1e-3)
    craft = attack.craft(setting["features"], setting["targets"].x[:4], setting["bases"][:4])
    assert int(craft.steps.max()) < 400


def test_crafting_is_deterministic(setting: dict) -> None:
    attack = PoisonFrogs(lr=0.1, steps=50, opacity=0.0)
    a = attack.craft(setting["features"], setting["targets"].x[:3], setting["bases"][:3], seed=1)
    b = attack.craft(setting["features"], setting["targets"].x[:3], setting["bases"][:3], seed=1)
    assert torch.equal(a.poisons, b.poisons)
    assert a.seed == 1


def test_watermark_and_beta_scaling(setting: dict) -> None:
    targets, bases = setting["targets"].x[:2], setting["bases"][:2]
    blend = PoisonFrogs(lr=0.1, steps=1, opacity=1.0, beta=1e6).craft(setting["features"], targets, bases)
    assert torch.allclose(blend.poisons, targets, atol=1e-3)  # the proximal step pins x to the blend
    default = PoisonFrogs(steps=1).craft(setting["features"], targets, bases)
    assert default.beta == pytest.approx(0.25 * (128 / 64) ** 2)
    assert PoisonFrogs(beta=2.0).config()["beta"] == 2.0


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"opacity": 1.5}, "opacity"),
        ({"opacity": -0.1}, "opacity"),
        ({"beta": 0.0}, "beta"),
        ({"beta": -1.0}, "beta"),
        ({"lr": 0}, "lr"),
        ({"steps": 0}, "steps"),
        ({"tol": -1.0}, "tol"),
    ],
)
def test_bad_hyperparameters(kwargs: dict, param: str) -> None:
    with pytest.raises(ValidationError, match=param):
        PoisonFrogs(**kwargs)


def test_shape_mismatch_and_base_class_target(setting: dict) -> None:
    feats = setting["features"]
    with pytest.raises(ValidationError, match="bases"):
        PoisonFrogs().craft(feats, setting["targets"].x[:3], setting["bases"][:2])
    wrong = setting["train"].subset((setting["train"].y == BASE).nonzero().flatten()[:2])
    with pytest.raises(ValidationError, match=r"targets.*pick a base of another class"):
        evaluate_transfer(
            PoisonFrogs(), feats, setting["train"], setting["test"], wrong, setting["bases"], base_class=BASE
        )
    with pytest.raises(ValidationError, match="base_class"):
        evaluate_transfer(
            PoisonFrogs(),
            feats,
            setting["train"],
            setting["test"],
            setting["targets"],
            setting["bases"],
            base_class=5,
        )


def test_transfer_one_shot_kill_on_digits(setting: dict) -> None:
    attack = PoisonFrogs(lr=0.1, steps=1000, beta=0.01)
    result = evaluate_transfer(
        attack,
        setting["features"],
        setting["train"],
        setting["test"],
        setting["targets"],
        setting["bases"],
        base_class=BASE,
        seed=0,
    )
    assert isinstance(result, PoisonResult)
    assert result.attack == "poison_frogs"
    clean_hits = sum(t["clean_model_says_base"] for t in result.extra["per_target"])
    assert clean_hits <= 3  # the clean head gets the targets right: success is the poison's doing
    assert result.attack_success is not None
    assert result.attack_success >= 0.6  # measured 0.77 (23 of 30); the clean head: at most 3 of 30
    assert result.baseline_accuracy >= 0.9
    assert result.clean_accuracy >= 0.9
    assert result.n_poison == 30
    assert result.fraction == pytest.approx(1 / 201)
    assert result.config["lr"] == 0.1
    assert result.config["head_lr"] == 0.5
    assert len(result.extra["per_target"]) == 30


def test_end_to_end_runs_and_reports(setting: dict) -> None:
    model = copy.deepcopy(setting["model"])
    train(
        model,
        setting["train"],
        config=TrainConfig(epochs=10, batch_size=32, seed=0, device="cpu"),
        progress=False,
    )
    targets = setting["targets"].subset(torch.arange(2))
    config = TrainConfig(epochs=2, batch_size=64, lr=1e-3, seed=0, device="cpu")
    result = evaluate_end_to_end(
        PoisonFrogs(lr=0.1, steps=100),
        model,
        setting["train"],
        setting["test"],
        targets,
        setting["bases"],
        base_class=BASE,
        poisons_per_target=3,
        config=config,
    )
    assert result.n_poison == 6
    assert result.config["setting"] == "end_to_end"
    assert 0.0 <= (result.attack_success or 0.0) <= 1.0
    assert result.baseline_accuracy > 0.8
    assert result.clean_accuracy > 0.8
    assert len(result.extra["per_target"]) == 2
