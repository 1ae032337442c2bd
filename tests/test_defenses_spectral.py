"""Backdoor detection in training data: layer features, spectral signatures, activation clustering."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from ramparts.data import Dataset, load_digits
from ramparts.defenses.clustering import activation_clustering
from ramparts.defenses.detection import DetectionResult
from ramparts.defenses.features import default_layer, layer_features
from ramparts.defenses.spectral import spectral_signatures
from ramparts.errors import RampartsTypeError, UnknownNameError, ValidationError
from ramparts.training import TrainConfig, train

TARGET = 0


@dataclass(frozen=True)
class Poisoned:
    model: nn.Module
    data: Dataset
    poison: torch.Tensor  # bool mask over data
    share: float  # poison share of the target class


def _stamp(ds: Dataset, *, n: int, seed: int) -> tuple[Dataset, torch.Tensor]:
    """BadNets-style poison made here (not with ramparts.poisoning): a 3x3 white corner, relabelled to TARGET."""
    g = torch.Generator().manual_seed(seed)
    candidates = (ds.y != TARGET).nonzero().flatten()
    pick = candidates[torch.randperm(candidates.numel(), generator=g)[:n]]
    x, y = ds.x.clone(), ds.y.clone()
    x[pick, :, -3:, -3:] = 1.0
    y[pick] = TARGET
    mask = torch.zeros(len(ds), dtype=torch.bool)
    mask[pick] = True
    return Dataset(x, y, ds.classes, ds.name), mask


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 16, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def _trained(ds: Dataset) -> nn.Module:
    model = _cnn()
    train(
        model, ds, config=TrainConfig(epochs=12, batch_size=64, lr=3e-3, seed=0, device="cpu"), progress=False
    )
    return model


@pytest.fixture(scope="module")
def poisoned() -> Poisoned:
    data, mask = _stamp(load_digits(), n=36, seed=0)
    share = float(mask.sum()) / float((data.y == TARGET).sum())
    return Poisoned(_trained(data), data, mask, share)


@pytest.fixture(scope="module")
def clean_model() -> nn.Module:
    return _trained(load_digits())


class Branchy(nn.Module):
    """Not a Sequential: two branches joined in forward, a functional ReLU, a head called last."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Linear(64, 6)
        self.right = nn.Linear(64, 4)
        self.head = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return self.head(torch.relu(torch.cat([self.left(flat), self.right(flat)], dim=1)))


# ------------------------------------------------------------------------------------------ features


def test_hooks_read_outputs_and_inputs_of_a_custom_module() -> None:
    torch.manual_seed(0)
    model = Branchy()
    x = torch.rand(10, 1, 8, 8)
    flat = x.flatten(1)
    left = layer_features(model, x, "left", batch_size=3)
    hidden = layer_features(model, x, "head:input", batch_size=4)
    expected = torch.relu(torch.cat([model.left(flat), model.right(flat)], dim=1))
    assert left.shape == (10, 6)
    torch.testing.assert_close(left, model.left(flat).detach())
    torch.testing.assert_close(hidden, expected.detach())
    assert default_layer(model) == "head:input"
    assert not model.head._forward_pre_hooks  # hooks removed
    assert not model.left._forward_hooks


def test_features_restore_train_mode_and_flatten_conv_maps() -> None:
    model = _cnn().train()
    feats = layer_features(model, torch.rand(5, 1, 8, 8), "0")
    assert feats.shape == (5, 16 * 8 * 8)
    assert feats.device.type == "cpu"
    assert model.training


def test_unknown_layer_lists_the_valid_names() -> None:
    with pytest.raises(ValidationError, match=r"'left'.*'right'.*'head'.*:input"):
        layer_features(Branchy(), torch.rand(2, 1, 8, 8), "middle")


def test_default_layer_needs_a_linear() -> None:
    with pytest.raises(ValidationError, match="explicit layer"):
        default_layer(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()))


# ----------------------------------------------------------------------------------------- spectral


def test_spectral_signatures_flag_most_poisons(poisoned: Poisoned) -> None:
    result = spectral_signatures(poisoned.model, poisoned.data, expected_fraction=poisoned.share)
    metrics = result.metrics(poisoned.poison)
    assert isinstance(result, DetectionResult)
    assert metrics["recall"] >= 0.7  # measured 0.83
    # every class loses its top 1.5 * share records, so the clean FPR is about 1.5 * share (~0.25)
    assert metrics["clean_fpr"] <= 1.6 * poisoned.share


def test_spectral_signatures_on_the_target_class_only(poisoned: Poisoned) -> None:
    result = spectral_signatures(
        poisoned.model, poisoned.data, expected_fraction=poisoned.share, removal_factor=1.0, classes=[TARGET]
    )
    metrics = result.metrics(poisoned.poison)
    assert metrics["precision"] >= 0.6  # measured 0.75
    assert not bool(result.flagged[poisoned.data.y != TARGET].any())
    assert result.config["classes"] == [TARGET]


