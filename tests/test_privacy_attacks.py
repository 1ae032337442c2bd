"""Membership inference on the digits: metrics conventions, signals, every registered attack end to end."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from ramparts.data import Dataset, load_digits
from ramparts.errors import AccessError, ValidationError
from ramparts.oracles import SklearnOracle
from ramparts.privacy import MEMBERSHIP, ShadowPool, ShadowRecipe, train_shadows
from ramparts.privacy.metrics import membership_metrics, tpr_at_fpr
from ramparts.privacy.signals import augment, signal
from ramparts.zoo import build

RECIPE = ShadowRecipe("mlp", {"hidden": [128]}, epochs=30, batch_size=64, lr=1e-3)


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    """17 models on random halves of the digits: model 0 is the target, the other 16 the shadows."""
    ds = load_digits()
    pool = train_shadows(ds, 17, RECIPE, seed=0)
    target = build("mlp", **RECIPE.full_config(ds))
    target.load_state_dict(pool.states[0])
    shadows = ShadowPool(ds, pool.masks[1:], RECIPE, pool.states[1:])
    return {"ds": ds, "target": target.eval(), "members": pool.masks[0], "shadows": shadows}


def test_members_are_label_one() -> None:
    members = torch.tensor([1, 1, 0, 0])
    perfect = membership_metrics(torch.tensor([0.9, 0.8, 0.1, 0.2]), members)
    assert perfect["auc"] == 1.0
    reversed_ = membership_metrics(torch.tensor([0.1, 0.2, 0.9, 0.8]), members)
    assert reversed_["auc"] == 0.0
    assert perfect["n_members"] == 2


def test_tpr_at_low_fpr_and_resolution() -> None:
    fpr = np.array([0.0, 0.0005, 0.001, 0.01, 1.0])
    tpr = np.array([0.0, 0.02, 0.05, 0.2, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.001) == 0.05
    assert tpr_at_fpr(fpr, tpr, 0.0001) == 0.0
    gen = torch.Generator().manual_seed(0)
    scores = torch.cat([torch.randn(500, generator=gen) + 1, torch.randn(500, generator=gen)])
    members = torch.cat([torch.ones(500), torch.zeros(500)])
    m = membership_metrics(scores, members, n_bootstrap=50)
    assert 0.7 < m["auc"] < 0.8  # two unit Gaussians one apart: AUC = Phi(1/sqrt 2) = 0.76
    assert m["tpr@0.0001"] is None, "1 in 10,000 cannot be resolved with 500 non-members"
    low, high = m["ci95"]["auc"]
    assert low < m["auc"] < high
    with pytest.raises(ValidationError, match="members"):
        membership_metrics(scores, torch.ones(1000))
    with pytest.raises(ValidationError, match="members"):
        membership_metrics(scores, torch.full((1000,), 2))


def test_signals_are_stable_and_consistent() -> None:
    logits = torch.tensor([[30.0, 0.0, -5.0], [0.0, 1.0, 2.0]])
    lp = logits.log_softmax(1)
    y = torch.tensor([0, 2])
    logit = signal(lp, y, "logit")
    assert torch.isfinite(logit).all(), "p_y rounds to 1 in float32, yet the logit stays finite"
    assert logit[0] == pytest.approx(30.0 - math.log(1 + math.exp(-5.0)), abs=1e-3)
    assert signal(lp, y, "hinge")[1] == pytest.approx(1.0, abs=1e-5)
    assert signal(lp, y, "loss")[1] == pytest.approx(float(-lp[1, 2]))
    stacked = torch.stack([lp, lp.flip(1)])  # leading dimensions (models, views) are kept
    assert torch.equal(
        signal(stacked, y, "hinge"), torch.stack([signal(lp, y, "hinge"), signal(lp.flip(1), y, "hinge")])
    )
    x = torch.arange(9.0).view(1, 1, 3, 3)
    views = augment(x, ["id", "mirror", "shift:1,0", "shift:0,-1"])
    assert views.shape == (4, 1, 1, 3, 3)
    assert views[1, 0, 0, 0].tolist() == [2.0, 1.0, 0.0]
    assert views[2, 0, 0, 0].tolist() == [0.0, 0.0, 1.0]  # content moved right by one
    assert views[3, 0, 0, :, 0].tolist() == [3.0, 6.0, 0.0]  # content moved up by one
    with pytest.raises(ValidationError, match="views"):
        augment(x, ["shift:a,1"])


@pytest.mark.parametrize("name", sorted(MEMBERSHIP.names()))
def test_every_attack_scores_every_record(name: str, setup: dict[str, Any]) -> None:
    ds = setup["ds"]
    atk = MEMBERSHIP.get(name)()
    result = atk(
        setup["target"],
        ds.x,
        ds.y,
        members=setup["members"],
        shadows=setup["shadows"],
        pool_index=torch.arange(len(ds)),
        population=ds.subset(range(0, len(ds), 5)),
    )
    assert result.scores.shape == (len(ds),)
    assert result.metrics is not None
    assert 0.0 <= result.metrics["auc"] <= 1.0
    assert result.queries >= len(ds)
    summary = result.summary()
    assert summary["attack"] == name
    assert summary["n"] == len(ds)


def test_shadow_attacks_beat_chance_and_loss_at_low_fpr(setup: dict[str, Any]) -> None:
    ds = setup["ds"]
    kw: dict[str, Any] = {
        "members": setup["members"],
        "shadows": setup["shadows"],
        "pool_index": torch.arange(len(ds)),
    }
    loss = MEMBERSHIP.get("loss")()(setup["target"], ds.x, ds.y, members=setup["members"])
    lira = MEMBERSHIP.get("lira")(global_variance=True)(setup["target"], ds.x, ds.y, **kw)
    offline = MEMBERSHIP.get("lira")(online=False)(setup["target"], ds.x, ds.y, **kw)
    assert loss.metrics is not None
    assert lira.metrics is not None
    assert offline.metrics is not None
    assert lira.metrics["auc"] > 0.53
    assert offline.metrics["auc"] > 0.53
    assert lira.metrics["tpr@0.01"] > loss.metrics["tpr@0.01"]


def test_shadow_free_records_are_all_out_and_online_needs_in(setup: dict[str, Any]) -> None:
    ds = setup["ds"]
    offline = MEMBERSHIP.get("lira")(online=False)
    result = offline(setup["target"], ds.x[:50], ds.y[:50], shadows=setup["shadows"])
    assert result.metrics is None
    assert result.scores.shape == (50,)
    with pytest.raises(ValidationError, match="shadows"):
        MEMBERSHIP.get("lira")()(setup["target"], ds.x, ds.y)
    with pytest.raises(ValidationError, match="population"):
        MEMBERSHIP.get("rmia")()(setup["target"], ds.x, ds.y, shadows=setup["shadows"])


def test_label_only_target_refuses_score_attacks() -> None:
    from sklearn.linear_model import LogisticRegression

    ds = load_digits()
    lr = LogisticRegression(max_iter=300).fit(ds.x[:900].flatten(1).numpy(), ds.y[:900].numpy())
    oracle = SklearnOracle(lr, input_shape=(1, 8, 8), labels_only=True)
    members = torch.arange(len(ds)) < 900
    with pytest.raises(AccessError):
        MEMBERSHIP.get("loss")()(oracle, ds.x, ds.y, members=members)
    gap = MEMBERSHIP.get("gap")()(oracle, ds.x, ds.y, members=members)
    assert gap.metrics is not None
    assert gap.metrics["auc"] > 0.5


def test_shadow_models_resume_without_retraining(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = load_digits().subset(range(400))
    recipe = ShadowRecipe("mlp", {"hidden": [16]}, epochs=2, batch_size=64, lr=1e-3)
    whole = train_shadows(ds, 4, recipe, seed=1, chunk=2)
    import ramparts.privacy.shadow as shadow_module

    original = shadow_module.train_models
    calls: list[int] = []

    def second_chunk_fails(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[4]))
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return original(*args, **kwargs)

    monkeypatch.setattr(shadow_module, "train_models", second_chunk_fails)
    with pytest.raises(RuntimeError, match="interrupted"):
        train_shadows(ds, 4, recipe, seed=1, chunk=2, run_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.glob("shadow-*.safetensors")) == [
        "shadow-0000.safetensors",
        "shadow-0001.safetensors",
    ]
    calls.clear()
    monkeypatch.setattr(
        shadow_module, "train_models", lambda *a, **k: (calls.append(len(a[4])), original(*a, **k))[1]
    )
    resumed = train_shadows(ds, 4, recipe, seed=1, chunk=2, run_dir=tmp_path)
    assert calls == [2], "only the unfinished chunk trains again"
    assert torch.equal(resumed.masks, whole.masks)
    for a, b in zip(resumed.states, whole.states, strict=True):
        for key in a:
            torch.testing.assert_close(a[key], b[key])
    with pytest.raises(ValidationError, match="run_dir"):
        train_shadows(ds, 4, recipe, seed=2, chunk=2, run_dir=tmp_path)


def test_bad_inputs_name_the_parameter(setup: dict[str, Any]) -> None:
    ds = setup["ds"]
    atk = MEMBERSHIP.get("loss")()
    with pytest.raises(ValidationError, match="members"):
        atk(setup["target"], ds.x, ds.y, members=torch.ones(3))
    with pytest.raises((ValidationError, TypeError), match="y"):
        atk(setup["target"], ds.x, ds.y.float())
    with pytest.raises(ValidationError, match="pool_index"):
        MEMBERSHIP.get("lira")()(
            setup["target"], ds.x, ds.y, shadows=setup["shadows"], pool_index=torch.full((len(ds),), -1)
        )
    with pytest.raises(ValidationError, match="fraction"):
        train_shadows(ds, 2, RECIPE, fraction=1.0)
    with pytest.raises(ValidationError, match="online"):
        MEMBERSHIP.get("lira")(online="yes")(setup["target"], ds.x, ds.y, shadows=setup["shadows"])
    assert isinstance(setup["target"], nn.Module)
    assert isinstance(ds, Dataset)


def test_shadow_outputs_are_computed_once_per_records(setup: dict[str, Any]) -> None:
    """Attacks that score the same records with one pool pay for the shadows' passes once; an in-place change
    of the records, or other views, is computed afresh."""
    pool: ShadowPool = setup["shadows"]
    x = setup["ds"].x[:40].clone()
    first = pool.log_probs(x)
    assert pool.log_probs(x) is first
    assert pool.log_probs(x, views=("id", "mirror")) is not first
    x[0] = 1.0 - x[0]
    again = pool.log_probs(x)
    assert again is not first
    assert not torch.equal(again[:, :, 0], first[:, :, 0])
    assert torch.equal(again[:, :, 1:], first[:, :, 1:])
