"""Sphere and slab sanitisation (Steinhardt et al. 2017) on the embedded digits."""

from __future__ import annotations

import pytest
import torch

from ramparts.data import Dataset, load_digits
from ramparts.defenses.detection import DetectionResult
from ramparts.defenses.sanitization import centroids, fit_sphere_slab, sphere_slab
from ramparts.errors import RampartsTypeError, UnknownNameError, ValidationError


def _poisoned(n_poison: int = 40, seed: int = 0) -> tuple[Dataset, torch.Tensor]:
    """Digits plus `n_poison` far-away records (random bright images with class-0 labels), and the truth."""
    clean = load_digits()
    g = torch.Generator().manual_seed(seed)
    x_p = (torch.rand(n_poison, 1, 8, 8, generator=g) > 0.3).float()
    x = torch.cat([clean.x, x_p])
    y = torch.cat([clean.y, torch.zeros(n_poison, dtype=torch.long)])
    truth = torch.cat([torch.zeros(len(clean), dtype=torch.bool), torch.ones(n_poison, dtype=torch.bool)])
    return Dataset(x, y, clean.classes, "digits+poison"), truth


def test_oracle_centroids_are_clean_means() -> None:
    data, truth = _poisoned()
    mu = centroids(data.x, data.y, kind="oracle", clean=~truth)
    clean = load_digits()
    expected = clean.x[clean.y == 0].reshape(-1, 64).double().mean(0)
    assert mu.shape == (10, 64)
    assert torch.allclose(mu[0], expected)


def test_data_centroids_differ_from_oracle_when_poisoned() -> None:
    data, truth = _poisoned(n_poison=80)
    oracle = centroids(data.x, data.y, kind="oracle", clean=~truth)
    mean = centroids(data.x, data.y, kind="data", estimator="mean")
    median = centroids(data.x, data.y, kind="data", estimator="median")
    shift_mean = float((mean[0] - oracle[0]).norm())
    assert shift_mean > 0.5  # the poison drags class 0's mean
    assert float((median[0] - oracle[0]).norm()) < shift_mean  # the median resists it
    assert torch.allclose(mean[1:], oracle[1:])  # untouched classes agree


def test_sphere_slab_oracle_flags_far_points_with_small_fpr() -> None:
    data, truth = _poisoned()
    res = sphere_slab(data, centroids="oracle", clean=~truth, sphere_quantile=0.95, slab_quantile=None)
    assert isinstance(res, DetectionResult)
    m = res.metrics(truth)
    assert m["recall"] == 1.0
    assert abs(m["clean_fpr"] - 0.05) < 0.02  # one quantile: about 1 - q of the clean records, per class
    both = sphere_slab(
        data, centroids="oracle", clean=~truth, sphere_quantile=0.95, slab_quantile=0.95
    ).metrics(truth)
    assert both["recall"] == 1.0
    assert 0.05 <= both["clean_fpr"] <= 0.10 + 1e-9
    assert both["flagged"] >= m["flagged"]


def test_sphere_slab_data_defence_and_explicit_radii() -> None:
    few, few_truth = _poisoned(n_poison=10)
    res = sphere_slab(few, centroids="data", sphere_quantile=0.9, slab_quantile=0.9)
    assert res.config["centroids"] == "data"
    assert res.config["radii_from"] == "all"
    assert res.metrics(few_truth)["recall"] == 1.0
    data, truth = _poisoned(n_poison=40)  # 40 poisons in class 0 (~18%) widen the data-fitted radii
    data_recall = sphere_slab(data, centroids="data").metrics(truth)["recall"]
    assert data_recall < sphere_slab(data, centroids="oracle", clean=~truth).metrics(truth)["recall"]
    mu = centroids(data.x, data.y, kind="oracle", clean=~truth)
    huge = sphere_slab(data, centroids=mu, sphere_radii=torch.full((10,), 1e6), slab_quantile=None)
    assert not bool(huge.flagged.any())
    tiny = sphere_slab(data, centroids=mu, sphere_radii=torch.full((10,), 1e-3), slab_quantile=None)
    assert bool(tiny.flagged.all())


def test_slab_direction_is_between_class_and_other_centroids() -> None:
    data = load_digits()
    mu = centroids(data.x, data.y, kind="data", estimator="mean")
    fitted = fit_sphere_slab(data.x, data.y, centers=mu, sphere_quantile=None, slab_quantile=0.5)
    expected = mu[3] - (mu.sum(0) - mu[3]) / 9
    assert torch.allclose(fitted.directions[3], expected / expected.norm())
    assert torch.isinf(fitted.sphere_radii).all()
    inside = fitted.contains(data.x, data.y)
    assert 0.45 < float(inside.double().mean()) < 0.56


def test_sphere_slab_errors() -> None:
    data, truth = _poisoned()
    with pytest.raises(ValidationError, match="sphere_quantile"):
        sphere_slab(data, sphere_quantile=0.0)
    with pytest.raises(ValidationError, match="slab_quantile"):
        sphere_slab(data, slab_quantile=1.5)
    with pytest.raises(ValidationError, match="clean"):
        sphere_slab(data, centroids="oracle")
    with pytest.raises(ValidationError, match="at least one part"):
        sphere_slab(data, sphere_quantile=None, slab_quantile=None)
    with pytest.raises(UnknownNameError, match="centroids"):
        sphere_slab(data, centroids="robust")  # type: ignore[arg-type]
    with pytest.raises(UnknownNameError, match="estimator"):
        centroids(data.x, data.y, estimator="mode")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="sphere_radii"):
        sphere_slab(data, sphere_radii=torch.ones(3))
    with pytest.raises(ValidationError, match="clean"):
        sphere_slab(data, centroids="oracle", clean=truth[:5])
    with pytest.raises(RampartsTypeError, match="data"):
        sphere_slab((data.x, data.y))  # type: ignore[arg-type]
