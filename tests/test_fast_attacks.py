"""The GPU speed options on the CPU: oracle precision, memory format and compilation; active-set compaction.

Compaction must not change results: "bucketed" (masked rows, a ladder of shapes, the count read one
step late) and "off" give the same adversarial examples, successes and per-sample charges as "exact".
Bit for bit where the step uses the gradient's sign (linf); where it uses the gradient's values
(MI-FGSM's L1 normalisation, l2 steps) up to the last float bit: the CPU's matrix kernels round
differently for different batch sizes, and "exact" itself changes the batch size at every step.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from ramparts.errors import QueryBudgetExceeded, RampartsTypeError, ValidationError
from ramparts.evasion import ATTACKS, buckets
from ramparts.oracles import TorchOracle
from ramparts.results import EvasionResult
from ramparts.targets import WhiteBox
from ramparts.threat import ThreatModel

from .conftest import Trained

# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per value); through a few layers with float32
# accumulation the logits move by well under 2% of their norm.
BF16_REL_TOL = 2e-2

DETERMINISTIC: dict[str, tuple[dict[str, Any], ThreatModel]] = {
    "pgd": ({"steps": 12, "restarts": 2}, ThreatModel(eps=0.1)),
    "bim": ({"steps": 12, "step_size": 0.02}, ThreatModel(eps=0.1)),
    "mifgsm": ({"steps": 12}, ThreatModel(eps=0.2)),
    "ill": ({"steps": 12, "step_size": 0.05}, ThreatModel(eps=0.3, goal="targeted", target="least_likely")),
    "apgd": ({"steps": 12}, ThreatModel(eps=0.1)),
    "pgd-l2": ({"steps": 12}, ThreatModel(norm="l2", eps=1.0)),
}


def _oracle(trained: Trained, **options: Any) -> TorchOracle:
    """An oracle over a copy of the fixture's model, so memory-format changes do not leak to other tests."""
    return TorchOracle(copy.deepcopy(trained.model), input_shape=(1, 8, 8), **options)


# ------------------------------------------------------------------------------------ option validation


@pytest.mark.parametrize(
    ("options", "param", "error"),
    [
        ({"precision": "fp16"}, "precision", ValidationError),
        ({"channels_last": "yes"}, "channels_last", RampartsTypeError),
        ({"compile": "max-autotune"}, "compile", ValidationError),
    ],
)
def test_oracle_options_are_validated(
    digits_model: Trained, options: dict[str, Any], param: str, error: type[Exception]
) -> None:
    with pytest.raises(error, match=param):
        _oracle(digits_model, **options)


def test_oracle_defaults_and_summary(digits_model: Trained) -> None:
    plain = _oracle(digits_model)
    assert plain.summary() == {
        "device": "cpu",
        "batch_size": 256,
        "precision": "fp32",
        "channels_last": False,
        "compile": None,
        "decision_tolerance": 0.0,
    }
    # The defaults are today's forward exactly.
    with torch.no_grad():
        assert torch.equal(plain.logits(digits_model.x), digits_model.model(digits_model.x))
    fast = _oracle(digits_model, precision="bf16", channels_last=True)
    assert fast.summary()["precision"] == "bf16"
    assert fast.summary()["channels_last"] is True


@pytest.mark.parametrize("name", ["pgd", "bim", "mifgsm", "apgd"])
def test_compaction_is_validated(name: str, digits_model: Trained) -> None:
    attack = ATTACKS.get(name)(compaction="sometimes")
    with pytest.raises(ValidationError, match="compaction"):
        attack(digits_model.oracle, digits_model.x, digits_model.y, ThreatModel(eps=0.1))


def test_compaction_auto_resolves_by_device() -> None:
    assert buckets.resolve("auto", torch.device("cpu")) == "exact"
    assert buckets.resolve("auto", torch.device("cuda")) == "bucketed"
    assert buckets.resolve("off", torch.device("cuda")) == "off"
    with pytest.raises(ValidationError, match="compaction"):
        buckets.resolve("fast", torch.device("cpu"))


# ------------------------------------------------------------------------------------ oracle precision


def test_bf16_logits_close_to_fp32(digits_model: Trained) -> None:
    fp32, bf16 = _oracle(digits_model), _oracle(digits_model, precision="bf16")
    x = digits_model.x.clone().requires_grad_(True)
    a, b = fp32.logits(x), bf16.logits(x)
    assert b.dtype == torch.float32
    assert float((a - b).detach().norm() / a.detach().norm()) < BF16_REL_TOL
    assert float((a.argmax(1) == b.argmax(1)).float().mean()) >= 0.95
    (ga,) = torch.autograd.grad(a.sum(), x)
    (gb,) = torch.autograd.grad(b.sum(), x)
    assert gb.dtype == torch.float32
    assert float(torch.nn.functional.cosine_similarity(ga.flatten(), gb.flatten(), dim=0)) > 0.95


