"""PRADA: quiet on an honest stream, alarm on a Jacobian-style stream, state round trips, isolation."""

from __future__ import annotations

import pytest
import torch

from ramparts.data import load_digits
from ramparts.defenses import ExtractionBlocked, GuardedOracle, Prada
from ramparts.errors import ValidationError


def _honest(n: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_digits()
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n]
    return ds.x[perm], ds.y[perm]


def _jacobian_rounds(oracle, rounds: int = 4, seeds: int = 20) -> list[torch.Tensor]:
    """Seed points, then x + 0.1 * sign(random) around every point so far, round after round."""
    ds = load_digits()
    gen = torch.Generator().manual_seed(1)
    points = ds.x[torch.randperm(len(ds), generator=gen)[:seeds]]
    batches = [points]
    for _ in range(rounds):
        new = (points + 0.1 * torch.sign(torch.randn(points.shape, generator=gen))).clamp(0, 1)
        batches.append(new)
        points = torch.cat([points, new])
    return batches


def test_honest_digits_stream_raises_no_alarm(digits_model):
    x, _ = _honest(1000)
    guarded = GuardedOracle(digits_model.oracle, Prada(), "honest")
    for batch in x.split(50):
        guarded.labels(batch)
    stats = guarded.prada.stats("honest")
    assert stats["queries"] == 1000
    assert stats["num_distances"] > 900
    assert guarded.alarms == []
    assert stats["statistic"] > guarded.prada.delta


def test_jacobian_stream_raises_the_alarm(digits_model):
    guarded = GuardedOracle(digits_model.oracle, Prada(), "thief")
    sent = 0
    for batch in _jacobian_rounds(digits_model.oracle):
        guarded.labels(batch)
        sent += len(batch)
    assert guarded.alarmed
    first = guarded.alarms[0]
    # the test can run once 100 distances exist; the alarm comes at the first test (~query 110 of 320)
    assert first.query <= 150 < sent
    assert first.statistic < 0.9
    assert first.summary()["client_id"] == "thief"


def test_blocking_refuses_the_client_after_the_alarm(digits_model):
    prada = Prada()
    guarded = GuardedOracle(digits_model.oracle, prada, "thief", block=True)
    with pytest.raises(ExtractionBlocked, match=r"'thief'.*reset"):  # noqa: PT012 (several queries)
        for batch in _jacobian_rounds(digits_model.oracle):
            guarded.labels(batch)
    with pytest.raises(ExtractionBlocked):
        guarded.labels(digits_model.x[:1])
    other = GuardedOracle(digits_model.oracle, prada, "someone-else", block=True)
    assert other.labels(digits_model.x[:4]).shape == (4,)
    prada.reset("thief")
    assert guarded.labels(digits_model.x[:4]).shape == (4,)


def test_batching_does_not_change_decisions():
    x, y = _honest(300)
    whole, single = Prada(delta=0.97), Prada(delta=0.97)
    a = whole.observe("c", x, y)
    b = [alarm for i in range(len(x)) for alarm in single.observe("c", x[i : i + 1], y[i : i + 1])]
    assert a == b
    assert whole.state_dict()["meta"] == single.state_dict()["meta"]


def test_state_round_trips_through_safetensors(tmp_path):
    x, y = _honest(400)
    first, second = x[:250], x[250:]
    prada = Prada(delta=0.97)
    prada.observe("a", first, y[:250])
    prada.observe("b", first[:120], y[:120])
    prada.save(tmp_path / "prada.safetensors")
    restored = Prada(delta=0.97).load(tmp_path / "prada.safetensors")
    assert restored.clients == ["a", "b"]
    assert restored.stats("a") == prada.stats("a")
    expected = prada.observe("a", second, y[250:])
    got = restored.observe("a", second, y[250:])
    assert expected  # delta 0.97 makes this honest stream alarm: decisions to compare
    assert got == expected
    assert restored.state_dict()["meta"] == prada.state_dict()["meta"]


def test_clients_are_isolated():
    x, y = _honest(200)
    together = Prada()
    together.observe("a", x[:100], y[:100])
    together.observe("b", x[100:], y[100:])
    alone = Prada()
    alone.observe("b", x[100:], y[100:])
    assert together.stats("b") == alone.stats("b")
    assert together.stats("a")["queries"] == 100


def test_bad_inputs_are_named():
    prada = Prada()
    with pytest.raises(ValidationError, match="labels"):
        prada.observe("a", torch.zeros(3, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="client_id"):
        prada.observe("", torch.zeros(3, 4), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValidationError, match=r"Prada\.delta"):
        Prada(delta=1.5)
    with pytest.raises(ValidationError, match="client_id"):
        prada.stats("nobody")
    with pytest.raises(ValidationError, match="state"):
        prada.load_state_dict({"meta": {}, "tensors": {}})