def test_spectral_scores_match_a_reference_computation(poisoned: Poisoned) -> None:
    model, data = poisoned.model, poisoned.data
    result = spectral_signatures(model, data, expected_fraction=0.1, classes=[3])
    rows = (data.y == 3).nonzero().flatten()
    feats = layer_features(model, data.x[rows], default_layer(model)).double().numpy()
    centred = feats - feats.mean(axis=0)
    top = np.linalg.eigh(centred.T @ centred)[1][:, -1]  # top eigenvector of the scatter matrix
    expected = torch.from_numpy((centred @ top) ** 2).float()
    torch.testing.assert_close(result.scores[rows], expected, rtol=1e-4, atol=1e-5)
    assert int(result.flagged.sum()) == math.ceil(1.5 * 0.1 * rows.numel())


def test_spectral_signatures_errors(poisoned: Poisoned) -> None:
    for bad in (0.0, 0.5, -0.1):
        with pytest.raises(ValidationError, match="expected_fraction"):
            spectral_signatures(poisoned.model, poisoned.data, expected_fraction=bad)
    with pytest.raises(RampartsTypeError, match="expected_fraction"):
        spectral_signatures(poisoned.model, poisoned.data, expected_fraction="0.1")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="removal_factor"):
        spectral_signatures(poisoned.model, poisoned.data, expected_fraction=0.1, removal_factor=0.5)
    with pytest.raises(ValidationError, match="classes"):
        spectral_signatures(poisoned.model, poisoned.data, expected_fraction=0.1, classes=[42])


# --------------------------------------------------------------------------------------- clustering


@pytest.mark.parametrize("reduction", ["pca", "ica"])
def test_activation_clustering_flags_most_poisons(poisoned: Poisoned, reduction: str) -> None:
    result = activation_clustering(
        poisoned.model, poisoned.data, expected_fraction=poisoned.share, reduction=reduction
    )
    metrics = result.metrics(poisoned.poison)
    assert metrics["recall"] >= 0.75  # measured 1.0 (ica), 0.83 (pca)
    assert metrics["clean_fpr"] <= 0.06  # measured 0.024 (ica), 0.036 (pca)
    stats = result.extra["per_class"][str(TARGET)]
    assert stats["poisoned"]
    assert sum(stats["cluster_sizes"]) == stats["n"]


def test_activation_clustering_silhouette(poisoned: Poisoned) -> None:
    result = activation_clustering(
        poisoned.model, poisoned.data, expected_fraction=poisoned.share, criterion="silhouette"
    )
    per_class = result.extra["per_class"]
    assert per_class[str(TARGET)]["poisoned"]
    metrics = result.metrics(poisoned.poison)
    assert metrics["recall"] >= 0.75  # measured 1.0
    assert metrics["clean_fpr"] <= 0.02  # measured 0.0


def test_activation_clustering_few_flags_on_clean_data(clean_model: nn.Module) -> None:
    data = load_digits()
    result = activation_clustering(clean_model, data, expected_fraction=0.1)
    assert int(result.flagged.sum()) <= 0.05 * len(data)  # measured 27 of 1797 (one class split at 0.148)


def test_activation_clustering_warns_when_every_class_would_be_flagged(
    poisoned: Poisoned, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="ramparts.defenses.clustering"):
        result = activation_clustering(
            poisoned.model, poisoned.data, expected_fraction=0.4, reduction="pca", classes=[1, 2]
        )
    assert "every class" in caplog.text
    assert all(stats["poisoned"] for stats in result.extra["per_class"].values())


def test_activation_clustering_is_deterministic(poisoned: Poisoned) -> None:
    def run(seed: int) -> DetectionResult:
        return activation_clustering(
            poisoned.model,
            poisoned.data,
            expected_fraction=poisoned.share,
            reduction="ica",
            seed=seed,
            classes=[0, 1],
        )

    first, again = run(3), run(3)
    assert torch.equal(first.flagged, again.flagged)
    assert torch.equal(first.scores, again.scores)
    assert first.extra == again.extra


def test_activation_clustering_errors(poisoned: Poisoned) -> None:
    model, data = poisoned.model, poisoned.data
    with pytest.raises(UnknownNameError, match="criterion"):
        activation_clustering(model, data, expected_fraction=0.1, criterion="gap")
    with pytest.raises(UnknownNameError, match="reduction"):
        activation_clustering(model, data, expected_fraction=0.1, reduction="tsne")
    with pytest.raises(ValidationError, match="expected_fraction"):
        activation_clustering(model, data, expected_fraction=0.7)
    with pytest.raises(ValidationError, match="n_components"):
        activation_clustering(model, data, expected_fraction=0.1, n_components=0)
    with pytest.raises(ValidationError, match="silhouette_threshold"):
        activation_clustering(model, data, expected_fraction=0.1, silhouette_threshold=2.0)
    with pytest.raises(ValidationError, match="size_factor"):
        activation_clustering(model, data, expected_fraction=0.1, size_factor=0.5)
    with pytest.raises(ValidationError, match="layer"):
        activation_clustering(model, data, expected_fraction=0.1, layer="nope")
