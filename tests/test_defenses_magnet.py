"""MagNet (Meng & Chen 2017) on the digits: calibrated detectors, reformer, randomised pool, errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ramparts.data import Dataset, load_digits
from ramparts.defenses.base import DefendedModel
from ramparts.defenses.magnet import (
    Autoencoder,
    DivergenceDetector,
    RandomReformer,
    ReconstructionDetector,
    Reformer,
    jensen_shannon,
    magnet,
    train_autoencoder,
)
from ramparts.errors import RampartsTypeError, ValidationError
from ramparts.evasion import ATTACKS
from ramparts.oracles import TorchOracle
from ramparts.threat import ThreatModel
from ramparts.training import TrainConfig
from tests.conftest import Trained

FPR = 0.05
AE_CONFIG = TrainConfig(epochs=40, batch_size=64, lr=1e-2, weight_decay=1e-9, device="cpu")


@dataclass(frozen=True)
class Setup:
    defended: DefendedModel
    train: Dataset
    test: Dataset


@pytest.fixture(scope="module")
def setup(digits_model: Trained) -> Setup:
    """MagNet around the shared digits CNN: autoencoders on 1200 digits, calibrated on 200 unseen ones.

    The full-resolution autoencoder reforms: on 8x8 digits the pooling one's 4x4 bottleneck costs ~5 points.
    """
    ds = load_digits()
    train, val, test = ds.subset(range(1200)), ds.subset(range(1400, 1600)), ds.subset(range(1600, 1797))
    defended = magnet(digits_model.model, train, val, fpr=FPR, config=AE_CONFIG, reformer=1, seed=0)
    return Setup(defended, train, test)


def _adversarial(trained: Trained, test: Dataset, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    attack = ATTACKS.get(name)(**({"steps": 20} if name == "pgd" else {}))
    r = attack(trained.oracle, test.x, test.y, ThreatModel(eps=0.3), seed=0)
    return r.x_adv, r.success


def test_magnet_builds_paper_detectors(setup: Setup) -> None:
    kinds = [type(d).__name__ for d in setup.defended.detectors]
    assert kinds == ["ReconstructionDetector"] * 2 + ["DivergenceDetector"] * 2
    assert [d.p for d in setup.defended.detectors[:2]] == [2, 1]
    assert isinstance(setup.defended.transforms[0], Reformer)
    assert all(d.threshold is not None for d in setup.defended.detectors)


def test_thresholds_hold_the_stated_fpr_on_held_out_clean(setup: Setup) -> None:
    rate = float(setup.defended.rejects(setup.test.x).float().mean())
    assert rate <= FPR + 0.06, rate  # 197 held-out digits: sampling error ~0.016, plus calibration drift


def test_reformer_keeps_clean_accuracy(setup: Setup, digits_model: Trained) -> None:
    with torch.no_grad():
        plain = (digits_model.model(setup.test.x).argmax(1) == setup.test.y).float().mean()
        reformed = (setup.defended(setup.test.x).argmax(1) == setup.test.y).float().mean()
    assert float(reformed) >= float(plain) - 0.04, (float(plain), float(reformed))


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_detectors_catch_large_eps_attacks(setup: Setup, digits_model: Trained, name: str) -> None:
    x_adv, success = _adversarial(digits_model, setup.test, name)
    assert float(success.float().mean()) > 0.8  # the undefended classifier is broken
    detected = float(setup.defended.rejects(x_adv)[success].float().mean())
    with torch.no_grad():
        correct = setup.defended(x_adv).argmax(1) == setup.test.y
    defended_acc = float((setup.defended.rejects(x_adv) | correct).float().mean())
    assert detected >= 0.85, detected
    assert defended_acc >= 0.85, defended_acc


def test_defended_model_is_attackable_and_scores_have_gradients(setup: Setup) -> None:
    oracle = TorchOracle(setup.defended, input_shape=(1, 8, 8))
    x, y = setup.test.x[:32], setup.test.y[:32]
    r = ATTACKS.get("pgd")(steps=5)(oracle, x, y, ThreatModel(eps=0.3), seed=0)
    assert r.x_adv.shape == x.shape
    assert float((r.x_adv - x).abs().max()) <= 0.3 + 1e-5
    assert float(r.success.float().mean()) > 0.5  # non-adaptive PGD through the reformer still fools it
    for d in setup.defended.detectors:
        xg = x.clone().requires_grad_(True)
        d.score(xg).sum().backward()
        assert xg.grad is not None
        assert float(xg.grad.abs().sum()) > 0


def test_jensen_shannon_properties() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 10, generator=gen), torch.randn(16, 10, generator=gen)
    assert torch.allclose(jensen_shannon(a, a), torch.zeros(16), atol=1e-6)
    assert torch.allclose(jensen_shannon(a, b), jensen_shannon(b, a), atol=1e-6)
    far = jensen_shannon(torch.tensor([[50.0, 0.0]]), torch.tensor([[0.0, 50.0]]))
    assert float(far) == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-4)


def test_divergence_detector_is_zero_for_identity(digits_model: Trained) -> None:
    d = DivergenceDetector(torch.nn.Identity(), digits_model.model, temperature=10)
    assert torch.allclose(d.score(digits_model.x), torch.zeros(len(digits_model.x)), atol=1e-7)


def test_reconstruction_detector_norms() -> None:
    zero = Autoencoder(1, width=2, depth=1, pool=False)
    for p in zero.parameters():
        torch.nn.init.zeros_(p)  # outputs sigmoid(0) = 0.5 everywhere
    x = torch.zeros(2, 1, 4, 4)
    assert torch.allclose(ReconstructionDetector(zero, p=1).score(x), torch.full((2,), 8.0))
    assert torch.allclose(ReconstructionDetector(zero, p=2).score(x), torch.full((2,), 2.0))


def test_autoencoder_shapes_and_range() -> None:
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for pool, depth in ((True, 2), (False, 1), (True, 1)):
        out = Autoencoder(1, width=3, depth=depth, pool=pool)(x).detach()
        assert out.shape == x.shape
        assert 0 <= float(out.min()) <= float(out.max()) <= 1
    with pytest.raises(ValidationError, match="even height"):
        Autoencoder(1, pool=True)(torch.rand(1, 1, 7, 7))


def test_train_autoencoder_resumes_to_the_same_weights(tmp_path: Path) -> None:
    data = load_digits().subset(range(200))

    def fresh() -> Autoencoder:
        torch.manual_seed(1)
        return Autoencoder(1, width=2, depth=1, pool=False)

    config = TrainConfig(epochs=3, batch_size=64, lr=1e-2, device="cpu")
    straight = fresh()
    report = train_autoencoder(straight, data, config=config)
    assert report.train_loss[-1] < report.train_loss[0]
    resumed = fresh()
    train_autoencoder(
        resumed, data, config=TrainConfig(**{**config.to_dict(), "epochs": 2}), checkpoint_dir=tmp_path
    )
    again = train_autoencoder(resumed, data, config=config, checkpoint_dir=tmp_path)
    assert again.resumed_from == 2
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_random_reformer_draws_follow_the_seed() -> None:
    pool = [Autoencoder(1, width=2, depth=1, pool=False) for _ in range(4)]
    first = RandomReformer(pool, seed=3).draw(64)
    assert torch.equal(first, RandomReformer(pool, seed=3).draw(64))
    assert not torch.equal(first, RandomReformer(pool, seed=4).draw(64))
    assert set(first.tolist()) == {0, 1, 2, 3}
    rr = RandomReformer(pool, seed=5)
    assert rr.randomized
    assert rr.differentiable
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = rr(x)
        rr.reseed(5)
        choice = rr.draw(64)
        expected = torch.stack([pool[int(k)](x[i : i + 1])[0] for i, k in enumerate(choice)])
    assert torch.allclose(out, expected, atol=1e-6)


def test_errors(digits_model: Trained) -> None:
    ds = load_digits().subset(range(100))
    ae = Autoencoder(1)
    with pytest.raises(ValidationError, match="fpr"):
        magnet(digits_model.model, ds, ds, fpr=1.0, autoencoders=[ae, ae])
    with pytest.raises(ValidationError, match="fpr"):
        magnet(digits_model.model, ds, ds, fpr=-0.1, autoencoders=[ae, ae])
    with pytest.raises(ValidationError, match="reformer"):
        magnet(digits_model.model, ds, ds, autoencoders=[ae, ae], reformer=2)
    with pytest.raises(ValidationError, match="norms"):
        magnet(digits_model.model, ds, ds, autoencoders=[ae])
    for t in (0, -1.0, float("inf")):
        with pytest.raises(ValidationError, match="temperature"):
            DivergenceDetector(ae, digits_model.model, temperature=t)
    with pytest.raises(ValidationError, match="p: expected 1 or 2"):
        ReconstructionDetector(ae, p=3)
    with pytest.raises(ValidationError, match="width"):
        Autoencoder(1, width=0)
    with pytest.raises(RampartsTypeError, match="autoencoders"):
        RandomReformer([])
    with pytest.raises(ValidationError, match="noise"):
        train_autoencoder(ae, ds, noise=-1.0)
    with pytest.raises(ValidationError, match="threshold"):
        ReconstructionDetector(ae).flags(ds.x)
