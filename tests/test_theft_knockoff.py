"""Knockoff Nets on the digits CNN with transfer sets from other distributions (CIFAR-10, noise)."""

from __future__ import annotations

import json
from pathlib import Path
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


@pytest.mark.parametrize(
    ("cls", "extra"),
    [
        (KnockoffNets, {"strategy": "random"}),
        (KnockoffNets, {"strategy": "adaptive", "reward": "diversity"}),
        (KnockoffNetsLabels, {"strategy": "adaptive", "reward": "loss"}),
    ],
)
def test_interrupted_run_resumes_to_the_same_result(
    cls: type[KnockoffNets],
    extra: dict[str, Any],
    digits_model: Trained,
    held_out: Dataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    noise = torch.rand(600, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    kw: dict[str, Any] = {"arch": "mlp", "epochs": 2, "budget": 300, "n_groups": 4, "step_size": 16, **extra}
    rows = [0]
    hook = digits_model.model.register_forward_hook(
        lambda m, args, out: rows.__setitem__(0, rows[0] + len(out))
    )
    try:
        whole = cls(**kw)(digits_model.oracle, noise, held_out, seed=7)
        rows_whole, rows[0] = rows[0], 0
        resumed = _interrupt_and_resume(cls, kw, digits_model, noise, held_out, tmp_path, monkeypatch, rows)
    finally:
        hook.remove()
    assert rows[0] == rows_whole - 150, "the resumed run asks only for the last phase's 150 images"
    assert resumed.queries == whole.queries == 300
    assert resumed.curve == whole.curve
    for a, b in zip(resumed.substitute.parameters(), whole.substitute.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValidationError, match="run_dir"):
        cls(**{**kw, "budget": 200})(
            digits_model.oracle, noise, held_out, seed=7, run_dir=tmp_path / "knockoff"
        )


def _interrupt_and_resume(
    cls: type[KnockoffNets],
    kw: dict[str, Any],
    digits_model: Trained,
    noise: Tensor,
    held_out: Dataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    rows: list[int],
) -> Any:
    """Run until phase 2's training raises, check the folder holds phase 1, then resume (rows counted
    from the resume on)."""

    fit = KnockoffNets._fit

    def crash_in_phase_2(self: KnockoffNets, *args: Any, **kwargs: Any) -> None:
        if args[-1] == 2:
            raise RuntimeError("interrupted")
        fit(self, *args, **kwargs)

    monkeypatch.setattr(KnockoffNets, "_fit", crash_in_phase_2)
    run_dir = tmp_path / "knockoff"
    with pytest.raises(RuntimeError, match="interrupted"):
        cls(**kw)(digits_model.oracle, noise, held_out, seed=7, run_dir=run_dir)
    state = json.loads((run_dir / "knockoff_state.json").read_text())
    assert state["step"] == 1
    assert state["queries"] == 150
    monkeypatch.setattr(KnockoffNets, "_fit", fit)

    rows[0] = 0
    return cls(**kw)(digits_model.oracle, noise, held_out, seed=7, run_dir=run_dir)
