"""Jacobian-based dataset augmentation (Papernot et al. 2017) and transfer attacks, on the digits data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from ramparts.data import Dataset, load_digits
from ramparts.errors import UnknownNameError, ValidationError
from ramparts.oracles import TorchOracle
from ramparts.results import TheftResult
from ramparts.theft import THEFTS
from ramparts.theft.jacobian import JacobianAugmentation, jacobian_sign
from ramparts.theft.transfer import transfer_attack
from tests.conftest import Trained

FAST: dict[str, Any] = {"lam": 0.1}


class CountingOracle(TorchOracle):
    """A TorchOracle that counts every row whose label it gives."""

    rows = 0

    def labels(self, x: Tensor) -> Tensor:
        self.rows += len(x)
        return super().labels(x)


@pytest.fixture(scope="module")
def split() -> tuple[Tensor, Dataset]:
    """50 attacker seeds from the digits the oracle never saw; the remaining 347 measure fidelity."""
    ds = load_digits()
    seeds = ds.x[1400:1450].contiguous()
    held = Dataset(ds.x[1450:].contiguous(), ds.y[1450:].contiguous(), classes=ds.classes, name="held")
    return seeds, held


def counting(trained: Trained) -> CountingOracle:
    return CountingOracle(trained.model, input_shape=(1, 8, 8))


@pytest.fixture(scope="module")
def stolen(digits_model: Trained, split: tuple[Tensor, Dataset]) -> tuple[TheftResult, int]:
    seeds, held = split
    oracle = counting(digits_model)
    result = JacobianAugmentation(rounds=3, **FAST)(oracle, seeds, held, seed=0)
    return result, oracle.rows - len(held)


def test_registered() -> None:
    assert THEFTS.get("jacobian") is JacobianAugmentation


def test_fidelity_well_above_chance_and_queries_exact(stolen: tuple[TheftResult, int]) -> None:
    result, asked = stolen
    # 50 seeds, doubled by each of the 2 augmentations: every labelled point is exactly one query.
    assert result.queries == 200
    assert asked == 200
    assert [q for q, _ in result.curve] == [50, 100, 200]
    assert result.fidelity > 0.6
    assert result.accuracy > 0.6
    assert result.curve[-1][1] == pytest.approx(result.fidelity)
    assert not result.budget_exhausted
    assert result.summary()["queries"] == 200


def test_lambda_sign_flips_every_tau(digits_model: Trained) -> None:
    attack = JacobianAugmentation(lam=0.1, tau=2)
    assert [attack.step(k) for k in range(6)] == [0.1, 0.1, -0.1, -0.1, 0.1, 0.1]
    assert JacobianAugmentation(lam=0.1).step(5) == 0.1
    model, x = digits_model.model, digits_model.x[:32]
    y = digits_model.oracle.labels(x)
    sign = jacobian_sign(model, x, y)
    for k in (0, 2):
        new = attack._augment(model, x, y, k, base_seed=0, lo=0.0, hi=1.0)
        step = attack.step(k)
        inside = ((x + step * sign) >= 0) & ((x + step * sign) <= 1)
        assert torch.allclose((new - x)[inside], (step * sign)[inside], atol=1e-6)
        # The substitute's logit for the oracle's label rises with +lambda and falls with -lambda.
        with torch.no_grad():
            gain = (model(new) - model(x)).gather(1, y[:, None]).mean()
        assert float(gain) * step > 0


def test_reservoir_caps_queries(digits_model: Trained, split: tuple[Tensor, Dataset]) -> None:
    seeds, held = split
    attack = JacobianAugmentation(rounds=4, sigma=1, kappa=20, lam=0.1, epochs=2)
    result = attack(counting(digits_model), seeds, held)
    # 50 seeds, all 50 augmented once (sigma = 1), then 20 per round: 50 + 50 + 20 + 20.
    assert result.queries == 140
    assert [q for q, _ in result.curve] == [50, 100, 120, 140]


def test_budget_cuts_a_round(digits_model: Trained, split: tuple[Tensor, Dataset]) -> None:
    seeds, held = split
    result = JacobianAugmentation(rounds=3, lam=0.1, epochs=2)(
        digits_model.oracle, seeds, held, max_queries=130
    )
    assert result.queries == 130
    assert result.budget_exhausted
    assert [q for q, _ in result.curve] == [50, 100, 130]


def test_budget_below_seed_size_is_refused(digits_model: Trained, split: tuple[Tensor, Dataset]) -> None:
    seeds, held = split
    with pytest.raises(ValidationError, match=r"max_queries.*at least 50"):
        JacobianAugmentation(rounds=2)(digits_model.oracle, seeds, held, max_queries=49)


def test_empty_seed_is_refused(digits_model: Trained, split: tuple[Tensor, Dataset]) -> None:
    _, held = split
    with pytest.raises(ValidationError, match="seed_data"):
        JacobianAugmentation(rounds=2)(digits_model.oracle, torch.empty(0, 1, 8, 8), held)


def test_bad_hyperparameters_are_refused(digits_model: Trained, split: tuple[Tensor, Dataset]) -> None:
    seeds, held = split
    with pytest.raises(ValidationError, match="tau"):
        JacobianAugmentation(tau=0)(digits_model.oracle, seeds, held)
    with pytest.raises(ValidationError, match="arch"):
        JacobianAugmentation(arch="nope")(digits_model.oracle, seeds, held)


def test_interrupted_run_resumes_from_last_round(
    digits_model: Trained, split: tuple[Tensor, Dataset], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeds, held = split
    params: dict[str, Any] = {"rounds": 3, "lam": 0.1, "epochs": 5, "lr": 3e-3}
    whole = JacobianAugmentation(**params)(digits_model.oracle, seeds, held, seed=3)

    calls = {"n": 0}
    original = JacobianAugmentation._train

    def crash_in_round_2(self: JacobianAugmentation, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # the training of round 2 (rounds 0 and 1 completed)
            raise RuntimeError("interrupted")
        original(self, *args, **kwargs)

    monkeypatch.setattr(JacobianAugmentation, "_train", crash_in_round_2)
    run_dir = tmp_path / "theft"
    with pytest.raises(RuntimeError, match="interrupted"):
        JacobianAugmentation(**params)(digits_model.oracle, seeds, held, seed=3, run_dir=run_dir)
    state = json.loads((run_dir / "jacobian_state.json").read_text())
    assert state["step"] == 1
    assert state["queries"] == 100
    with np.load(run_dir / state["arrays"], allow_pickle=False) as data:
        assert data["x"].shape == (100, 1, 8, 8)
    monkeypatch.setattr(JacobianAugmentation, "_train", original)

    oracle = counting(digits_model)
    resumed = JacobianAugmentation(**params)(oracle, seeds, held, seed=3, run_dir=run_dir)
    assert oracle.rows - len(held) == 100  # only round 2's new points were asked
    assert resumed.queries == whole.queries == 200
    assert resumed.curve == whole.curve
    assert resumed.fidelity == whole.fidelity
    for a, b in zip(
        resumed.substitute.state_dict().values(), whole.substitute.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)

    with pytest.raises(ValidationError, match="run_dir"):
        JacobianAugmentation(**{**params, "lam": 0.2})(
            digits_model.oracle, seeds, held, seed=3, run_dir=run_dir
        )


def test_transfer_beats_noise(stolen: tuple[TheftResult, int], digits_model: Trained) -> None:
    result, _ = stolen
    ds = load_digits()
    x, y = ds.x[1450:1650], ds.y[1450:1650]
    oracle = counting(digits_model)
    rows = transfer_attack(result.substitute, oracle, x, y, attack="fgsm", eps_grid=[0.1, 0.3])
    assert [r["eps"] for r in rows] == [0.1, 0.3]
    at3 = rows[1]
    assert at3["oracle_error"] > at3["noise_error"] + 0.2
    assert at3["oracle_error"] > rows[0]["oracle_error"]
    assert at3["substitute_fooled"] > 0.9
    # clean labels once, then adversarial + noise labels per eps
    assert [r["oracle_queries"] for r in rows] == [400, 400]
    assert rows[-1]["queries_total"] == oracle.rows == 200 + 800
    json.dumps(rows)


@pytest.mark.parametrize("attack", ["pgd", "mifgsm"])
def test_transfer_iterative_attacks(
    stolen: tuple[TheftResult, int], digits_model: Trained, attack: str
) -> None:
    result, _ = stolen
    x, y = digits_model.x, digits_model.y
    rows = transfer_attack(
        result.substitute,
        digits_model.oracle,
        x,
        y,
        attack=attack,
        eps_grid=[0.3],
        steps=5,
        noise_baseline=False,
    )
    assert rows[0]["oracle_error"] > 0.3
    assert "noise_error" not in rows[0]


def test_transfer_unknown_attack(stolen: tuple[TheftResult, int], digits_model: Trained) -> None:
    with pytest.raises(UnknownNameError, match="fgsm"):
        transfer_attack(
            stolen[0].substitute, digits_model.oracle, digits_model.x, digits_model.y, attack="cw"
        )
