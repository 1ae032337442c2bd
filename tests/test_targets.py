"""Access-level views: exactly the declared knowledge, per-sample counting, budgets."""

from __future__ import annotations

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from ramparts.errors import AccessError, QueryBudgetExceeded, ValidationError
from ramparts.oracles import Knowledge, SklearnOracle, TorchOracle
from ramparts.targets import LabelBox, ScoreBox, WhiteBox, view_for

from .conftest import Trained


def test_label_box_offers_labels_only(digits_model: Trained) -> None:
    box = view_for(digits_model.oracle, Knowledge.LABEL, len(digits_model.x))
    assert type(box) is LabelBox
    for name in ("scores", "log_probs", "logits", "value_and_grad", "oracle", "model", "_ask_log_probs"):
        assert not hasattr(box, name)
    with pytest.raises(AttributeError):
        box.__dict__  # noqa: B018  (slots: no instance dictionary to hide a model in)
    out = box.labels(digits_model.x.requires_grad_(True))
    assert out.dtype == torch.int64
    assert out.grad_fn is None
    digits_model.x.requires_grad_(False)


def test_score_box_has_no_gradients(digits_model: Trained) -> None:
    box = view_for(digits_model.oracle, Knowledge.SCORE, len(digits_model.x))
    assert type(box) is ScoreBox
    assert not hasattr(box, "value_and_grad")
    assert not hasattr(box, "logits")
    x = digits_model.x.clone().requires_grad_(True)
    probs = box.scores(x)
    assert probs.grad_fn is None
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(x)), atol=1e-5)


def test_white_box_gradient_matches_autograd(digits_model: Trained) -> None:
    x, y = digits_model.x, digits_model.y
    box = view_for(digits_model.oracle, Knowledge.GRADIENT, len(x))
    assert isinstance(box, WhiteBox)
    logits, grad = box.value_and_grad(x, lambda z: torch.nn.functional.cross_entropy(z, y, reduction="none"))
    xr = x.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(digits_model.model(xr), y, reduction="sum").backward()
    assert xr.grad is not None
    assert torch.allclose(grad, xr.grad, atol=1e-6)
    assert torch.allclose(logits, digits_model.model(x).detach(), atol=1e-6)
    assert box.forwards.tolist() == [1] * len(x)
    assert box.backwards.tolist() == [1] * len(x)


def test_per_sample_counting_with_indices(digits_model: Trained) -> None:
    x = digits_model.x[:4]
    box = view_for(digits_model.oracle, Knowledge.SCORE, 4)
    box.labels(x)
    box.scores(x[[1, 1, 3]], torch.tensor([1, 1, 3]))
    assert box.queries.tolist() == [1, 3, 1, 2]
    assert box.backwards.tolist() == [0, 0, 0, 0]


def test_budget_stops_before_exceeding(digits_model: Trained) -> None:
    x = digits_model.x[:3]
    box = view_for(digits_model.oracle, Knowledge.LABEL, 3, budget=2)
    box.labels(x)
    box.labels(x[:1], torch.tensor([0]))
    with pytest.raises(QueryBudgetExceeded):
        box.labels(x)
    assert box.queries.tolist() == [2, 1, 1]  # the refused query was not counted
    box.labels(x[1:], torch.tensor([1, 2]))
    assert box.remaining() is not None
    assert box.remaining().tolist() == [0, 0, 0]


@pytest.mark.parametrize("budget", [0, -3, 2.5, True])
def test_bad_budget(digits_model: Trained, budget: object) -> None:
    with pytest.raises(ValidationError, match="max_queries"):
        view_for(digits_model.oracle, Knowledge.LABEL, 3, budget=budget)  # type: ignore[arg-type]


def test_sub_batch_without_indices_is_refused(digits_model: Trained) -> None:
    box = view_for(digits_model.oracle, Knowledge.LABEL, 5)
    with pytest.raises(ValidationError, match="idx"):
        box.labels(digits_model.x[:2])


def test_access_beyond_the_oracle_is_refused(digits_model: Trained) -> None:
    flat = digits_model.x.flatten(1).numpy()
    clf = LogisticRegression(max_iter=200).fit(flat, digits_model.y.numpy() % 3)
    oracle = SklearnOracle(clf, input_shape=(1, 8, 8))
    assert oracle.knowledge is Knowledge.SCORE
    with pytest.raises(AccessError, match="gradient"):
        view_for(oracle, Knowledge.GRADIENT, 3)
    label_only = SklearnOracle(clf, input_shape=(1, 8, 8), labels_only=True)
    with pytest.raises(AccessError, match="score"):
        view_for(label_only, Knowledge.SCORE, 3)
    box = view_for(oracle, Knowledge.SCORE, len(flat))
    assert torch.allclose(
        box.scores(digits_model.x), torch.from_numpy(clf.predict_proba(flat)).float(), atol=1e-6
    )


def test_torch_oracle_chunks_large_evaluations(digits_model: Trained) -> None:
    oracle = TorchOracle(digits_model.model, input_shape=(1, 8, 8))
    assert oracle.batch_size == 256  # the CPU default
    x = digits_model.x.repeat(9, 1, 1, 1)  # 576 rows: three chunks
    calls: list[int] = []
    handle = digits_model.model.register_forward_pre_hook(lambda _m, args: calls.append(len(args[0])))
    try:
        lp = oracle.log_probs(x)
    finally:
        handle.remove()
    assert calls == [256, 256, 64]
    assert torch.allclose(lp, digits_model.model(x).log_softmax(dim=1), atol=1e-5)
