"""Polynomial activations, and training models that can be evaluated on CKKS ciphertexts.

CKKS (Cheon, Kim, Kim & Song, ASIACRYPT 2017) only adds and multiplies, so an encrypted model may
only hold polynomials: CryptoNets (Gilad-Bachrach et al., ICML 2016) replaces every ReLU by the
square ``x^2`` and max pooling by (scaled) mean pooling, then trains the network with those layers.
This module does the same for PyTorch models:

- :class:`Square` (``x^2``, CryptoNets) and :class:`Quadratic` (learned ``a*x^2 + b*x + c``);
- :func:`polynomialize`: a copy of a model with every ReLU replaced and ``MaxPool2d`` replaced by an
  ``AvgPool2d`` of the same window, refusing any other non-polynomial layer;
- :func:`train_encryptable`: trains (from scratch or fine-tuning ReLU weights) the polynomial model and
  the ReLU model with the same recipe and reports the accuracy cost of encryptability;
- :func:`save_encryptable` / :func:`load_encryptable`: safe model files (safetensors + JSON) for them.

A square's activations can explode in deep or wide networks (``x -> x^2`` doubles the exponent per
layer). Two guards: ``batch_norm=True`` puts a batch norm before each activation (the compiler folds it
into the preceding layer, as in Chabanne et al., "Privacy-Preserving Classification on Deep Neural
Network", 2017), and :func:`train_encryptable` clips the global gradient norm (``clip_norm``).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ramparts.data import Dataset
from ramparts.errors import RampartsTypeError, ValidationError, invalid, unknown
from ramparts.training import TrainConfig, TrainReport, evaluate, train
from ramparts.zoo import build, load_weights, model_prefix, write_model_files

__all__ = [
    "ACTIVATIONS",
    "POLY_FORMAT",
    "EncryptableReport",
    "Quadratic",
    "Square",
    "is_encryptable_file",
    "load_encryptable",
    "make_activation",
    "polynomialize",
    "save_encryptable",
    "train_encryptable",
]

logger = logging.getLogger(__name__)

ACTIVATIONS: tuple[str, ...] = ("square", "quadratic")
POLY_FORMAT = "ramparts-polynomial"
POLY_FORMAT_VERSION = 1
STARTS: tuple[str, ...] = ("scratch", "relu")

# ReLU's least-squares quadratic on [-R, R] (uniform weight): relu(x) = (x + |x|) / 2 and the Legendre
# projection |x| ~ 3R/16 + 15 x^2 / (16 R) give a = 15 / (32 R), b = 1/2, c = 3R / 32.
_RELU_FIT_RADIUS = 2.0

# Layers that are not polynomials and have no polynomial stand-in here; the value says what to use.
_REFUSED: dict[type[nn.Module], str] = {
    nn.Tanh: "Square() or Quadratic()",
    nn.Sigmoid: "Quadratic() (fit to the sigmoid's range) or Square()",
    nn.GELU: "Square() or Quadratic()",
    nn.SiLU: "Square() or Quadratic()",
    nn.ELU: "Square() or Quadratic()",
    nn.LeakyReLU: "Square() or Quadratic()",
    nn.PReLU: "Square() or Quadratic()",
    nn.ReLU6: "Square() or Quadratic()",
    nn.Hardtanh: "Square() or Quadratic()",
    nn.Softplus: "Square() or Quadratic()",
    nn.Softmax: "nothing: return logits (argmax is taken after decryption)",
    nn.LogSoftmax: "nothing: return logits (argmax is taken after decryption)",
    nn.MaxPool1d: "nn.AvgPool1d of the same window",
    nn.AdaptiveMaxPool2d: "nn.AdaptiveAvgPool2d or nn.AvgPool2d",
    nn.LayerNorm: "nn.BatchNorm (folded into the neighbouring layer)",
}

# Functions that a forward() may call directly, which module replacement cannot reach.
_REFUSED_FUNCTIONS: tuple[Any, ...] = (
    torch.relu,
    F.relu,
    torch.tanh,
    torch.sigmoid,
    F.gelu,
    F.max_pool2d,
    F.leaky_relu,
    torch.softmax,
    F.softmax,
)


class Square(nn.Module):
    """``x -> x^2``: CryptoNets' activation (Gilad-Bachrach et al. 2016); one ciphertext multiplication."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The element-wise square."""
        return x * x

    def coefficients(self) -> tuple[float, float, float]:
        """``(a, b, c)`` of ``a*x^2 + b*x + c``: ``(1, 0, 0)``."""
        return (1.0, 0.0, 0.0)


