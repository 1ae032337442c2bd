"""Sharded evaluation over every visible GPU equals the single-device run with the same shard size."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ramparts import zoo
from ramparts.data import load_digits
from ramparts.evasion import ATTACKS
from ramparts.evasion.sharded import evaluate_sharded
from ramparts.oracles import TorchOracle
from ramparts.parallel import DeviceExecutor, deterministic
from ramparts.threat import ThreatModel
from ramparts.training import TrainConfig, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs at least two CUDA devices"),
]
# cuBLAS is deterministic only with a fixed workspace, set before the first CUDA call (workers inherit it).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

CONFIG = {"in_channels": 1, "input_size": 8, "num_classes": 10, "width": 16, "hidden": 64}


@pytest.fixture
def strict() -> Iterator[None]:
    """The deterministic kernels the workers get from `deterministic`, in this process too."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    deterministic()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]


@pytest.mark.parametrize("name", ["pgd", "apgd"])
def test_sharded_over_all_gpus_equals_one_device(name: str, tmp_path: Path, strict: None) -> None:
    digits = load_digits()
    torch.manual_seed(0)
    model = zoo.build("small_cnn", **CONFIG)
    train(
        model,
        digits.subset(range(1400)),
        config=TrainConfig(epochs=3, lr=3e-3, device="cuda"),
        progress=False,
    )
    prefix = tmp_path / "digits"
    zoo.save_model(model.cpu(), prefix, arch="small_cnn", config=CONFIG, extra={"input_shape": [1, 8, 8]})
    x, y = digits.x[1400:].contiguous(), digits.y[1400:].contiguous()
    attack, threat = ATTACKS.get(name)(steps=10), ThreatModel(eps=0.1)

    loaded, _ = zoo.load_model(prefix)
    oracle = TorchOracle(loaded, input_shape=(1, 8, 8), device="cuda:0")
    single = attack(oracle, x.cuda(), y.cuda(), threat, seed=3, batch_size=64)
    with DeviceExecutor("all", initializer=deterministic) as executor:
        sharded = evaluate_sharded(attack, prefix, x, y, threat, executor=executor, shard_size=64, seed=3)
        used = {w["pid"] for w in executor.workers}

    assert len(used) == torch.cuda.device_count()
    assert sharded.x_adv.device.type == "cpu"
    assert 0 < single.success_rate < 1, "the test needs both outcomes"
    assert torch.equal(sharded.x_adv, single.x_adv.cpu())
    assert torch.equal(sharded.success, single.success.cpu())
    assert torch.equal(sharded.queries, single.queries.cpu())
    assert sharded.robust_accuracy == single.robust_accuracy
