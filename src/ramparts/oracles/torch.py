"""Any `torch.nn.Module` as an oracle, with the input normalisation inside the wrapper."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, cast

import torch
from torch import Tensor, nn

from ramparts.errors import RampartsTypeError, invalid, unknown
from ramparts.oracles.base import Knowledge, Oracle

_CPU_BATCH = 256
_GPU_BATCH = 4096
PRECISIONS = ("fp32", "bf16")
COMPILE_MODES = ("default", "reduce-overhead")
# bf16 logits move a sample's margin by up to ~1% of its largest |logit| (99th percentile 0.8% on a
# digits CNN, max 1.1%); attacks that stop early go on until the margin clears 2^-5 of it (3%).
BF16_TOLERANCE = 2.0**-5


class TorchOracle(Oracle):
    """A PyTorch classifier taking inputs in `bounds` (e.g. [0,1]); `mean`/`std` normalise inside.

    `num_classes` and `input_shape` are read from a probe forward pass when not given.
    `batch_size` splits no-grad evaluations of large inputs (populations, gradient probes); gradient
    calls are never split. By default 256 rows on a CPU, where larger batches fall out of cache (a
    4096-row default made one-pixel and HopSkipJump 2x slower on MNIST), and 4096 on a GPU.
    """

    knowledge = Knowledge.GRADIENT

    def __init__(
        self,
        model: nn.Module,
        *,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
        precision: str = "fp32",
        channels_last: bool = False,
        compile: str | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise invalid("model", model, "a torch.nn.Module", cls=RampartsTypeError)
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise invalid("batch_size", batch_size, "an integer >= 1, or None for the device's default")
        if precision not in PRECISIONS:
            raise unknown("precision", precision, PRECISIONS)
        if not isinstance(channels_last, bool):
            raise invalid("channels_last", channels_last, "True or False", cls=RampartsTypeError)
        if compile is not None and compile not in COMPILE_MODES:
            raise invalid(
                "compile",
                compile,
                f"None or one of {', '.join(repr(m) for m in COMPILE_MODES)}",
                "pass compile='default', or compile='reduce-overhead' for CUDA graphs.",
            )
        if device is None:
            param = next(model.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.precision = precision
        self.channels_last = channels_last
        self.compile = compile
        self.decision_tolerance = BF16_TOLERANCE if precision == "bf16" else 0.0
        self.model = model.to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._forward: Callable[[Tensor], Tensor] = (
            self.model if compile is None else torch.compile(_input_grad_only(self.model), mode=compile)
        )
        self.batch_size = batch_size or (_CPU_BATCH if self.device.type == "cpu" else _GPU_BATCH)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self._mean = self._channel_stat("mean", mean)
        self._std = self._channel_stat("std", std)
        if self._std is not None and bool((self._std <= 0).any()):
            raise invalid("std", std, "positive values")
        self.num_classes = num_classes if num_classes is not None else self._probe_classes()

    def _channel_stat(self, name: str, values: Sequence[float] | None) -> Tensor | None:
        if values is None:
            return None
        t = torch.as_tensor(values, dtype=torch.float32, device=self.device)
        if t.dim() != 1:
            raise invalid(name, values, "one value per input channel")
        return t.view(1, -1, 1, 1)

    def _probe_classes(self) -> int:
        if self.input_shape is None:
            raise invalid(
                "num_classes",
                None,
                "an integer, or input_shape so that it can be probed",
                "pass num_classes=10.",
            )
        with self.evaluating(), torch.no_grad():
            out = self.model(self._normalise(torch.zeros(1, *self.input_shape, device=self.device)))
        return int(out.shape[-1])

    def _normalise(self, x: Tensor) -> Tensor:
        if self._mean is not None:
            x = x - self._mean
        if self._std is not None:
            x = x / self._std
        return x

    def _autocast(self) -> AbstractContextManager[Any]:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def logits(self, x: Tensor) -> Tensor:
        x = self._normalise(x)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.compile == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
            x = _OwnGradient.apply(x)
        with self._autocast():
            out = self._forward(x)
        if self.compile == "reduce-overhead":
            out = out.clone()
        return out.float() if self.precision == "bf16" else out

    def summary(self) -> dict[str, object]:
        """The wrapper's settings, JSON-ready (device, batch size, precision, memory format, compilation)."""
        return {
            "device": str(self.device),
            "batch_size": self.batch_size,
            "precision": self.precision,
            "channels_last": self.channels_last,
            "compile": self.compile,
            "decision_tolerance": self.decision_tolerance,
        }

    @torch.no_grad()
    def log_probs(self, x: Tensor) -> Tensor:
        chunks = [self.logits(part).log_softmax(dim=1) for part in x.split(self.batch_size)]
        return torch.cat(chunks) if len(chunks) > 1 else chunks[0]

    @torch.no_grad()
    def labels(self, x: Tensor) -> Tensor:
        chunks = [self.logits(part).argmax(dim=1) for part in x.split(self.batch_size)]
        return torch.cat(chunks) if len(chunks) > 1 else chunks[0]

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)


def _input_grad_only(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """The model's forward with its parameters detached, for compilation: eager autograd computes only
    the gradients asked for, but a compiled backward is planned from what requires grad, and would also
    compute every weight gradient that the attacks never read."""

    def forward(x: Tensor) -> Tensor:
        params = {name: p.detach() for name, p in model.named_parameters()}
        return cast(Tensor, torch.func.functional_call(model, params, (x,)))

    return forward


class _OwnGradient(torch.autograd.Function):
    """Identity whose backward copies the gradient: a CUDA graph's outputs are reused by its next replay."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.clone()
