"""Attacks on a CUDA device: everything stays there, and a seed gives the same result twice."""

from __future__ import annotations

import copy
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


@pytest.mark.parametrize(("precision", "compiled"), [("fp32", False), ("bf16", False), ("bf16", True)])
def test_batched_shadow_training_on_cuda(precision: str, compiled: bool) -> None:
    """The fast GPU path of shadow training (bf16 autocast, compiled vmapped forward) trains models as
    good as the sequential fp32 reference: they fit their own subset and generalise as well. (Weights
    are not compared: TF32 convolutions and Adam make GPU runs drift apart in the last bits and beyond.)"""
    from ramparts import zoo
    from ramparts.data import load_digits
    from ramparts.privacy.batched import train_models

    digits = load_digits()
    config = {"in_channels": 1, "input_size": 8, "num_classes": 10, "width": 8, "hidden": 32}
    gen = torch.Generator().manual_seed(0)
    subsets = torch.stack([torch.randperm(len(digits), generator=gen)[:300] for _ in range(4)])
    opts: dict[str, object] = {"epochs": 8, "batch_size": 16, "lr": 5e-3, "device": "cuda"}
    args = ("small_cnn", config, digits.x, digits.y, subsets, [1, 2, 3, 4])
    runs = {
        "fast": train_models(*args, precision=precision, compiled=compiled, **opts),
        "reference": train_models(*args, batched=False, **opts),
    }
    held_out: dict[str, list[float]] = {"fast": [], "reference": []}
    for run, states in runs.items():
        for state, subset in zip(states, subsets, strict=True):
            assert all(v.device.type == "cpu" and v.dtype == torch.float32 for v in state.values())
            model = zoo.build("small_cnn", **config)
            model.load_state_dict(state)
            with torch.no_grad():
                right = model(digits.x).argmax(1) == digits.y
            outside = torch.ones(len(digits), dtype=torch.bool)
            outside[subset] = False
            assert right[subset].float().mean() > 0.7, f"{run}: does not fit its own subset"
            held_out[run].append(right[outside].float().mean().item())
    fast, reference = (sum(v) / len(v) for v in (held_out["fast"], held_out["reference"]))
    assert abs(fast - reference) < 0.05, f"held-out accuracy {fast:.1%} vs {reference:.1%} (fp32 sequential)"


# ------------------------------------------------------------------ fast attacks (issue 11): bf16, compile


def _all_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Every embedded digit (1,797) on CUDA: 0.5 points is then 8 images, room for bf16's boundary flips."""
    from ramparts.data import load_digits

    ds = load_digits()
    return ds.x.cuda(), ds.y.cuda()


def _robust(
    oracle: TorchOracle,
    name: str,
    compaction: str,
    x: torch.Tensor,
    y: torch.Tensor,
    judge: torch.nn.Module,
) -> float:
    """Robust accuracy under the attack, judged by the fp32 eager model `judge` on the returned x_adv."""
    attack = ATTACKS.get(name)(steps=20, compaction=compaction)
    x_adv = attack(oracle, x, y, ThreatModel(eps=0.1), seed=1).x_adv
    with torch.no_grad():
        return float((judge(x_adv).argmax(1) == y).float().mean())


@pytest.mark.parametrize("name", ["pgd", "apgd"])
def test_bf16_channels_last_bucketed_matches_fp32_eager(name: str, digits_model: Trained) -> None:
    model = copy.deepcopy(digits_model.model).cuda()
    x, y = _all_digits()
    reference = _robust(TorchOracle(copy.deepcopy(model), input_shape=(1, 8, 8)), name, "exact", x, y, model)
    fast = TorchOracle(copy.deepcopy(model), input_shape=(1, 8, 8), precision="bf16", channels_last=True)
    robust = _robust(fast, name, "bucketed", x, y, model)
    assert 0.0 < reference < 0.9, "a budget where the attack breaks some images and not others"
    assert abs(robust - reference) <= 0.005, f"bf16 {robust:.2%} vs fp32 eager {reference:.2%}"


@pytest.mark.parametrize("name", ["pgd", "apgd"])
def test_compiled_matches_eager(name: str, digits_model: Trained) -> None:
    model = copy.deepcopy(digits_model.model).cuda()
    x, y = _all_digits()
    eager = _robust(TorchOracle(copy.deepcopy(model), input_shape=(1, 8, 8)), name, "bucketed", x, y, model)
    compiled = TorchOracle(copy.deepcopy(model), input_shape=(1, 8, 8), compile="default")
    robust = _robust(compiled, name, "bucketed", x, y, model)
    assert abs(robust - eager) <= 0.005, f"compiled {robust:.2%} vs eager {eager:.2%}"