class Quadratic(nn.Module):
    """``a*x^2 + b*x + c`` with learned scalars; the default starts at ReLU's best quadratic on [-2, 2].

    The defaults ``a = 15/64, b = 1/2, c = 3/16`` are the least-squares fit of ReLU on [-2, 2] (the range
    that standardised pre-activations mostly fall in), so fine-tuning a ReLU network starts close to
    its function. ``learnable=False`` freezes the coefficients (registered as buffers). Costs one
    ciphertext multiplication for ``x^2`` plus plaintext scalings that the compiler folds.
    """

    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor

    def __init__(
        self,
        *,
        a: float = 15 / (32 * _RELU_FIT_RADIUS),
        b: float = 0.5,
        c: float = 3 * _RELU_FIT_RADIUS / 32,
        learnable: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("a", a), ("b", b), ("c", c)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise invalid(name, value, "a finite number", cls=RampartsTypeError)
            tensor = torch.tensor(float(value))
            if learnable:
                self.register_parameter(name, nn.Parameter(tensor))
            else:
                self.register_buffer(name, tensor)
        self.learnable = learnable

    @classmethod
    def relu_fit(cls, radius: float = _RELU_FIT_RADIUS, *, learnable: bool = True) -> Quadratic:
        """The least-squares quadratic approximation of ReLU on ``[-radius, radius]``."""
        if isinstance(radius, bool) or not isinstance(radius, int | float) or not radius > 0:
            raise invalid("radius", radius, "a number > 0", "e.g. 2.0 for standardised pre-activations")
        return cls(a=15 / (32 * radius), b=0.5, c=3 * radius / 32, learnable=learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``a*x^2 + b*x + c`` element-wise."""
        a, b, c = self.a, self.b, self.c
        return (a * x + b) * x + c

    def coefficients(self) -> tuple[float, float, float]:
        """The current ``(a, b, c)`` as floats (for the compiler)."""
        return (float(self.a.detach()), float(self.b.detach()), float(self.c.detach()))

    def extra_repr(self) -> str:
        a, b, c = self.coefficients()
        return f"a={a:.4g}, b={b:.4g}, c={c:.4g}, learnable={self.learnable}"


def make_activation(activation: str) -> nn.Module:
    """A fresh polynomial activation module by name (one of :data:`ACTIVATIONS`)."""
    if activation == "square":
        return Square()
    if activation == "quadratic":
        return Quadratic()
    raise unknown("activation", activation, ACTIVATIONS)


def polynomialize(model: nn.Module, activation: str = "square", *, batch_norm: bool = False) -> nn.Module:
    """A deep copy of ``model`` in which every ReLU is a polynomial and every MaxPool2d an AvgPool2d.

    ``activation``: ``"square"`` (CryptoNets) or ``"quadratic"`` (learned ``a*x^2 + b*x + c``).
    ``batch_norm=True`` inserts a BatchNorm (1d after Linear, 2d after Conv2d) before each new activation
    whose input comes from a Linear/Conv2d in the same ``nn.Sequential``, to keep ``x^2`` from exploding;
    the HE compiler folds it. Other non-polynomial layers (tanh, sigmoid, GELU, softmax, ...) and
    functional ``torch.relu``/``F.max_pool2d`` calls in a ``forward`` are refused, naming the layer and what
    to use instead. The input model is left unchanged; the copy keeps its training/eval mode.
    """
    if activation not in ACTIVATIONS:
        raise unknown("activation", activation, ACTIVATIONS)
    if not isinstance(model, nn.Module):
        raise invalid("model", model, "a torch.nn.Module", cls=RampartsTypeError)
    _check_polynomializable(model)
    poly = copy.deepcopy(model)
    _replace(poly, activation, batch_norm)
    _check_functional(poly)
    return poly


def _check_polynomializable(model: nn.Module) -> None:
    for name, module in model.named_modules():
        for kind, alternative in _REFUSED.items():
            if isinstance(module, kind):
                raise ValidationError(
                    f"model: layer {name or '<root>'!r} ({type(module).__name__}) is not a polynomial and "
                    f"cannot be evaluated on CKKS ciphertexts. Fix: replace it with {alternative}."
                )
        if isinstance(module, nn.MaxPool2d) and (module.dilation not in (1, (1, 1)) or module.return_indices):
            raise ValidationError(
                f"model: layer {name!r} (MaxPool2d with dilation or return_indices) has no AvgPool2d "
                "equivalent. Fix: use a plain MaxPool2d(kernel, stride, padding) or AvgPool2d."
            )


def _replace(module: nn.Module, activation: str, batch_norm: bool) -> None:
    """Swap the children of ``module`` in place, recursing into containers."""
    previous: nn.Module | None = None
    for name, child in list(module.named_children()):
        if isinstance(child, nn.ReLU):
            new = make_activation(activation)
            if batch_norm and isinstance(previous, nn.Linear):
                new = nn.Sequential(nn.BatchNorm1d(previous.out_features), new)
            elif batch_norm and isinstance(previous, nn.Conv2d):
                new = nn.Sequential(nn.BatchNorm2d(previous.out_channels), new)
            new.train(child.training)
            setattr(module, name, new)
        elif isinstance(child, nn.MaxPool2d):
            pool = nn.AvgPool2d(
                child.kernel_size,
                stride=child.stride,
                padding=child.padding,
                ceil_mode=child.ceil_mode,
                count_include_pad=True,
            )
            setattr(module, name, pool)
        else:
            _replace(child, activation, batch_norm)
        previous = child


def _check_functional(model: nn.Module) -> None:
    """Refuse functional ReLU/max-pool/... calls that module replacement cannot reach (traced with torch.fx)."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # fx raises many exception types on dynamic control flow
        logger.info(
            "polynomialize: could not trace %s (%s); functional calls unchecked", type(model).__name__, exc
        )
        return
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _REFUSED_FUNCTIONS:
            raise ValidationError(
                f"model: forward() calls {getattr(node.target, '__name__', node.target)} directly (node "
                f"{node.name!r}), which polynomialize cannot replace. Fix: use an nn.ReLU module (or Square()) "
                "in the architecture instead of the functional call."
            )
        if node.op == "call_method" and node.target in ("relu", "tanh", "sigmoid", "softmax"):
            raise ValidationError(
                f"model: forward() calls Tensor.{node.target}() (node {node.name!r}). Fix: use an nn.ReLU "
                "module (or Square()) in the architecture instead."
            )


def save_encryptable(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    arch: str,
    config: Mapping[str, Any],
    activation: str,
    batch_norm: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a polynomial model as ``<prefix>.safetensors`` + ``<prefix>.json``; return the weights path.

    ``path`` is a prefix or a folder (files ``model.*`` inside). The JSON has format
    :data:`POLY_FORMAT` and names the ReLU zoo architecture (``base_arch``, ``config``) that
    ``polynomialize(build(arch, **config), activation, batch_norm=batch_norm)`` turns into ``model``;
    the layout is checked now so that :func:`load_encryptable` cannot fail later. There is no
    ``arch`` key on purpose: :func:`ramparts.zoo.load_model` refuses the file instead of silently
    loading these weights into a ReLU network.
    """
    reference = polynomialize(build(arch, **config), activation, batch_norm=batch_norm)
    _check_layout(model, reference, f"polynomialize({arch!r}, {activation!r}, batch_norm={batch_norm})")
    prefix = model_prefix(path)
    meta = {
        "format": POLY_FORMAT,
        "version": POLY_FORMAT_VERSION,
        "base_arch": arch,
        "config": dict(config),
        "activation": activation,
        "batch_norm": batch_norm,
        "extra": dict(extra or {}),
    }
    weights = write_model_files(model, prefix, meta)
    logger.info("saved %s polynomial model to %s", activation, weights)
    return weights


def is_encryptable_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (prefix, folder or ``.json``) holds a model written by :func:`save_encryptable`."""
    prefix = model_prefix(path)
    meta_file = prefix.with_name(prefix.name + ".json")
    if not meta_file.is_file():
        return False
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(meta, dict) and meta.get("format") == POLY_FORMAT


def load_encryptable(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_encryptable`; returns (model in eval mode, meta). Never unpickles."""
    prefix = model_prefix(path)
    meta_file = prefix.with_name(prefix.name + ".json")
    if not meta_file.is_file():
        raise invalid("path", str(path), f"a polynomial model with its JSON at {meta_file}", "check the path")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid("path", str(meta_file), "a JSON model description", f"fix the file ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != POLY_FORMAT:
        raise invalid(
            "path",
            str(meta_file),
            f"a file of format {POLY_FORMAT!r}",
            "write it with ramparts.protection.poly.save_encryptable (a ReLU model loads with ramparts.zoo.load_model)",
        )
    if meta.get("version") != POLY_FORMAT_VERSION:
        raise invalid(
            "version", meta.get("version"), f"{POLY_FORMAT_VERSION}", "re-save with this version of Ramparts"
        )
    config = meta.get("config")
    if not isinstance(meta.get("base_arch"), str) or not isinstance(config, dict):
        raise invalid("path", str(meta_file), "a 'base_arch' name and a 'config' object")
    model = polynomialize(
        build(meta["base_arch"], **config),
        meta.get("activation", ""),
        batch_norm=bool(meta.get("batch_norm")),
    )
    load_weights(model, prefix.with_name(prefix.name + ".safetensors"))
    model.eval()
    return model, meta


def _check_layout(model: nn.Module, reference: nn.Module, what: str) -> None:
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    if got != want:
        diff = sorted(set(got) ^ set(want)) or sorted(k for k in got if got[k] != want[k])
        raise ValidationError(
            f"model: its tensors differ from {what} (first differences: {', '.join(diff[:5])}). "
            "Fix: pass the arch, config, activation and batch_norm the model was built with."
        )


@dataclass
class EncryptableReport:
    """A polynomial model trained for encrypted inference, beside the ReLU model of the same recipe.

    ``accuracy_cost`` = ReLU accuracy - polynomial accuracy (positive: encryptability costs accuracy),
    both measured on ``evaluated_on`` ("test" when a test set was given, else "train").
    """

    model: nn.Module
    relu_model: nn.Module
    activation: str
    start: str
    accuracy: float
    relu_accuracy: float
    evaluated_on: str
    poly_train: TrainReport
    relu_train: TrainReport
    seconds: float

    @property
    def accuracy_cost(self) -> float:
        """ReLU accuracy minus polynomial accuracy."""
        return self.relu_accuracy - self.accuracy

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (no tensors)."""
        return {
            "activation": self.activation,
            "start": self.start,
            "accuracy": self.accuracy,
            "relu_accuracy": self.relu_accuracy,
            "accuracy_cost": self.accuracy_cost,
            "evaluated_on": self.evaluated_on,
            "poly_final_train_loss": self.poly_train.summary()["final_train_loss"],
            "relu_final_train_loss": self.relu_train.summary()["final_train_loss"],
            "config": self.poly_train.config.to_dict(),
            "seconds": self.seconds,
        }


def train_encryptable(
    model: nn.Module | str,
    data: Dataset,
    *,
    config: TrainConfig | None = None,
    test: Dataset | None = None,
    activation: str = "square",
    start: str = "scratch",
    batch_norm: bool = False,
    clip_norm: float | None = 5.0,
    arch_config: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> EncryptableReport:
    """Train a polynomial (encryptable) model and the ReLU model of the same recipe; report the cost.

    ``model``: a ReLU ``nn.Module`` (its current weights are the common starting point; it is not
    modified) or a zoo architecture name built with ``arch_config`` (``in_channels``, ``input_size`` and
    ``num_classes`` default to the data's) after ``torch.manual_seed(config.seed)``.
    ``start="scratch"`` trains both models from the same initial weights with ``config``;
    ``start="relu"`` trains the ReLU model, then polynomializes it and fine-tunes it with ``config``
    (CryptoNets-style conversion of a trained network). ``clip_norm`` clips the global gradient norm
    of the polynomial model (None: no clipping) against ``x^2`` blow-ups; it bounds SGD's steps, while
    Adam's steps are already bounded by ``lr`` (clipping then only tempers its moment estimates), so for
    deep squares prefer ``batch_norm=True``.
    """
    config = config or TrainConfig()
    if start not in STARTS:
        raise unknown("start", start, STARTS)
    if activation not in ACTIVATIONS:
        raise unknown("activation", activation, ACTIVATIONS)
    if clip_norm is not None and (
        isinstance(clip_norm, bool) or not isinstance(clip_norm, int | float) or not clip_norm > 0
    ):
        raise invalid("clip_norm", clip_norm, "None or a number > 0", "e.g. 5.0")
    began = time.perf_counter()
    relu = _initial_model(model, data, config, arch_config)
    initial = copy.deepcopy(relu)
    relu_train = train(relu, data, config=config, val=test, progress=progress)
    poly = polynomialize(relu if start == "relu" else initial, activation, batch_norm=batch_norm)
    poly_train = _train_clipped(poly, data, config, test, clip_norm, progress)
    measured = test if test is not None else data
    report = EncryptableReport(
        model=poly,
        relu_model=relu,
        activation=activation,
        start=start,
        accuracy=evaluate(poly, measured),
        relu_accuracy=evaluate(relu, measured),
        evaluated_on="test" if test is not None else "train",
        poly_train=poly_train,
        relu_train=relu_train,
        seconds=time.perf_counter() - began,
    )
    logger.info(
        "encryptable %s model (%s): accuracy %.4f vs ReLU %.4f (cost %+.4f) on %s",
        activation,
        start,
        report.accuracy,
        report.relu_accuracy,
        report.accuracy_cost,
        report.evaluated_on,
    )
    return report


def _initial_model(
    model: nn.Module | str, data: Dataset, config: TrainConfig, arch_config: Mapping[str, Any] | None
) -> nn.Module:
    if isinstance(model, str):
        shape = tuple(data.x.shape[1:])
        defaults: dict[str, Any] = {"num_classes": len(data.classes)}
        if len(shape) == 3:
            defaults.update(in_channels=shape[0], input_size=shape[-1])
        defaults.update(arch_config or {})
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            return build(model, **defaults)
    if not isinstance(model, nn.Module):
        raise invalid("model", model, "a torch.nn.Module or a zoo architecture name", cls=RampartsTypeError)
    if arch_config is not None:
        raise invalid("arch_config", arch_config, "None when model is a module", "pass the module alone")
    return copy.deepcopy(model)


def _train_clipped(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    test: Dataset | None,
    clip_norm: float | None,
    progress: bool,
) -> TrainReport:
    """:func:`train` with the global gradient norm clipped to ``clip_norm`` before every optimizer step.

    :func:`train` owns its loop, so clipping runs in post-accumulate-grad hooks: once every trainable
    parameter has its gradient for the batch, the last hook clips them all together.
    """
    if clip_norm is None:
        return train(model, data, config=config, val=test, progress=progress)
    params = [p for p in model.parameters() if p.requires_grad]
    pending: set[int] = set()

    def loss_hook(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pending.clear()
        pending.update(range(len(params)))
        return F.cross_entropy(net(x), y)

    def make_hook(i: int) -> Any:
        def hook(_: torch.Tensor) -> None:
            pending.discard(i)
            if not pending:
                nn.utils.clip_grad_norm_(params, clip_norm)

        return hook

    handles = [p.register_post_accumulate_grad_hook(make_hook(i)) for i, p in enumerate(params)]
    try:
        return train(model, data, config=config, val=test, progress=progress, loss_hook=loss_hook)
    finally:
        for handle in handles:
            handle.remove()
