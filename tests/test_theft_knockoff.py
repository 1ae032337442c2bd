"""Knockoff Nets on the digits CNN with transfer sets from other distributions (CIFAR-10, noise)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from ramparts.data import Dataset, load_digits, load_shared
from ramparts.errors import AccessError, RampartsTypeError, ValidationError
from ramparts.theft import THEFTS
from ramparts.theft.knockoff import KnockoffNets, KnockoffNetsLabels, adapt_images

from .conftest import Trained

FAST: dict[str, Any] = {"arch": "mlp", "epochs": 15, "budget": 1000}


@pytest.fixture(scope="module")
def held_out() -> Dataset:
    ds = load_digits()
    return ds.subset(range(1400, len(ds)))


@pytest.fixture(scope="module")
def cifar_gray() -> torch.Tensor:
    try:
        cifar = load_shared("cifar10")
    except ValidationError as exc:
        pytest.skip(f"shared CIFAR-10 test split absent: {exc}")
    return adapt_images(cifar.x[:2000], (1, 8, 8))


def test_adapt_images_shapes() -> None:
    rgb = torch.rand(4, 3, 32, 32)
    gray = adapt_images(rgb, (1, 8, 8))
    assert gray.shape == (4, 1, 8, 8)
    assert gray.dtype == torch.float32
    assert float(gray.min()) >= 0.0
    assert float(gray.max()) <= 1.0
    # uniform colour stays that colour's luma
    flat = adapt_images(torch.full((1, 3, 16, 16), 0.5), (1, 8, 8))
    assert torch.allclose(flat, torch.full_like(flat, 0.5), atol=1e-6)
    assert adapt_images(torch.rand(2, 1, 8, 8), (3, 16, 16)).shape == (2, 3, 16, 16)
    with pytest.raises(ValidationError, match="shape"):
        adapt_images(rgb, (2, 8, 8))
    with pytest.raises(RampartsTypeError):
        adapt_images(torch.rand(3, 8, 8), (1, 8, 8))


def test_scores_random_and_adaptive_from_cifar(
    digits_model: Trained, held_out: Dataset, cifar_gray: Tensor
) -> None:
    random = KnockoffNets(strategy="random", **FAST)(digits_model.oracle, cifar_gray, held_out)
    adaptive = KnockoffNets(strategy="adaptive", **FAST)(digits_model.oracle, cifar_gray, held_out)
    for result in (random, adaptive):
        assert result.queries == 1000  # one query per image sent, exactly the budget
        assert result.fidelity > 0.5  # chance is ~0.1
        assert [q for q, _ in result.curve] == [250, 500, 1000]
        assert result.curve[-1][1] == pytest.approx(result.fidelity)
        assert result.curve[-1][1] > result.curve[0][1]
        assert not result.budget_exhausted


def test_adaptive_with_given_groups_and_rewards(
    digits_model: Trained, held_out: Dataset, cifar_gray: Tensor
) -> None:
    cifar = load_shared("cifar10")  # present: cifar_gray did not skip
    labels = cifar.y[:2000]
    for reward in ("loss", "diversity"):
        result = KnockoffNets(strategy="adaptive", groups=labels, reward=reward, step_size=16, **FAST)(
            digits_model.oracle, cifar_gray, held_out
        )
        assert result.queries == 1000
        assert result.fidelity > 0.5


def test_labels_variant_and_noise(digits_model: Trained, held_out: Dataset) -> None:
    noise = torch.rand(2000, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    scores = THEFTS.get("knockoff")(**FAST)(digits_model.oracle, noise, held_out)
    assert scores.queries == 1000
    assert scores.fidelity > 0.4
    labels = THEFTS.get("knockoff_labels")(**FAST)(digits_model.oracle, noise, held_out)
    assert labels.queries == 1000
    assert labels.fidelity > 0.2
    assert KnockoffNetsLabels.knowledge < KnockoffNets.knowledge


def test_budget_cut_by_max_queries_and_determinism(digits_model: Trained, held_out: Dataset) -> None:
    noise = torch.rand(500, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    kw: dict[str, Any] = {"arch": "mlp", "epochs": 2, "budget": 300, "strategy": "adaptive", "n_groups": 4}
    a = KnockoffNets(**kw)(digits_model.oracle, noise, held_out, max_queries=120, seed=5)
    assert a.queries == 120
    assert a.budget_exhausted
    b = KnockoffNets(**kw)(digits_model.oracle, noise, held_out, max_queries=120, seed=5)
    assert a.curve == b.curve
    for pa, pb in zip(a.substitute.parameters(), b.substitute.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_bad_inputs(digits_model: Trained, held_out: Dataset) -> None:
    noise = torch.rand(50, 1, 8, 8)
    oracle = digits_model.oracle
    with pytest.raises(ValidationError, match=r"KnockoffNets\.budget"):
        KnockoffNets(budget=0)(oracle, noise, held_out)
    with pytest.raises(ValidationError, match=r"KnockoffNets\.strategy.*'random', 'adaptive'"):
        KnockoffNets(strategy="greedy")(oracle, noise, held_out)
    with pytest.raises(ValidationError, match="at most the 50 images"):
        KnockoffNets(budget=51)(oracle, noise, held_out)
    with pytest.raises(ValidationError, match="record_at"):
        KnockoffNets(budget=10, record_at=(0.0, 1.0))(oracle, noise, held_out)
    with pytest.raises(ValidationError, match="certainty needs probabilities"):
        KnockoffNetsLabels(budget=10, strategy="adaptive", reward="certainty")(oracle, noise, held_out)
    with pytest.raises(ValidationError, match="groups"):
        KnockoffNets(budget=10, strategy="adaptive", groups=torch.zeros(3, dtype=torch.long))(
            oracle, noise, held_out
        )


def test_label_only_target_refused(digits_model: Trained, held_out: Dataset) -> None:
    from sklearn.linear_model import LogisticRegression

    from ramparts.oracles.sklearn import SklearnOracle

    ds = load_digits()
    lr = LogisticRegression(max_iter=500).fit(ds.x[:500].flatten(1).numpy(), ds.y[:500].numpy())
    oracle = SklearnOracle(lr, input_shape=(1, 8, 8), labels_only=True)
    with pytest.raises(AccessError):
        KnockoffNets(budget=10)(oracle, ds.x[:20], held_out)
    result = KnockoffNetsLabels(budget=20, arch="mlp", epochs=1)(oracle, ds.x[:20], held_out)
    assert result.queries == 20
