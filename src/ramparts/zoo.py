"""Small reference architectures, a name registry, and safe model files (safetensors + JSON config).

Every architecture takes keyword arguments ``in_channels``, ``input_size`` (H = W) and ``num_classes``
plus its own width arguments, and returns logits. Model files are ``<prefix>.safetensors`` (weights)
and ``<prefix>.json`` (architecture name, config, extra metadata); loading never unpickles.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ramparts.errors import ValidationError, check_int, invalid, unknown

__all__ = [
    "ARCHITECTURES",
    "MLP",
    "BasicBlock",
    "CarliniCNN",
    "LeNet5",
    "ResNet18",
    "SmallCNN",
    "build",
    "load_model",
    "load_weights",
    "save_model",
    "save_weights",
]

logger = logging.getLogger(__name__)

MODEL_FORMAT = "ramparts-model"
MODEL_FORMAT_VERSION = 1
# A defended model's folder (``ramparts.defenses.persist``): ``load_model`` hands it over by this format name.
DEFENDED_FORMAT = "ramparts-defended"


def _check_dropout(value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise invalid("dropout", value, "a probability in [0, 1)")
    return float(value)


def _check_io(in_channels: int, input_size: int, num_classes: int) -> None:
    check_int("in_channels", in_channels, 1)
    check_int("input_size", input_size, 1)
    check_int("num_classes", num_classes, 2)


def _flat_features(features: nn.Module, in_channels: int, input_size: int, arch: str) -> int:
    """Number of features ``features`` yields for one image; a clear error when the image is too small."""
    try:
        with torch.no_grad():
            out = features(torch.zeros(1, in_channels, input_size, input_size))
    except RuntimeError as exc:
        raise invalid("input_size", input_size, f"an image size {arch} can process ({exc})") from exc
    return int(out.numel())


class MLP(nn.Module):
    """Fully connected network: flatten, then ``hidden`` ReLU layers, then a linear output."""

    def __init__(
        self,
        *,
        in_channels: int,
        input_size: int,
        num_classes: int,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_io(in_channels, input_size, num_classes)
        dropout = _check_dropout(dropout)
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * input_size * input_size
        for i, size in enumerate(hidden):
            layers += [nn.Linear(width, check_int(f"hidden[{i}]", size, 1)), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch ``[N, C, H, W]``."""
        return self.net(x)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling.

    The first convolution is padded ("same"), as in the usual MNIST variant; the second is padded
    too when the image is too small for a valid 5x5 convolution (e.g. 8x8 digits).
    """

    def __init__(self, *, in_channels: int, input_size: int, num_classes: int) -> None:
        super().__init__()
        _check_io(in_channels, input_size, num_classes)
        pad2 = 0 if input_size // 2 >= 10 else 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=pad2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = _flat_features(self.features, in_channels, input_size, "lenet5")
        self.classifier = nn.Sequential(
            nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch ``[N, C, H, W]``."""
        return self.classifier(self.features(x))


