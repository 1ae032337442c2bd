"""Adaptive attacks (BPDA, EOT, detector-aware PGD) beat their non-adaptive counterparts; masking checks fire."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from ramparts import zoo
from ramparts.data import load_digits
from ramparts.defenses.adaptive import BPDA, EOT, adaptive_pgd, defense_outcome, masking_warnings
from ramparts.defenses.base import DefendedModel, Detector, Transform
from ramparts.errors import ValidationError
from ramparts.evasion import ATTACKS
from ramparts.oracles import TorchOracle
from ramparts.threat import ThreatModel
from ramparts.training import TrainConfig, train

EPS = 0.15


class Binarize(Transform):
    """Round each pixel to 0 or 1: no useful gradient (zero almost everywhere)."""

    differentiable = False

    def forward(self, x: Tensor) -> Tensor:
        return torch.round(x)


class Jitter(Transform):
    """Add fresh uniform noise to every query: a randomised defence."""

    randomized = True

    def forward(self, x: Tensor) -> Tensor:
        return (x + (torch.rand_like(x) - 0.5)).clamp(0, 1)


class LowConfidence(Detector):
    """Flags inputs the classifier is unsure of (score = 1 - max softmax probability)."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def score(self, x: Tensor) -> Tensor:
        return 1 - self.classifier(x).softmax(dim=1).amax(dim=1)


@pytest.fixture(scope="module")
def setting() -> dict[str, object]:
    ds = load_digits()
    torch.manual_seed(0)
    model = zoo.build("mlp", in_channels=1, input_size=8, num_classes=10, hidden=[64])
    train(
        model,
        ds.subset(range(1400)),
        config=TrainConfig(epochs=20, batch_size=64, lr=3e-3, device="cpu"),
        progress=False,
    )
    model.eval()
    x, y = ds.x[1400:1600], ds.y[1400:1600]
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    return {"model": model, "x": x[keep][:120], "y": y[keep][:120], "clean": ds.x[1600:]}


def _plain_pgd(defended: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The non-adaptive counterpart: the library's PGD run on the defended model as it is."""
    oracle = TorchOracle(defended, input_shape=(1, 8, 8))
    return ATTACKS.get("pgd")(steps=40)(oracle, x, y, ThreatModel(eps=EPS)).x_adv


def test_bpda_forward_value_and_straight_through_gradient() -> None:
    x = torch.rand(4, 1, 8, 8, requires_grad=True)
    out = BPDA(Binarize())(x)
    assert torch.equal(out, torch.round(x))
    (grad,) = torch.autograd.grad((out * 3).sum(), x)
    assert torch.allclose(grad, torch.full_like(grad, 3.0)), "the identity's gradient"


def test_eot_averages_probabilities(setting: dict) -> None:
    model = setting["model"]
    x = setting["x"][:5]
    assert torch.allclose(EOT(model, 4)(x), model(x).log_softmax(1), atol=1e-5), (
        "deterministic model: log-softmax"
    )
    with pytest.raises(ValidationError, match="samples"):
        EOT(model, 0)


def test_bpda_beats_pgd_on_a_non_differentiable_defence(setting: dict) -> None:
    defended = DefendedModel(setting["model"], transforms=[Binarize()])
    x, y = setting["x"], setting["y"]
    plain = defense_outcome(defended, _plain_pgd(defended, x, y), y)[0].float().mean().item()
    adaptive = adaptive_pgd(defended, x, y, eps=EPS, steps=40)
    assert adaptive.config["bpda"] == ["Binarize"]
    # measured: PGD through the rounding fools 12.5%, BPDA 35%
    assert adaptive.fooled.float().mean().item() > plain + 0.1, (plain, adaptive.summary())
    assert (adaptive.x_adv - x).abs().max() <= EPS + 1e-6


def test_eot_beats_single_draw_pgd_on_a_random_defence(setting: dict) -> None:
    defended = DefendedModel(setting["model"], transforms=[Jitter()])
    x, y = setting["x"], setting["y"]
    torch.manual_seed(0)
    one = adaptive_pgd(defended, x, y, eps=0.1, steps=10, eot_samples=1, votes=15, seed=0)
    torch.manual_seed(0)
    eot = adaptive_pgd(defended, x, y, eps=0.1, steps=10, eot_samples=16, votes=15, seed=0)
    # measured: robust accuracy 0.633 with one draw per step, 0.417 with EOT over 16
    assert eot.robust_accuracy < one.robust_accuracy - 0.1, (one.summary(), eot.summary())


def test_detector_aware_pgd_evades_the_detector(setting: dict) -> None:
    model = setting["model"]
    detector = LowConfidence(model)
    detector.calibrate(setting["clean"], fpr=0.05)
    defended = DefendedModel(model, detectors=[detector])
    x, y = setting["x"], setting["y"]
    plain = defense_outcome(defended, _plain_pgd(model, x, y), y)
    aware = adaptive_pgd(defended, x, y, eps=EPS, steps=40, detector_weight=5.0)
    blind = adaptive_pgd(defended, x, y, eps=EPS, steps=40, detector_weight=0.0)
    assert aware.fooled.float().mean() >= blind.fooled.float().mean()
    assert aware.fooled.float().mean() > plain[0].float().mean() + 0.05, (
        plain[0].float().mean(),
        aware.summary(),
    )
    assert aware.robust_accuracy == pytest.approx(1 - aware.fooled.float().mean().item())


def test_masking_warnings_fire_on_each_symptom() -> None:
    healthy = {"fgsm": {0.1: 0.6, 0.2: 0.4}, "pgd": {0.1: 0.5, 0.2: 0.2}, "square": {0.1: 0.7}}
    assert masking_warnings(healthy, black_box="square", unbounded=1.0) == []
    masked = {"fgsm": {0.1: 0.3, 0.2: 0.4}, "pgd": {0.1: 0.5, 0.2: 0.45}, "square": {0.1: 0.2}}
    found = masking_warnings(masked, black_box="square", unbounded=0.8)
    text = "\n".join(found)
    assert "fgsm (robust accuracy 30.0%) beats the iterative pgd" in text
    assert "square (robust accuracy 20.0%) beats the white-box pgd" in text
    assert "unbounded attack succeeds on only 80.0%" in text
    assert "fgsm: robust accuracy rises from 30.0% at eps 0.1 to 40.0% at eps 0.2" in text


def test_adaptive_pgd_errors(setting: dict) -> None:
    defended = DefendedModel(setting["model"])
    x, y = setting["x"][:2], setting["y"][:2]
    for kwargs, name in (
        ({"eps": 0}, "eps"),
        ({"eps": 0.1, "steps": 0}, "steps"),
        ({"eps": 0.1, "detector_weight": -1}, "detector_weight"),
    ):
        with pytest.raises(ValidationError, match=name):
            adaptive_pgd(defended, x, y, **kwargs)
