"""Recommender data, matrix factorisation, shilling attacks, their metrics and their detection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ramparts.errors import RampartsTypeError, UnknownNameError, ValidationError
from ramparts.recsys import (
    SHILLING,
    AverageAttack,
    BandwagonAttack,
    ProfileClassifier,
    RandomAttack,
    Ratings,
    SegmentAttack,
    ShillingAttack,
    detection_metrics,
    fit,
    load_movielens,
    pca_detect,
    prediction_shift,
    profile_features,
    rmse,
    synthetic_ratings,
    train_test_split,
)
from ramparts.recsys.model import MatrixFactorization


@pytest.fixture(scope="module")
def small() -> Ratings:
    return synthetic_ratings(n_users=300, n_items=200, seed=0)


@pytest.fixture(scope="module")
def clean_model(small: Ratings) -> MatrixFactorization:
    return fit(small, seed=0)


def _unpopular(r: Ratings) -> int:
    return int(r.item_counts().argsort()[10])


def _attack(name: str, **kw: Any) -> ShillingAttack:
    extra: dict[str, Any] = {"segment_items": [1, 2, 3]} if name == "segment" else {}
    return SHILLING.get(name)(**extra, **kw)


def test_generator_shapes_density_determinism(small: Ratings) -> None:
    assert small.n_users == 300
    assert small.n_items == 200
    assert 0.045 < small.density < 0.08
    assert float(small.ratings.min()) >= 1
    assert float(small.ratings.max()) <= 5
    assert torch.equal(small.ratings, small.ratings.round())
    pairs = small.users * small.n_items + small.items
    assert pairs.unique().numel() == len(small)
    again = synthetic_ratings(n_users=300, n_items=200, seed=0)
    assert torch.equal(again.users, small.users)
    assert torch.equal(again.ratings, small.ratings)
    other = synthetic_ratings(n_users=300, n_items=200, seed=1)
    assert not torch.equal(other.items, small.items)
    counts = small.item_counts().sort(descending=True).values.float()
    assert counts[:10].mean() > 4 * counts.median()  # Zipf-like popularity: a head of popular items
    assert int(small.user_counts().min()) >= 5


def test_generator_errors() -> None:
    with pytest.raises(ValidationError, match="density"):
        synthetic_ratings(density=0.0)
    with pytest.raises(RampartsTypeError, match="n_users"):
        synthetic_ratings(n_users=3.5)  # type: ignore[arg-type]


def test_split_per_user(small: Ratings) -> None:
    train, test = train_test_split(small, test_fraction=0.2, seed=0)
    assert len(train) + len(test) == len(small)
    assert bool((train.user_counts() >= 1).all())
    expected = (0.2 * small.user_counts()).floor()
    assert torch.equal(test.user_counts(), expected.long())
    train2, _ = train_test_split(small, test_fraction=0.2, seed=0)
    assert torch.equal(train.items, train2.items)
    with pytest.raises(ValidationError, match="test_fraction"):
        train_test_split(small, test_fraction=1.0)


def test_mf_learns(small: Ratings) -> None:
    train, test = train_test_split(small, seed=0)
    model = fit(train, seed=0)
    baseline = float((test.ratings - train.ratings.mean()).square().mean().sqrt())
    error = rmse(model, test)
    assert error < 0.85 * baseline
    assert torch.equal(fit(train, seed=0).item_factors, model.item_factors)
    mini = fit(train, batch_size=256, epochs=20, seed=0)
    assert rmse(mini, test) < baseline
    top = model.recommend([0, 1, 2], 10)
    assert top.shape == (3, 10)
    assert not bool(model.rated[torch.tensor([0, 1, 2])[:, None], top].any())
    pred = model.predict([0, 1], [3, 4])
    assert pred.shape == (2,)
    assert float(pred.min()) >= 1
    assert float(pred.max()) <= 5
    with pytest.raises(UnknownNameError, match="optimizer"):
        fit(train, optimizer="rmsprop")


@pytest.mark.parametrize("name", ["random", "average", "bandwagon", "segment"])
@pytest.mark.parametrize("intent", ["push", "nuke"])
def test_attack_profiles(small: Ratings, name: str, intent: str) -> None:
    target = _unpopular(small)
    attacked = _attack(name, attack_size=0.1, filler_size=0.1, intent=intent)(
        small, target_item=target, seed=3
    )
    r = attacked.ratings
    assert attacked.n_fake == 30
    assert r.n_users == 330
    assert bool(attacked.fake_mask[300:].all())
    assert not bool(attacked.fake_mask[:300].any())
    fake_rows = attacked.fake_mask[r.users]
    assert torch.equal(r.users[~fake_rows], small.users)
    n_selected = {"bandwagon": 5, "segment": 3}.get(name, 0)
    assert torch.equal(r.user_counts()[300:], torch.full((30,), 1 + n_selected + 20))
    on_target = fake_rows & (r.items == target)
    assert int(on_target.sum()) == 30
    assert bool((r.ratings[on_target] == (5.0 if intent == "push" else 1.0)).all())
    pairs = r.users * r.n_items + r.items
    assert pairs.unique().numel() == len(r)
    again = _attack(name, attack_size=0.1, filler_size=0.1, intent=intent)(small, target_item=target, seed=3)
    assert torch.equal(again.ratings.items, r.items)
    assert torch.equal(again.ratings.ratings, r.ratings)


def test_attack_filler_models(small: Ratings) -> None:
    target = _unpopular(small)
    seg = SegmentAttack(attack_size=0.05, filler_size=0.1, segment_items=[1, 2])(small, target_item=target)
    fake = seg.fake_mask[seg.ratings.users]
    items, values = seg.ratings.items[fake], seg.ratings.ratings[fake]
    filler = ~torch.isin(items, torch.tensor([target, 1, 2]))
    assert bool((values[filler] == 1.0).all())
    assert bool((values[~filler] == 5.0).all())
    band = BandwagonAttack(attack_size=0.05, n_selected=3)(small, target_item=target)
    popular = small.item_counts().topk(3).indices
    fake = band.fake_mask[band.ratings.users]
    assert bool(torch.isin(popular, band.ratings.items[fake]).all())
    avg = AverageAttack(attack_size=0.5, filler_size=0.5)(small, target_item=target, seed=0)
    fake = avg.fake_mask[avg.ratings.users] & (avg.ratings.items != target)
    item_mean, _ = small.item_stats()
    gap = (avg.ratings.ratings[fake] - item_mean[avg.ratings.items[fake]]).abs().mean()
    rnd = RandomAttack(attack_size=0.5, filler_size=0.5)(small, target_item=target, seed=0)
    fake_r = rnd.fake_mask[rnd.ratings.users] & (rnd.ratings.items != target)
    gap_r = (rnd.ratings.ratings[fake_r] - item_mean[rnd.ratings.items[fake_r]]).abs().mean()
    assert float(gap) < float(gap_r)  # average filler follows the item means, random filler does not


def test_attack_errors(small: Ratings) -> None:
    with pytest.raises(ValidationError, match="attack_size"):
        RandomAttack(attack_size=1.0)(small, target_item=0)
    with pytest.raises(ValidationError, match="attack_size"):
        RandomAttack(attack_size=-0.1)(small, target_item=0)
    with pytest.raises(ValidationError, match="filler_size"):
        RandomAttack(filler_size=1.0)(small, target_item=0)
    with pytest.raises(ValidationError, match="target_item"):
        RandomAttack()(small, target_item=200)
    with pytest.raises(ValidationError, match="segment_items"):
        SegmentAttack()(small, target_item=0)
    with pytest.raises(UnknownNameError, match="intent"):
        RandomAttack(intent="lift")(small, target_item=0)
    with pytest.raises(UnknownNameError, match="average, bandwagon, random, segment"):
        SHILLING.get("love-bomb")


@pytest.mark.parametrize("name", ["random", "average", "bandwagon", "segment"])
def test_push_and_nuke_shift(small: Ratings, clean_model: MatrixFactorization, name: str) -> None:
    target = _unpopular(small)
    pushed = _attack(name, attack_size=0.1, filler_size=0.1)(small, target_item=target, seed=1)
    report = prediction_shift(clean_model, fit(pushed.ratings, seed=0), small, target)
    assert report.prediction_shift > 0.2
    assert report.hit_ratio_after > report.hit_ratio_before
    if name in ("random", "average"):
        nuked = _attack(name, attack_size=0.1, filler_size=0.1, intent="nuke")(
            small, target_item=target, seed=1
        )
        down = prediction_shift(clean_model, fit(nuked.ratings, seed=0), small, target)
        assert down.prediction_shift < -0.2
        assert set(report.summary()) >= {"prediction_shift", "hr@10_before", "hr@10_after"}


def test_pca_detects_average_attack() -> None:
    # Measured (seed 0, 300 users x 600 items, 10% attack, 5% filler): recall 1.0.
    ratings = synthetic_ratings(n_users=300, n_items=600, seed=0)
    attacked = AverageAttack(attack_size=0.1, filler_size=0.05)(
        ratings, target_item=_unpopular(ratings), seed=1
    )
    result = pca_detect(attacked.ratings, n_flag=attacked.n_fake)
    precision, recall = detection_metrics(result.flagged, attacked.fake_mask)
    assert recall >= 0.7
    assert precision >= 0.7
    assert result.scores.shape == (330,)
    assert result.metrics(attacked.fake_mask)["recall"] == pytest.approx(recall)


def test_profile_classifier(small: Ratings) -> None:
    feats = profile_features(small)
    assert feats.shape == (300, 4)
    assert bool(torch.isfinite(feats).all())
    # Measured (seed 0, 300 users x 600 items, train: average 10%, test: random 10%): precision 0.97, recall 1.0.
    ratings = synthetic_ratings(n_users=300, n_items=600, seed=0)
    order = ratings.item_counts().argsort()
    train = AverageAttack(attack_size=0.1, filler_size=0.05)(ratings, target_item=int(order[5]), seed=11)
    test = RandomAttack(attack_size=0.1, filler_size=0.05)(ratings, target_item=int(order[20]), seed=2)
    clf = ProfileClassifier().fit(train.ratings, train.fake_mask)
    result = clf.detect(test.ratings)
    precision, recall = detection_metrics(result.flagged, test.fake_mask)
    assert recall >= 0.8
    assert precision >= 0.75
    assert float(result.scores[test.fake_mask].mean()) > float(result.scores[~test.fake_mask].mean())
    with pytest.raises(ValidationError, match="fit"):
        ProfileClassifier().detect(small)


def test_detection_metrics_values() -> None:
    flagged = torch.tensor([True, True, False, False])
    truth = torch.tensor([True, False, True, False])
    assert detection_metrics(flagged, truth) == (0.5, 0.5)
    with pytest.raises(RampartsTypeError, match="flagged"):
        detection_metrics(torch.tensor([1, 0]), truth)


ROWS = [("10", "7", "4"), ("10", "9", "2"), ("11", "7", "5")]


@pytest.mark.parametrize("fmt", ["u.data", "ratings.dat", "ratings.csv"])
def test_movielens_formats(tmp_path: Path, fmt: str) -> None:
    if fmt == "u.data":
        text = "".join(f"{u}\t{i}\t{r}\t881250949\n" for u, i, r in ROWS)
    elif fmt == "ratings.dat":
        text = "".join(f"{u}::{i}::{r}::978300760\n" for u, i, r in ROWS)
    else:
        text = "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r}.0,964982703\n" for u, i, r in ROWS)
    (tmp_path / fmt).write_text(text)
    r = load_movielens(tmp_path / fmt)
    assert (r.n_users, r.n_items, len(r)) == (2, 2, 3)
    assert r.user_ids == ("10", "11")
    assert r.item_ids == ("7", "9")
    assert r.users.tolist() == [0, 0, 1]
    assert r.items.tolist() == [0, 1, 0]
    assert r.ratings.tolist() == [4.0, 2.0, 5.0]
    assert r.scale == (2.0, 5.0)
    assert load_movielens(tmp_path, scale=(1, 5)).scale == (1.0, 5.0)


def test_movielens_errors(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="path"):
        load_movielens(tmp_path / "missing.data")
    bad = tmp_path / "u.data"
    bad.write_text("1\t2\t3\t0\n1\t3\tfive\t0\n")
    with pytest.raises(ValidationError, match="line 2"):
        load_movielens(bad)
    bad.write_text("1\t2\t3\t0\n1\t2\t4\t0\n")
    with pytest.raises(ValidationError, match=r"line 2.*one rating per"):
        load_movielens(bad)
    bad.write_text("1\t2\n")
    with pytest.raises(ValidationError, match="line 1"):
        load_movielens(bad)