def test_channels_last_gives_the_same_logits(digits_model: Trained) -> None:
    plain, cl = _oracle(digits_model), _oracle(digits_model, channels_last=True)
    conv = next(m for m in cl.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = digits_model.x.clone().requires_grad_(True)
    a, b = plain.logits(x), cl.logits(x)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    (ga,) = torch.autograd.grad(a.sum(), x)
    (gb,) = torch.autograd.grad(b.sum(), x)
    assert torch.allclose(ga, gb, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compile_on_cpu(mode: str, digits_model: Trained) -> None:
    """Compiled logits and input gradients equal eager ones (reduce-overhead: CUDA graphs on a GPU; on the
    CPU it checks the copies out of the graph's buffers keep the values)."""
    try:
        compiled = _oracle(digits_model, compile=mode)
        x = digits_model.x[:8].clone().requires_grad_(True)
        out = compiled.logits(x)
        (grad,) = torch.autograd.grad(out.sum(), x)
    except Exception as exc:  # inductor needs a working C++ toolchain on the CPU
        pytest.skip(f"torch.compile cannot compile on this CPU: {type(exc).__name__}: {exc}")
    eager = digits_model.model(x)
    (expected,) = torch.autograd.grad(eager.sum(), x)
    assert torch.allclose(out, eager, atol=1e-4, rtol=1e-4)
    assert torch.allclose(grad, expected, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------ active sets


def test_bucket_sizes_and_selection() -> None:
    assert [buckets.bucket(c, 1) for c in (1, 2, 3, 5, 8, 9, 1000)] == [1, 2, 4, 8, 8, 16, 1024]
    # Eight sizes per doubling above 16: 4,184 rows fit 4,608 (4,096 + 512); 4,096 is itself a size.
    assert [buckets.bucket(c, 8) for c in (9, 16, 17, 900, 1000, 4096, 4097, 4184)] == [
        16,
        16,
        18,
        960,
        1024,
        4096,
        4608,
        4608,
    ]
    assert buckets.shrink_to(None, 100) is None
    assert buckets.shrink_to(0, 100) == 0
    assert buckets.shrink_to(90, 100) == 96
    assert buckets.shrink_to(97, 100) is None  # 97 rows need 104: no smaller size holds them
    live = torch.tensor([False, True, False, True, True, False])
    assert buckets.select(live, 4).tolist() == [1, 3, 4, 0]
    margin = torch.tensor([0.5, -1.0, 2.0, 0.25, 0.5, -3.0])
    inf = float("inf")
    assert buckets.masked(margin, live).tolist() == [inf, -1.0, inf, 0.25, 0.5, inf]


def test_lagged_count_reads_one_step_late() -> None:
    counter = buckets.LaggedCount(torch.device("cpu"))
    assert counter.exchange(torch.tensor([True, True, False])) is None
    assert counter.exchange(torch.tensor([True, False, False])) == 2
    assert counter.exchange(torch.tensor([False, False, False])) == 1


def _run(name: str, compaction: str, trained: Trained, **kwargs: Any) -> EvasionResult:
    params, threat = DETERMINISTIC[name]
    attack = ATTACKS.get(name.split("-")[0])(**params, compaction=compaction)
    return attack(trained.oracle, trained.x, trained.y, threat, seed=5, **kwargs)


# Attacks whose steps depend on the gradient's values, not only its sign (see the module docstring).
ROUNDING = {"mifgsm", "pgd-l2"}


def _same(a: EvasionResult, b: EvasionResult, bitwise: bool = True) -> None:
    assert torch.equal(a.success, b.success)
    if bitwise:
        assert torch.equal(a.x_adv, b.x_adv)
    else:
        assert torch.allclose(a.x_adv, b.x_adv, rtol=0, atol=1e-6)
    assert torch.equal(a.queries, b.queries)
    assert torch.equal(a.backwards, b.backwards)
    assert a.budget_exhausted == b.budget_exhausted


@pytest.fixture
def shrinks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes the bucketed active sets shrink to during the test, in order."""
    sizes: list[int] = []
    select = buckets.select

    def spy(live: torch.Tensor, size: int) -> torch.Tensor:
        sizes.append(size)
        return select(live, size)

    monkeypatch.setattr(buckets, "select", spy)
    return sizes


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_bucketed_and_off_equal_exact(name: str, digits_model: Trained, shrinks: list[int]) -> None:
    exact = _run(name, "exact", digits_model)
    assert not shrinks
    bucketed = _run(name, "bucketed", digits_model)
    off = _run(name, "off", digits_model)
    _same(bucketed, exact, bitwise=name not in ROUNDING)
    _same(off, exact, bitwise=name not in ROUNDING)
    assert 0 < exact.success_rate < 1, "a setting where some samples finish early and others do not"
    # The bucketed run did shrink, to ladder sizes only, each smaller than the last.
    assert shrinks
    assert all(buckets.bucket(s, buckets.PER_OCTAVE) == s for s in shrinks)
    assert shrinks == sorted(set(shrinks), reverse=True)


def test_cudnn_benchmark_keeps_power_of_two_shapes(
    digits_model: Trained, shrinks: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    bucketed = _run("pgd", "bucketed", digits_model)
    assert shrinks
    assert all(s & (s - 1) == 0 for s in shrinks)
    _same(bucketed, _run("pgd", "exact", digits_model))


@pytest.mark.parametrize("name", ["pgd", "apgd"])
def test_bucketed_budget_equals_exact(name: str, digits_model: Trained) -> None:
    exact = _run(name, "exact", digits_model, max_queries=5)
    bucketed = _run(name, "bucketed", digits_model, max_queries=5)
    _same(bucketed, exact)
    assert int(bucketed.queries.max()) <= 5
    assert bucketed.budget_exhausted


def test_active_rows_alone_are_charged(digits_model: Trained) -> None:
    x, y = digits_model.x[:6], digits_model.y[:6]
    box = WhiteBox(digits_model.oracle, 6, budget=2)
    loss = lambda logits: torch.nn.functional.cross_entropy(logits, y, reduction="none")  # noqa: E731
    live = torch.tensor([True, False, True, True, False, True])
    box.value_and_grad(x, loss, None, active=live)
    assert box.queries.tolist() == [1, 0, 1, 1, 0, 1]
    assert box.backwards.tolist() == [1, 0, 1, 1, 0, 1]
    # A sub-batch: rows 4 (padding, inactive) and 0, 2 (active).
    rows = torch.tensor([4, 0, 2])
    box.logits(x[rows], rows, active=torch.tensor([False, True, True]))
    assert box.queries.tolist() == [2, 0, 2, 1, 0, 1]
    assert box.backwards.tolist() == [1, 0, 1, 1, 0, 1]
    # Sample 0 is at its budget: charging it again is refused, and nothing is counted.
    with pytest.raises(QueryBudgetExceeded):
        box.logits(x[rows], rows, active=torch.tensor([True, True, False]))
    assert box.queries.tolist() == [2, 0, 2, 1, 0, 1]
    # Inactive rows may be computed past the budget: they are not queries.
    box.logits(x[rows], rows, active=torch.tensor([False, False, False]))
    assert box.queries.tolist() == [2, 0, 2, 1, 0, 1]
    with pytest.raises(ValidationError, match="active"):
        box.logits(x, None, active=torch.ones(3, dtype=torch.bool))


@pytest.mark.parametrize("name", ["pgd", "apgd"])
def test_bf16_channels_last_bucketed_attack_runs_on_cpu(name: str, digits_model: Trained) -> None:
    """The whole fast path end to end on the CPU (bf16 autocast works there too): valid and close."""
    params, threat = DETERMINISTIC[name]
    fast = _oracle(digits_model, precision="bf16", channels_last=True)
    attack = ATTACKS.get(name)(**params, compaction="bucketed")
    res = attack(fast, digits_model.x, digits_model.y, threat, seed=5)
    ref = _run(name, "exact", digits_model)
    assert bool(threat.contains(res.x_adv, digits_model.x).all())
    assert abs(res.success_rate - ref.success_rate) <= 0.1


@pytest.mark.parametrize("name", ["pgd", "apgd"])
def test_bf16_attack_agrees_with_fp32_on_all_digits(name: str, digits_model: Trained) -> None:
    """Judged by the fp32 model, the bf16 attack's robust accuracy is within 0.5 points of the fp32
    attack's on all 1,797 digits: early stopping waits for margins beyond bf16's rounding
    (`decision_tolerance`), so bf16 does not stop on successes the fp32 model rejects (without it: 2 points)."""
    from ramparts.data import load_digits

    ds = load_digits()
    threat = ThreatModel(eps=0.1)
    reference = ATTACKS.get(name)(steps=20)(_oracle(digits_model), ds.x, ds.y, threat, seed=1)
    fast_oracle = _oracle(digits_model, precision="bf16", channels_last=True)
    assert fast_oracle.decision_tolerance > 0
    fast = ATTACKS.get(name)(steps=20, compaction="bucketed")(fast_oracle, ds.x, ds.y, threat, seed=1)
    with torch.no_grad():
        judged = float((digits_model.model(fast.x_adv).argmax(1) == ds.y).float().mean())
    assert 0.1 < reference.robust_accuracy < 0.9
    assert abs(judged - reference.robust_accuracy) <= 0.005
