"""Equation-solving extraction (Tramèr et al. 2016) of logistic and softmax regression on the digits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from ramparts.data import Dataset, load_digits
from ramparts.errors import AccessError, ValidationError
from ramparts.oracles.base import Knowledge, Oracle
from ramparts.oracles.sklearn import SklearnOracle
from ramparts.theft import THEFTS
from ramparts.theft.equations import EquationSolving


@pytest.fixture(scope="module")
def digits_split() -> tuple[Dataset, Dataset]:
    ds = load_digits()
    return ds.subset(range(1400)), ds.subset(range(1400, len(ds)))


def _fit(train: Dataset, binary: bool = False) -> LogisticRegression:
    x, y = train.x.flatten(1).numpy(), train.y.numpy()
    if binary:
        y = (y >= 5).astype(np.int64)
    return LogisticRegression(max_iter=2000).fit(x, y)


def test_softmax_regression_exact_with_d_plus_one_queries(digits_split: tuple[Dataset, Dataset]) -> None:
    train, test = digits_split
    lr = _fit(train)
    assert lr.coef_.shape == (10, 64)  # multinomial
    result = THEFTS.get("equations")()(SklearnOracle(lr, input_shape=(1, 8, 8)), train.x[:5], test)
    d = 64
    # d + 1 points in total: each answer carries all K probabilities, so the K - 1 systems share them.
    assert result.queries == d + 1
    assert result.fidelity == 1.0
    assert result.accuracy == pytest.approx(result.oracle_accuracy)
    assert result.curve == [(d + 1, 1.0)]
    w = result.substitute.weight.cpu().numpy()
    b = result.substitute.bias.cpu().numpy()
    np.testing.assert_allclose(w, lr.coef_ - lr.coef_[0], atol=1e-3)
    np.testing.assert_allclose(b, lr.intercept_ - lr.intercept_[0], atol=1e-3)
    assert np.abs(w[0]).max() == 0.0  # relative to class 0


def test_binary_logistic_regression(digits_split: tuple[Dataset, Dataset]) -> None:
    train, test = digits_split
    lr = _fit(train, binary=True)
    oracle = SklearnOracle(lr, input_shape=(1, 8, 8))
    test_binary = type(test)(test.x, (test.y >= 5).long(), ("low", "high"), "digits-binary")
    result = EquationSolving()(oracle, train.x[:5], test_binary)
    assert result.queries == 65
    assert result.fidelity == 1.0
    w = result.substitute.weight.cpu().numpy()
    np.testing.assert_allclose(w[1], lr.coef_[0], atol=1e-3)  # sigmoid(w.x + b) = p_1: w_1 - w_0 = w
    assert float(result.substitute.bias[1]) == pytest.approx(float(lr.intercept_[0]), abs=1e-3)


def test_more_points_by_least_squares(digits_split: tuple[Dataset, Dataset]) -> None:
    train, test = digits_split
    lr = _fit(train)
    result = EquationSolving(n_queries=100)(SklearnOracle(lr, input_shape=(1, 8, 8)), train.x[:5], test)
    assert result.queries == 100
    assert result.fidelity == 1.0
    np.testing.assert_allclose(result.substitute.weight.cpu().numpy(), lr.coef_ - lr.coef_[0], atol=1e-3)


def test_label_only_oracle_refused(digits_split: tuple[Dataset, Dataset]) -> None:
    train, test = digits_split
    oracle = SklearnOracle(_fit(train), input_shape=(1, 8, 8), labels_only=True)
    with pytest.raises(AccessError, match="needs score access"):
        EquationSolving()(oracle, train.x[:5], test)


def test_bad_budgets_refused(digits_split: tuple[Dataset, Dataset]) -> None:
    train, test = digits_split
    oracle = SklearnOracle(_fit(train), input_shape=(1, 8, 8))
    with pytest.raises(ValidationError, match="max_queries: expected at least 65"):
        EquationSolving()(oracle, train.x[:5], test, max_queries=64)
    with pytest.raises(ValidationError, match=r"n_queries: expected at least d \+ 1 = 65"):
        EquationSolving(n_queries=10)(oracle, train.x[:5], test)
    with pytest.raises(ValidationError, match="max_queries"):
        EquationSolving(n_queries=100)(oracle, train.x[:5], test, max_queries=80)


def test_deterministic(digits_split: tuple[Dataset, Dataset]) -> None:
    train, test = digits_split
    oracle = SklearnOracle(_fit(train), input_shape=(1, 8, 8))
    a = EquationSolving()(oracle, train.x[:5], test, seed=3).substitute.weight
    b = EquationSolving()(oracle, train.x[:5], test, seed=3).substitute.weight
    assert torch.equal(a, b)


def test_an_oracle_with_the_wrong_number_of_classes_is_refused() -> None:
    """A target that declares 10 classes but answers 3 scores per row is a clear error, not a crash."""

    class Liar(Oracle):
        knowledge = Knowledge.SCORE
        num_classes = 10
        device = torch.device("cpu")
        input_shape = (1, 8, 8)

        def log_probs(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((len(x), 3), -math.log(3))

        def labels(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(len(x), dtype=torch.int64)

    ds = load_digits()
    with pytest.raises(ValidationError, match="number of classes"):
        THEFTS.get("equations")()(Liar(), ds.x[:100], ds.subset(range(100, 200)))
