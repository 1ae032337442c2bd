"""Attacks on a CUDA device: everything stays there, and a seed gives the same result twice."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from ramparts.evasion import ATTACKS
from ramparts.oracles import TorchOracle
from ramparts.threat import ThreatModel

from .conftest import Trained

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
# cuBLAS is deterministic only with a fixed workspace, set before the first CUDA call.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@pytest.fixture
def deterministic() -> Iterator[None]:
    """PyTorch's deterministic kernels: without them, atomics in cuDNN backward passes change the last
    bits of gradients. Sign-based attacks absorb that; C&W's Adam steps do not."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


SETTINGS: dict[str, tuple[dict[str, object], ThreatModel]] = {
    "pgd": ({}, ThreatModel(eps=0.1)),
    "apgd": ({}, ThreatModel(eps=0.1)),
    "fgsm": ({}, ThreatModel(eps=0.1)),
    "cw": ({}, ThreatModel(norm="l2", eps=2.0)),
    "nes": ({"steps": 20, "samples": 20}, ThreatModel(eps=0.2)),
    "square": ({"n_queries": 300}, ThreatModel(eps=0.2)),
    "onepixel": ({"population": 50, "iterations": 10}, ThreatModel(norm="l0", eps=5)),
    "hopskipjump": ({"steps": 10}, ThreatModel(norm="l2", eps=2.0)),
    "boundary": ({"steps": 300, "init": "batch"}, ThreatModel(norm="l2", eps=2.0)),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_attack_runs_on_the_model_device(name: str, digits_model: Trained, deterministic: None) -> None:
    model = digits_model.model.to("cuda")
    try:
        oracle = TorchOracle(model, input_shape=(1, 8, 8))
        params, threat = SETTINGS[name]
        x, y = digits_model.x.cuda(), digits_model.y.cuda()
        a = ATTACKS.get(name)(**params)(oracle, x, y, threat, seed=1)
        b = ATTACKS.get(name)(**params)(oracle, x, y, threat, seed=1)
        assert a.x_adv.device.type == "cuda"
        assert a.queries.device.type == "cuda"
        assert torch.equal(a.x_adv, b.x_adv)
        assert a.success_rate > 0.3
    finally:
        digits_model.model.to("cpu")
