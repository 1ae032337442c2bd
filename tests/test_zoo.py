"""Tests for ramparts.zoo: architectures, the registry, and safe model files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ramparts import zoo
from ramparts.errors import RampartsTypeError, UnknownNameError, ValidationError

SHAPES = [(1, 8), (1, 28), (3, 32)]  # (channels, size): digits, MNIST, CIFAR


class NotAllowed:
    """A class ``torch.load(weights_only=True)`` must refuse to rebuild."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def _model(arch: str = "small_cnn", **extra: object) -> tuple[nn.Module, dict[str, object]]:
    config: dict[str, object] = {"in_channels": 1, "input_size": 8, "num_classes": 10, **extra}
    torch.manual_seed(0)
    return zoo.build(arch, **config), config


def test_registry_names() -> None:
    assert set(zoo.ARCHITECTURES) == {
        "mlp",
        "lenet5",
        "carlini_cnn",
        "small_cnn",
        "resnet18",
        "encryptable_cnn",
    }


@pytest.mark.parametrize("arch", sorted(zoo.ARCHITECTURES))
@pytest.mark.parametrize(("channels", "size"), SHAPES)
def test_forward_shapes(arch: str, channels: int, size: int) -> None:
    model = zoo.build(arch, in_channels=channels, input_size=size, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.rand(3, channels, size, size))
    assert out.shape == (3, 7)
    assert bool(torch.isfinite(out).all())


def test_carlini_cnn_matches_paper_layout_on_mnist() -> None:
    model = zoo.CarliniCNN(in_channels=1, input_size=28, num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64]
    assert all(c.padding == (0, 0) for c in convs)
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(1024, 200), (200, 200), (200, 10)]


def test_resnet18_has_cifar_stem_and_eleven_million_params() -> None:
    model = zoo.ResNet18(in_channels=3, input_size=32, num_classes=10)
    stem = model.stem[0]
    assert isinstance(stem, nn.Conv2d)
    assert stem.kernel_size == (3, 3)
    assert stem.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert 11_000_000 < sum(p.numel() for p in model.parameters()) < 11_300_000


def test_build_rejects_unknown_arch_and_bad_config() -> None:
    with pytest.raises(UnknownNameError, match=r"arch: unknown name 'vgg'.*carlini_cnn"):
        zoo.build("vgg")
    with pytest.raises(ValidationError, match=r"config: expected keys accepted by 'mlp': .*hidden") as info:
        zoo.build("mlp", in_channels=1, input_size=8, num_classes=10, depth=3)
    assert "depth" in str(info.value)
    with pytest.raises(ValidationError, match="required keys num_classes"):
        zoo.build("lenet5", in_channels=1, input_size=8)
    with pytest.raises(ValidationError, match="num_classes: expected an integer >= 2"):
        zoo.build("small_cnn", in_channels=1, input_size=8, num_classes=1)
    with pytest.raises(RampartsTypeError, match="in_channels"):
        zoo.build("small_cnn", in_channels=1.5, input_size=8, num_classes=10)
    with pytest.raises(ValidationError, match="input_size: expected an image size carlini_cnn can process"):
        zoo.build("carlini_cnn", in_channels=1, input_size=3, num_classes=10)
    with pytest.raises(ValidationError, match="dropout"):
        zoo.build("mlp", in_channels=1, input_size=8, num_classes=10, dropout=1.0)


@pytest.mark.parametrize(("arch", "extra"), [("mlp", {"hidden": [32, 16]}), ("resnet18", {"width": 8})])
def test_save_load_roundtrip_gives_identical_outputs(
    tmp_path: Path, arch: str, extra: dict[str, object]
) -> None:
    model, config = _model(arch, **extra)
    model.train()
    model(torch.rand(8, 1, 8, 8))  # moves BatchNorm running statistics away from their defaults
    model.eval()
    meta_extra = {"bounds": [0.0, 1.0], "classes": list("0123456789")}
    weights = zoo.save_model(model, tmp_path / "m", arch=arch, config=config, extra=meta_extra)
    assert weights == tmp_path / "m.safetensors"
    assert (tmp_path / "m.json").is_file()
    loaded, meta = zoo.load_model(tmp_path / "m")
    assert meta["arch"] == arch
    assert meta["config"] == config
    assert meta["extra"] == meta_extra
    assert not loaded.training
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    for other in (weights, tmp_path / "m.json"):
        assert isinstance(zoo.load_model(other)[0], zoo.ARCHITECTURES[arch])


def test_save_into_folder_and_load_pt_state_dict(tmp_path: Path) -> None:
    model, config = _model()
    folder = tmp_path / "run"
    folder.mkdir()
    assert zoo.save_model(model, folder, arch="small_cnn", config=config) == folder / "model.safetensors"
    assert zoo.load_model(folder)[1]["arch"] == "small_cnn"
    torch.save({"state_dict": model.state_dict()}, tmp_path / "legacy.pt")
    (tmp_path / "legacy.json").write_text(json.dumps({"arch": "small_cnn", "config": config}))
    loaded, _ = zoo.load_model(tmp_path / "legacy.pt")
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))


def test_pickle_named_safetensors_is_refused(tmp_path: Path) -> None:
    model, config = _model()
    zoo.save_model(model, tmp_path / "m", arch="small_cnn", config=config)
    torch.save(model.state_dict(), tmp_path / "m.safetensors")  # a pickle under a safetensors name
    with pytest.raises(ValidationError, match="never unpickles"):
        zoo.load_model(tmp_path / "m")


def test_pt_with_arbitrary_objects_is_refused(tmp_path: Path) -> None:
    _, config = _model()
    (tmp_path / "evil.json").write_text(json.dumps({"arch": "small_cnn", "config": config}))
    torch.save({"weight": NotAllowed()}, tmp_path / "evil.pt")
    with pytest.raises(ValidationError, match=r"torch\.load\(weights_only=True\)"):
        zoo.load_model(tmp_path / "evil.pt")


def test_mismatched_weights_are_named(tmp_path: Path) -> None:
    model, config = _model()
    zoo.save_model(model, tmp_path / "m", arch="small_cnn", config=config)
    meta = json.loads((tmp_path / "m.json").read_text())
    meta["config"]["width"] = 16
    (tmp_path / "m.json").write_text(json.dumps(meta))
    with pytest.raises(
        ValidationError,
        match=r"weights: expected .*shape mismatch .*features\.0\.weight \(32, 1, 3, 3\) vs \(16, 1, 3, 3\)",
    ):
        zoo.load_model(tmp_path / "m")
    with pytest.raises(ValidationError, match="unexpected"):
        zoo.save_model(
            nn.Sequential(model, nn.Linear(10, 2)), tmp_path / "x", arch="small_cnn", config=config
        )
    with pytest.raises(UnknownNameError, match="arch"):
        zoo.save_model(model, tmp_path / "y", arch="nope", config=config)


def test_load_model_requires_json_sidecar(tmp_path: Path) -> None:
    model, _ = _model()
    zoo.save_weights(model, tmp_path / "lonely.safetensors")
    with pytest.raises(ValidationError, match="JSON config"):
        zoo.load_model(tmp_path / "lonely.safetensors")