class CarliniCNN(nn.Module):
    """The MNIST CNN of Papernot et al. (2016) and Carlini & Wagner (2017).

    conv32-conv32-pool-conv64-conv64-pool-fc200-fc200-out, 3x3 kernels, ReLU. Convolutions are
    unpadded as in the paper when ``input_size >= 16``, padded ("same") below that so 8x8 works.
    The papers used ``dropout=0.5`` between the dense layers; the default here is none.
    """

    def __init__(self, *, in_channels: int, input_size: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        _check_io(in_channels, input_size, num_classes)
        dropout = _check_dropout(dropout)
        pad = 0 if input_size >= 16 else 1
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=pad),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=pad),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = _flat_features(self.features, in_channels, input_size, "carlini_cnn")
        self.classifier = nn.Sequential(
            nn.Linear(flat, 200),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(200, 200),
            nn.ReLU(),
            nn.Linear(200, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch ``[N, C, H, W]``."""
        return self.classifier(self.features(x))


class SmallCNN(nn.Module):
    """A small CIFAR-style CNN (two conv-conv-pool stages, one hidden dense layer); the audit default."""

    def __init__(
        self,
        *,
        in_channels: int,
        input_size: int,
        num_classes: int,
        width: int = 32,
        hidden: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_io(in_channels, input_size, num_classes)
        w = check_int("width", width, 1)
        dropout = _check_dropout(dropout)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = _flat_features(self.features, in_channels, input_size, "small_cnn")
        self.classifier = nn.Sequential(
            nn.Linear(flat, check_int("hidden", hidden, 1)),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch ``[N, C, H, W]``."""
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN layers and a (projected when needed) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016) with the CIFAR stem: 3x3 stride-1 conv, no max pooling.

    Built for 32x32 inputs; global average pooling makes it run on any size >= 1 (8x8 and 28x28
    too), though it was designed for, and is only sensible at, 32x32 and above.
    """

    def __init__(self, *, in_channels: int, input_size: int, num_classes: int, width: int = 64) -> None:
        super().__init__()
        _check_io(in_channels, input_size, num_classes)
        w = check_int("width", width, 1)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()
        )
        stages: list[nn.Module] = []
        in_planes = w
        for i, stride in enumerate((1, 2, 2, 2)):
            planes = w * 2**i
            stages += [BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)]
            in_planes = planes
        self.layers = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch ``[N, C, H, W]``."""
        return self.fc(self.pool(self.layers(self.stem(x))))


class EncryptableCNN(nn.Module):
    """One strided convolution and two dense layers: the shape CKKS inference can compute (issue 8).

    The size of TenSEAL's MNIST tutorial (Benaissa et al., "TenSEAL: A Library for Encrypted Tensor
    Operations Using Homomorphic Encryption", ICLR 2021 workshop), after CryptoNets (Gilad-Bachrach et al.,
    ICML 2016): conv ``channels`` x ``kernel`` x ``kernel``, stride ``stride``, no padding -> ReLU -> dense
    ``hidden`` -> ReLU -> dense. Built with ReLU; ``ramparts.protection.poly.polynomialize`` turns it into
    the x^2 network that ``compile_model`` encrypts. ``kernel``/``stride`` default to 7/3 for images of 28
    pixels or more (4 x 8 x 8 = 256 features on MNIST) and 3/1 below (8x8 digits).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        input_size: int,
        num_classes: int,
        channels: int = 4,
        kernel: int | None = None,
        stride: int | None = None,
        hidden: int = 64,
    ) -> None:
        super().__init__()
        _check_io(in_channels, input_size, num_classes)
        large = input_size >= 28
        k = kernel if kernel is not None else (7 if large else 3)
        st = stride if stride is not None else (3 if large else 1)
        for name, value in (("channels", channels), ("kernel", k), ("stride", st), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise invalid(name, value, "an integer >= 1")
        self.features = nn.Sequential(nn.Conv2d(in_channels, channels, k, stride=st), nn.ReLU(), nn.Flatten())
        flat = _flat_features(self.features, in_channels, input_size, "encryptable_cnn")
        self.classifier = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch ``[N, C, H, W]``."""
        return self.classifier(self.features(x))


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "encryptable_cnn": EncryptableCNN,
    "mlp": MLP,
    "lenet5": LeNet5,
    "carlini_cnn": CarliniCNN,
    "small_cnn": SmallCNN,
    "resnet18": ResNet18,
}


