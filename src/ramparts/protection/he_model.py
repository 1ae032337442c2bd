"""Compile a trained PyTorch model into an encryptable program: affine stages and polynomial activations.

CKKS (Cheon, Kim, Kim & Song, ASIACRYPT 2017) only adds and multiplies, so the compiler keeps what is
affine and folds it (Linear, Flatten, average pooling, batch norm: CryptoNets, Gilad-Bachrach et al.,
ICML 2016, Section 4.1, folds every linear layer that is not followed by an activation into the next
one, which saves multiplicative depth), and keeps the polynomial activations of
:mod:`ramparts.protection.poly`. The result is a list of stages ``linear -> activation``:

- the linear part is one Conv2d (first layer only, on the raw image; evaluated as its sparse dense
  matrix, :meth:`ConvLinear.dense`) or a dense float64 matrix with its bias;
- the activation is ``none``, ``square`` (``y*y``) or ``product`` (``y * (a*y + b)``, two linear
  branches multiplied: ``a*y^2 + b*y`` at the depth of one square). The constant ``c`` of a quadratic and
  the factor ``a`` of ``a*y^2`` are folded into the next stage's bias and weights.

Each stage costs one rescale for the linear part and one for the activation, so ``depth`` is their count.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ramparts.errors import ValidationError, invalid, unknown

__all__ = [
    "PACKINGS",
    "ConvLinear",
    "DenseLinear",
    "HEProgram",
    "Stage",
    "UnsupportedLayerError",
    "compile_model",
]

#: "query": one ciphertext per input (single predictions); "batch": CryptoNets, one ciphertext per feature.
PACKINGS: tuple[str, ...] = ("query", "batch")
_RELU_FIX = "replace it by ramparts.protection.poly.Square (or Quadratic), or train with polynomialize()"
_ALTERNATIVES: dict[str, str] = {
    "ReLU": _RELU_FIX,
    "LeakyReLU": _RELU_FIX,
    "GELU": _RELU_FIX,
    "SiLU": _RELU_FIX,
    "ELU": _RELU_FIX,
    "Tanh": "replace it by ramparts.protection.poly.Quadratic or Square",
    "Sigmoid": "replace it by ramparts.protection.poly.Quadratic",
    "MaxPool2d": "replace it by nn.AvgPool2d of the same window (polynomialize() does this)",
    "AdaptiveMaxPool2d": "replace it by nn.AvgPool2d",
    "Softmax": "remove it: the encrypted model returns logits, argmax is taken after decryption",
    "LogSoftmax": "remove it: the encrypted model returns logits, argmax is taken after decryption",
    "LayerNorm": "use nn.BatchNorm (folded into the neighbouring layer)",
}
_SUPPORTED = (
    "nn.Linear, one nn.Conv2d (first layer, 1 input channel), nn.AvgPool2d, nn.Flatten, "
    "nn.BatchNorm1d/2d, nn.Dropout, nn.Identity, ramparts.protection.poly.Square / Quadratic"
)


class UnsupportedLayerError(ValidationError):
    """A layer that cannot be computed on CKKS ciphertexts (or not where it stands)."""


@dataclass(frozen=True, eq=False)
class ConvLinear:
    """A single-input-channel Conv2d: ``weight`` [C, k, k], ``bias`` [C] (float64), square kernel."""

    weight: np.ndarray
    bias: np.ndarray
    stride: int
    padding: int
    image: tuple[int, int]

    @property
    def kernel(self) -> int:
        """Kernel side k."""
        return int(self.weight.shape[1])

    @property
    def out_hw(self) -> tuple[int, int]:
        """Output height and width."""
        h, w = (d + 2 * self.padding for d in self.image)
        return ((h - self.kernel) // self.stride + 1, (w - self.kernel) // self.stride + 1)

    @property
    def windows(self) -> int:
        """Kernel positions per channel (im2col's ``windows_nb``)."""
        oh, ow = self.out_hw
        return oh * ow

    @property
    def out_features(self) -> int:
        """Flattened output size C * H' * W'."""
        return int(self.weight.shape[0]) * self.windows

    def dense(self) -> DenseLinear:
        """The convolution as a dense [C*H'*W', H*W] matrix and bias (mostly zeros: k*k non-zeros per row)."""
        size = self.image[0] * self.image[1]
        basis = torch.cat([torch.zeros(1, size, dtype=torch.float64), torch.eye(size, dtype=torch.float64)])
        out = self.apply(basis).numpy()
        return DenseLinear(weight=(out[1:] - out[:1]).T.copy(), bias=out[0].copy())

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of ``x`` [N, H*W] (float64), flattened in NCHW order: [N, C*H'*W']."""
        img = x.reshape(-1, 1, *self.image)
        w = torch.from_numpy(self.weight).unsqueeze(1)
        y = F.conv2d(img, w, torch.from_numpy(self.bias), stride=self.stride, padding=self.padding)
        return y.flatten(1)


@dataclass(frozen=True, eq=False)
class DenseLinear:
    """``y = weight @ x + bias`` with ``weight`` [out, in] (float64)."""

    weight: np.ndarray
    bias: np.ndarray

    @property
    def out_features(self) -> int:
        """Output size."""
        return int(self.weight.shape[0])

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ weight.T + bias`` for ``x`` [N, in] (float64)."""
        return x @ torch.from_numpy(self.weight).T + torch.from_numpy(self.bias)


@dataclass(frozen=True, eq=False)
class Stage:
    """One linear part and its activation: ``none``, ``square`` or ``product`` (``y * (a*y + b)``)."""

    linear: ConvLinear | DenseLinear
    activation: str
    a: float = 1.0
    b: float = 0.0

    @property
    def depth(self) -> int:
        """Rescales this stage costs: one for the linear part, one for a non-trivial activation."""
        return 1 + (self.activation != "none")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Float64 reference of the stage."""
        y = self.linear.apply(x)
        if self.activation == "square":
            return y * y
        if self.activation == "product":
            return y * (self.a * y + self.b)
        return y


class HEProgram:
    """A compiled, encryptable model: folded stages in float64 and a final scalar shift."""

    def __init__(
        self, *, stages: list[Stage], output_shift: float, input_shape: tuple[int, ...], source: list[str]
    ) -> None:
        self.stages = stages
        self.output_shift = output_shift
        self.input_shape = input_shape
        self.num_outputs = stages[-1].linear.out_features
        self.source = source

    @property
    def depth(self) -> int:
        """Multiplicative depth of the stages (rescales); see :meth:`depth_for` for a packing's."""
        return sum(s.depth for s in self.stages)

    @property
    def input_features(self) -> int:
        """Numbers per input: the product of ``input_shape``."""
        return int(np.prod(self.input_shape))

    @property
    def conv(self) -> ConvLinear | None:
        """The first stage's convolution, if any."""
        first = self.stages[0].linear
        return first if isinstance(first, ConvLinear) else None

    def depth_for(self, packing: str) -> int:
        """Multiplicative depth of one packing's evaluation: the same for both (one rescale per linear part
        and per activation, see :mod:`ramparts.protection.he_seal`)."""
        check_packing(packing)
        return self.depth

    def periods(self) -> list[int]:
        """Per stage, the slot period of its input in the query packing: ``max(pow2(in), pow2(out))``.

        The diagonal method (:class:`ramparts.protection.he_seal.DiagonalPlan`) needs the input replicated
        with this period and leaves its output replicated with period ``pow2(out)``.
        """
        sizes = [self.input_features] + [s.linear.out_features for s in self.stages]
        return [max(_next_pow2(sizes[i]), _next_pow2(sizes[i + 1])) for i in range(len(self.stages))]

    def plain_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float64 reference of exactly what is computed encrypted: logits [N, num_outputs]."""
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != self.input_shape:
            raise invalid(
                "x", getattr(x, "shape", x), f"a tensor [N, {', '.join(map(str, self.input_shape))}]"
            )
        h = x.detach().to("cpu", torch.float64).reshape(len(x), -1)
        for stage in self.stages:
            h = stage.apply(h)
        return h + self.output_shift

    def describe(self) -> list[dict[str, Any]]:
        """One JSON-ready entry per operation, in evaluation order."""
        ops: list[dict[str, Any]] = []
        for i, stage in enumerate(self.stages):
            lin = stage.linear
            if isinstance(lin, ConvLinear):
                ops.append(
                    {
                        "stage": i,
                        "op": "conv2d",
                        "channels": int(lin.weight.shape[0]),
                        "kernel": lin.kernel,
                        "stride": lin.stride,
                        "padding": lin.padding,
                        "image": list(lin.image),
                        "out": [int(lin.weight.shape[0]), *lin.out_hw],
                    }
                )
            else:
                ops.append(
                    {"stage": i, "op": "dense", "in": int(lin.weight.shape[1]), "out": lin.out_features}
                )
            if stage.activation != "none":
                entry: dict[str, Any] = {"stage": i, "op": stage.activation}
                if stage.activation == "product":
                    entry.update(a=stage.a, b=stage.b)
                ops.append(entry)
        if self.output_shift:
            ops.append({"op": "shift", "value": self.output_shift})
        return ops

    def input_encoding(self, packing: str) -> dict[str, Any]:
        """What a client needs to encrypt inputs for this program (JSON-ready).

        ``batch``: one ciphertext per input number (``features`` of them), inputs in the slots.
        ``query``: one ciphertext per input, the flattened input zero-padded to ``period`` numbers and
        repeated over all slots.
        """
        check_packing(packing)
        if packing == "batch":
            return {"packing": "batch", "kind": "features", "features": self.input_features}
        return {
            "packing": "query",
            "kind": "replicated",
            "features": self.input_features,
            "period": self.periods()[0],
        }


def _next_pow2(v: int) -> int:
    return 1 << (v - 1).bit_length()


def check_packing(packing: str) -> str:
    """``packing`` if it is one of :data:`PACKINGS`, else an error listing them."""
    if packing not in PACKINGS:
        raise unknown("packing", packing, PACKINGS)
    return packing


def _refuse(path: str, module: nn.Module, why: str | None = None) -> UnsupportedLayerError:
    name = type(module).__name__
    fix = _ALTERNATIVES.get(name, f"use only the supported layers: {_SUPPORTED}")
    reason = why or "cannot be computed on CKKS ciphertexts"
    return UnsupportedLayerError(f"layer {path or '<model>'} ({name}) {reason}. Fix: {fix}.")


def _poly_classes() -> tuple[type[nn.Module], type[nn.Module]]:
    from ramparts.protection.poly import Quadratic, Square

    return Square, Quadratic


def _walk(module: nn.Module, path: str) -> list[tuple[str, nn.Module]]:
    """Leaves in forward order, where the order is unambiguous (Sequential, features -> classifier)."""
    children = dict(module.named_children())
    if isinstance(module, _poly_classes()) or not children:
        return [(path, module)]
    join = (lambda name: f"{path}.{name}") if path else (lambda name: name)
    if isinstance(module, nn.Sequential):
        order = list(children)
    elif set(children) == {"features", "classifier"}:
        order = ["features", "classifier"]
    elif len(children) == 1:
        order = list(children)
    else:
        raise UnsupportedLayerError(
            f"layer {path or '<model>'} ({type(module).__name__}): cannot tell the order its children "
            f"{sorted(children)} run in. Fix: pass an nn.Sequential (or a model with only `features` and "
            "`classifier` Sequentials)."
        )
    return [leaf for name in order for leaf in _walk(children[name], join(name))]


class _Builder:
    """Folds a forward-ordered list of layers into stages (pending affine map + activations)."""

    def __init__(self, input_shape: tuple[int, ...]) -> None:
        self.shape = input_shape
        self.stages: list[Stage] = []
        self.conv: ConvLinear | None = None
        self.matrix: np.ndarray | None = None  # pending dense map; None = identity
        self.shift: np.ndarray | None = None  # pending bias; None = zero

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def affine(self, matrix: np.ndarray, shift: np.ndarray) -> None:
        """Compose the pending map with ``x -> matrix @ x + shift`` (a conv first becomes a stage)."""
        if self.conv is not None:
            self.close("none")
        base = self.matrix if self.matrix is not None else np.eye(self.size)
        bias = self.shift if self.shift is not None else np.zeros(self.size)
        self.matrix = matrix @ base
        self.shift = matrix @ bias + shift

    def close(self, activation: str, a: float = 1.0, b: float = 0.0) -> None:
        """Emit the pending linear part as a stage with ``activation``."""
        linear: ConvLinear | DenseLinear
        if self.conv is not None:
            linear = self.conv
        else:
            matrix = self.matrix if self.matrix is not None else np.eye(self.size)
            shift = self.shift if self.shift is not None else np.zeros(len(matrix))
            linear = DenseLinear(weight=matrix, bias=shift)
        self.stages.append(Stage(linear=linear, activation=activation, a=a, b=b))
        self.conv, self.matrix, self.shift = None, None, None

    def layer(self, path: str, module: nn.Module) -> None:
        square_cls, quadratic_cls = _poly_classes()
        if isinstance(module, (nn.Dropout, nn.Identity)):
            return
        if isinstance(module, nn.Flatten):
            if module.start_dim != 1 or module.end_dim != -1:
                raise _refuse(path, module, "flattens other dimensions than all but the batch one")
            self.shape = (self.size,)
        elif isinstance(module, nn.Conv2d):
            self._conv(path, module)
        elif isinstance(module, nn.Linear):
            if len(self.shape) != 1 or self.shape[0] != module.in_features:
                raise _refuse(
                    path, module, f"expects {module.in_features} flat features, gets shape {self.shape}"
                )
            w = module.weight.detach().double().cpu().numpy()
            bias = (
                module.bias.detach().double().cpu().numpy() if module.bias is not None else np.zeros(len(w))
            )
            self.affine(w, bias)
            self.shape = (module.out_features,)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            self._batch_norm(path, module)
        elif isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            self._linear_module(path, module)
        elif isinstance(module, (square_cls, quadratic_cls)):
            a, b, c = (1.0, 0.0, 0.0) if isinstance(module, square_cls) else _coefficients(module)
            self._activation(a, b, c)
        else:
            raise _refuse(path, module)

    def _conv(self, path: str, m: nn.Conv2d) -> None:
        if self.stages or self.conv is not None or self.matrix is not None or self.shift is not None:
            raise _refuse(path, m, "is not the first layer (a conv is only supported on the raw image)")
        ks, st, pd, dl = m.kernel_size, m.stride, m.padding, m.dilation
        if (
            len(self.shape) != 3
            or m.in_channels != 1
            or m.groups != 1
            or ks[0] != ks[1]
            or st[0] != st[1]
            or isinstance(pd, str)
            or pd[0] != pd[1]
            or tuple(dl) != (1, 1)
            or m.padding_mode != "zeros"
        ):
            raise _refuse(
                path,
                m,
                "is not a single-input-channel conv with a square kernel, one stride, zero padding and no dilation",
            )
        w = m.weight.detach().double().cpu().numpy()[:, 0]
        bias = m.bias.detach().double().cpu().numpy() if m.bias is not None else np.zeros(len(w))
        self.conv = ConvLinear(
            weight=w, bias=bias, stride=int(st[0]), padding=int(pd[0]), image=self.shape[1:]
        )
        self.shape = (len(w), *self.conv.out_hw)

    def _batch_norm(self, path: str, m: nn.BatchNorm1d | nn.BatchNorm2d) -> None:
        if m.running_mean is None or m.running_var is None:
            raise _refuse(path, m, "has no running statistics (track_running_stats=False)")
        mean = m.running_mean.detach().double().cpu().numpy()
        scale = 1.0 / np.sqrt(m.running_var.detach().double().cpu().numpy() + m.eps)
        if m.affine:
            scale = scale * m.weight.detach().double().cpu().numpy()
        shift = -mean * scale + (m.bias.detach().double().cpu().numpy() if m.affine else 0.0)
        if self.conv is not None and isinstance(m, nn.BatchNorm2d):
            c = self.conv
            self.conv = ConvLinear(
                weight=c.weight * scale[:, None, None],
                bias=c.bias * scale + shift,
                stride=c.stride,
                padding=c.padding,
                image=c.image,
            )
            return
        per = self.size // len(scale)
        self.affine(np.diag(np.repeat(scale, per)), np.repeat(shift, per))

    def _linear_module(self, path: str, m: nn.Module) -> None:
        if len(self.shape) != 3:
            raise _refuse(path, m, f"expects [C, H, W] inputs, gets shape {self.shape}")
        basis = torch.eye(self.size, dtype=torch.float64).reshape(self.size, *self.shape)
        with torch.no_grad():
            out = m(basis)
        self.affine(out.reshape(self.size, -1).T.contiguous().numpy(), np.zeros(out[0].numel()))
        self.shape = tuple(out.shape[1:])

    def _activation(self, a: float, b: float, c: float) -> None:
        if a == 0.0:
            self.affine(np.eye(self.size) * b, np.full(self.size, c))
            return
        if b == 0.0:
            self.close("square")
            self.matrix = np.eye(self.size) * a
        else:
            self.close("product", a, b)
        if c != 0.0:
            self.shift = np.full(self.size, c)


def _coefficients(module: nn.Module) -> tuple[float, float, float]:
    return tuple(float(getattr(module, name).detach()) for name in ("a", "b", "c"))  # type: ignore[return-value]


def compile_model(model: nn.Module, input_shape: tuple[int, ...]) -> HEProgram:
    """Compile ``model`` (eval-mode semantics) for inputs of ``input_shape`` (no batch dim) into a program.

    Raises :class:`UnsupportedLayerError` naming the layer and its encryptable alternative. The program is
    checked against ``model`` in float64 on random inputs, so a forward() that does more than run its
    children in order is refused instead of silently computing something else.
    """
    if not isinstance(model, nn.Module):
        raise invalid("model", model, "a torch.nn.Module")
    shape = tuple(input_shape)
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise invalid(
            "input_shape", input_shape, "a tuple of positive integers without the batch dim, e.g. (1, 8, 8)"
        )
    builder = _Builder(shape)
    leaves = _walk(model, "")
    for path, module in leaves:
        builder.layer(path, module)
    if builder.conv is not None or builder.matrix is not None:
        builder.close("none")
    if not builder.stages:
        raise invalid("model", type(model).__name__, "at least one Linear or Conv2d layer")
    shift = builder.shift
    if shift is not None and not np.all(shift == shift[0]):
        builder.close("none")
        shift = None
    program = HEProgram(
        stages=builder.stages,
        output_shift=float(shift[0]) if shift is not None else 0.0,
        input_shape=shape,
        source=[f"{p} ({type(m).__name__})" for p, m in leaves],
    )
    _check_reproduces(model, program)
    return program


def _check_reproduces(model: nn.Module, program: HEProgram) -> None:
    reference = copy.deepcopy(model).to("cpu", torch.float64).eval()
    x = torch.rand((3, *program.input_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        expected = reference(x).reshape(len(x), -1)
    got = program.plain_forward(x)
    if expected.shape != got.shape or not torch.allclose(expected, got, rtol=1e-6, atol=1e-6):
        raise UnsupportedLayerError(
            f"model ({type(model).__name__}): the compiled layers {program.source} do not reproduce its forward() "
            "(it does more than run its children in order). Fix: pass an nn.Sequential of supported layers."
        )
