"""Polynomial activations, polynomialize, encryptable training and its model files (protection/poly.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ramparts.data import Dataset, load_digits, train_test_split
from ramparts.errors import UnknownNameError, ValidationError
from ramparts.protection.poly import (
    Quadratic,
    Square,
    is_encryptable_file,
    load_encryptable,
    polynomialize,
    save_encryptable,
    train_encryptable,
)
from ramparts.training import TrainConfig
from ramparts.zoo import build, load_model


@pytest.fixture(scope="module")
def digits() -> tuple[Dataset, Dataset]:
    torch.set_num_threads(1)
    return train_test_split(load_digits(), test_fraction=0.25, seed=0)


def test_square_and_quadratic_values() -> None:
    x = torch.linspace(-3, 3, 13)
    assert torch.equal(Square()(x), x * x)
    q = Quadratic(a=2.0, b=-1.0, c=0.5)
    assert torch.allclose(q(x), 2 * x * x - x + 0.5)
    assert q.coefficients() == (2.0, -1.0, 0.5)
    assert Square().coefficients() == (1.0, 0.0, 0.0)
    assert {n for n, _ in q.named_parameters()} == {"a", "b", "c"}
    frozen = Quadratic(learnable=False)
    assert list(frozen.parameters()) == []
    assert set(dict(frozen.named_buffers())) == {"a", "b", "c"}


def test_quadratic_default_is_the_least_squares_relu_fit_on_minus2_2() -> None:
    x = torch.linspace(-2, 2, 4001, dtype=torch.float64)
    target = torch.relu(x)
    a, b, c = Quadratic().coefficients()
    design = torch.stack([x * x, x, torch.ones_like(x)], dim=1)
    best = torch.linalg.lstsq(design, target.unsqueeze(1)).solution.squeeze(1)
    assert torch.allclose(torch.tensor([a, b, c], dtype=torch.float64), best, atol=1e-3)
    assert (Quadratic.relu_fit(4.0)(x.float()) - torch.relu(x.float())).abs().max() < 0.4
    with pytest.raises(ValidationError, match="radius"):
        Quadratic.relu_fit(0.0)


def test_polynomialize_replaces_relu_and_maxpool_and_keeps_the_original() -> None:
    torch.manual_seed(0)
    model = build("lenet5", in_channels=1, input_size=8, num_classes=10)
    poly = polynomialize(model, "quadratic")
    kinds = {type(m) for m in poly.modules()}
    assert nn.ReLU not in kinds
    assert nn.MaxPool2d not in kinds
    assert Quadratic in kinds
    assert nn.AvgPool2d in kinds
    assert any(isinstance(m, nn.ReLU) for m in model.modules())  # original untouched
    x = torch.rand(4, 1, 8, 8)
    assert poly(x).shape == (4, 10)
    assert not torch.allclose(poly(x), model(x))


def test_polynomialize_batch_norm_before_activation() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    poly = polynomialize(model, "square", batch_norm=True)
    block = poly[2]
    assert isinstance(block, nn.Sequential)
    assert isinstance(block[0], nn.BatchNorm1d)
    assert block[0].num_features == 32
    assert isinstance(block[1], Square)


def test_polynomialize_refuses_non_polynomial_layers_clearly() -> None:
    with pytest.raises(ValidationError, match=r"'1'.*Tanh.*Square\(\)"):
        polynomialize(nn.Sequential(nn.Linear(4, 4), nn.Tanh()))
    resnet = build("resnet18", in_channels=1, input_size=8, num_classes=10, width=4)
    with pytest.raises(ValidationError, match=r"relu.*nn\.ReLU module"):
        polynomialize(resnet)  # BasicBlock calls torch.relu in forward()
    with pytest.raises(UnknownNameError, match="quadratic, square"):
        polynomialize(nn.Linear(2, 2), "cubic")


def test_train_encryptable_square_mlp_close_to_relu(digits: tuple[Dataset, Dataset]) -> None:
    train_ds, test_ds = digits
    config = TrainConfig(epochs=20, batch_size=64, lr=3e-3, seed=0, device="cpu")
    report = train_encryptable(
        "mlp", train_ds, config=config, test=test_ds, activation="square", arch_config={"hidden": [32]}
    )
    assert report.evaluated_on == "test"
    assert report.accuracy > 0.93
    assert report.relu_accuracy > 0.93
    assert abs(report.accuracy_cost) < 0.03  # x^2 costs at most a few points on digits
    assert any(isinstance(m, Square) for m in report.model.modules())
    assert not any(isinstance(m, nn.ReLU) for m in report.model.modules())
    summary = report.summary()
    assert summary["accuracy_cost"] == pytest.approx(report.relu_accuracy - report.accuracy)


def test_train_encryptable_finetunes_relu_weights_with_quadratic(digits: tuple[Dataset, Dataset]) -> None:
    train_ds, test_ds = digits
    torch.manual_seed(1)
    relu = build("mlp", in_channels=1, input_size=8, num_classes=10, hidden=[32])
    before = [p.clone() for p in relu.parameters()]
    config = TrainConfig(epochs=8, batch_size=64, lr=3e-3, seed=1, device="cpu")
    report = train_encryptable(
        relu, train_ds, config=config, test=test_ds, activation="quadratic", start="relu"
    )
    assert all(torch.equal(a, b) for a, b in zip(before, relu.parameters(), strict=True))  # input untouched
    assert report.accuracy > 0.9
    assert abs(report.accuracy_cost) < 0.05
    a, _, _ = next(m for m in report.model.modules() if isinstance(m, Quadratic)).coefficients()
    assert a != pytest.approx(15 / 64)  # the coefficients were trained


def test_clip_norm_limits_sgd_steps(digits: tuple[Dataset, Dataset]) -> None:
    train_ds, _ = digits
    small = train_ds.subset(torch.arange(256))
    torch.manual_seed(0)
    relu = build("mlp", in_channels=1, input_size=8, num_classes=10, hidden=[16])
    start = polynomialize(relu)
    config = TrainConfig(epochs=1, batch_size=64, lr=0.1, optimizer="sgd", momentum=0.0, seed=0, device="cpu")
    clipped = train_encryptable(relu, small, config=config, clip_norm=1e-6)
    free = train_encryptable(relu, small, config=config, clip_norm=None)

    def moved(model: nn.Module) -> float:
        diffs = [
            (p - q).detach().flatten() for p, q in zip(model.parameters(), start.parameters(), strict=True)
        ]
        return float(torch.cat(diffs).norm())

    assert moved(clipped.model) < 4 * 0.1 * 1e-6 * 1.01  # 4 steps of at most lr * clip_norm
    assert moved(free.model) > 1e-3


def test_save_and_load_encryptable_round_trip(digits: tuple[Dataset, Dataset], tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = {"in_channels": 1, "input_size": 8, "num_classes": 10, "hidden": [8]}
    poly = polynomialize(build("mlp", **config), "quadratic", batch_norm=True).eval()
    save_encryptable(poly, tmp_path, arch="mlp", config=config, activation="quadratic", batch_norm=True)
    assert is_encryptable_file(tmp_path)
    assert not is_encryptable_file(tmp_path / "nothing")
    loaded, meta = load_encryptable(tmp_path)
    x = digits[1].x[:5]
    assert torch.equal(loaded(x), poly(x))
    assert meta["activation"] == "quadratic"
    assert meta["base_arch"] == "mlp"
    with pytest.raises(ValidationError, match="'arch'"):
        load_model(tmp_path)  # never loaded silently as a ReLU network
    with pytest.raises(ValidationError, match="batch_norm"):
        save_encryptable(poly, tmp_path / "x", arch="mlp", config=config, activation="quadratic")


def test_batch_norm_and_quadratic_compile_to_the_same_function() -> None:
    """The HE compiler folds the inserted batch norms and the quadratic's coefficients exactly."""
    from ramparts.protection.he_model import compile_model

    torch.manual_seed(0)
    poly = polynomialize(
        build("mlp", in_channels=1, input_size=8, num_classes=10, hidden=[16]), "quadratic", batch_norm=True
    )
    with torch.no_grad():
        for module in poly.modules():
            if isinstance(module, Quadratic):
                module.a.fill_(0.3)
                module.b.fill_(-0.7)
                module.c.fill_(0.2)
        poly.train()
        poly(torch.rand(64, 1, 8, 8) * 3)  # non-trivial running statistics
    poly.eval()
    program = compile_model(poly, (1, 8, 8))
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(program.plain_forward(x.double()), poly(x).double(), atol=1e-4)
    assert program.depth == 3  # BN and the quadratic's b*x + c cost no extra multiplication