def build(name: str, **config: Any) -> nn.Module:
    """Build the architecture registered as ``name`` with keyword ``config``."""
    if name not in ARCHITECTURES:
        raise unknown("arch", name, ARCHITECTURES)
    cls = ARCHITECTURES[name]
    params = {
        p.name: p
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    extra = sorted(set(config) - set(params))
    if extra:
        raise invalid(
            "config", extra, f"keys accepted by {name!r}: {', '.join(params)}", "remove the other keys"
        )
    missing = sorted(k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in config)
    if missing:
        raise invalid("config", sorted(config), f"the required keys {', '.join(missing)} for {name!r}")
    return cls(**config)


def save_weights(
    model: nn.Module, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> None:
    """Write the model's state dict to a safetensors file (tensors moved to CPU, made contiguous)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=dict(metadata) if metadata else None)


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a safetensors (or ``torch.load(weights_only=True)`` ``.pt``) state dict, keys matched strictly."""
    file = Path(path)
    if not file.is_file():
        raise invalid("path", str(path), "an existing weights file", "check the path")
    state = _read_pt(file) if file.suffix in (".pt", ".pth") else _read_safetensors(file)
    _load_strict(model, state, file)


def save_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    arch: str,
    config: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``<prefix>.safetensors`` and ``<prefix>.json``; return the weights path.

    ``path`` is a prefix (a ``.safetensors``/``.json`` suffix is dropped) or an existing folder, in
    which case the files are ``model.safetensors`` and ``model.json`` inside it. ``arch`` and
    ``config`` must rebuild ``model`` through :func:`build`; ``extra`` holds JSON metadata such as
    input bounds, normalisation and class names.
    """
    prefix = model_prefix(path)
    reference = build(arch, **config)
    _check_same_layout(
        model.state_dict(), reference.state_dict(), f"arch={arch!r} with config={dict(config)}"
    )
    meta = {
        "format": MODEL_FORMAT,
        "version": MODEL_FORMAT_VERSION,
        "arch": arch,
        "config": dict(config),
        "extra": dict(extra or {}),
    }
    weights = write_model_files(model, prefix, meta)
    logger.info("saved %s model to %s", arch, weights)
    return weights


def write_model_files(model: nn.Module, prefix: Path, meta: Mapping[str, Any]) -> Path:
    """``<prefix>.safetensors`` (tagged with ``meta``'s format and architecture) and ``<prefix>.json`` (``meta``);
    the JSON is checked before anything is written. Returns the weights path."""
    try:
        text = json.dumps(meta, indent=2, sort_keys=True)
    except TypeError as exc:
        raise invalid("config/extra", meta, "JSON-serialisable values", f"convert them ({exc})") from exc
    prefix.parent.mkdir(parents=True, exist_ok=True)
    weights = prefix.with_name(prefix.name + ".safetensors")
    arch = str(meta.get("arch", meta.get("base_arch", "")))
    save_weights(model, weights, {"format": str(meta["format"]), "arch": arch})
    prefix.with_name(prefix.name + ".json").write_text(text + "\n", encoding="utf-8")
    return weights


def load_model(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_model` and load its weights; returns (model in eval mode, meta).

    ``path`` is the prefix, the ``.json``, the ``.safetensors`` or a ``.pt`` state dict (read with
    ``torch.load(weights_only=True)``) next to a ``.json`` of the same prefix, or a folder holding
    ``model.*``. A folder written by :func:`ramparts.defenses.persist.save_defended` (its ``model.json``
    has the format ``DEFENDED_FORMAT``) loads as the whole ``DefendedModel``, not its bare classifier.
    """
    given = Path(path)
    prefix = model_prefix(given)
    meta_file = prefix.with_name(prefix.name + ".json")
    if given.suffix in (".safetensors", ".pt", ".pth"):
        weights = given
    else:
        candidates = [prefix.with_name(prefix.name + s) for s in (".safetensors", ".pt", ".pth")]
        weights = next((c for c in candidates if c.is_file()), candidates[0])
    if not meta_file.is_file():
        raise invalid(
            "path",
            str(path),
            f"a model with its JSON config at {meta_file}",
            "save with ramparts.zoo.save_model, or write the JSON {'arch': ..., 'config': {...}}",
        )
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid("path", str(meta_file), "a JSON model description", f"fix the file ({exc})") from exc
    if isinstance(meta, dict) and meta.get("format") == DEFENDED_FORMAT:
        from ramparts.defenses.persist import load_defended

        return load_defended(meta_file)
    if not isinstance(meta, dict) or not isinstance(meta.get("arch"), str):
        raise invalid("path", str(meta_file), "a JSON object with an 'arch' name and a 'config' object")
    config = meta.setdefault("config", {})
    if not isinstance(config, dict):
        raise invalid("config", config, f"a JSON object in {meta_file.name}")
    model = build(meta["arch"], **config)
    load_weights(model, weights)
    model.eval()
    return model, meta


def model_prefix(path: str | os.PathLike[str]) -> Path:
    """The common prefix of a model's files: a folder means ``folder/model``; a known suffix is dropped."""
    p = Path(path)
    if p.is_dir():
        return p / "model"
    if p.suffix in (".safetensors", ".json", ".pt", ".pth"):
        return p.with_suffix("")
    return p


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise invalid(
            "path",
            str(file),
            "a safetensors file",
            "re-save the weights with safetensors; Ramparts never unpickles model files",
        ) from exc


def _read_pt(file: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or others on bad or unsafe files
        raise invalid(
            "path",
            str(file),
            "a state dict loadable with torch.load(weights_only=True)",
            "save model.state_dict() (not the whole model) or use safetensors",
        ) from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise invalid("path", str(file), "a state dict (names -> tensors)", "save model.state_dict()")
    return obj


def _check_same_layout(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], what: str
) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing {_few(missing)}")
        if unexpected:
            details.append(f"unexpected {_few(unexpected)}")
        if wrong:
            details.append(
                "shape mismatch "
                + _few([f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong])
            )
        raise ValidationError(
            f"weights: expected exactly the tensors of {what}, got {'; '.join(details)}. "
            "Fix: use the architecture and config the weights were trained with."
        )


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], file: Path) -> None:
    _check_same_layout(state, model.state_dict(), f"the model built for {file.name}")
    model.load_state_dict(state, strict=True)


def _few(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")
