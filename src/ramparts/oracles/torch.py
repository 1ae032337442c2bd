"""Any `torch.nn.Module` as an oracle, with the input normalisation inside the wrapper."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ramparts.errors import RampartsTypeError, invalid
from ramparts.oracles.base import Knowledge, Oracle

_CPU_BATCH = 256
_GPU_BATCH = 4096


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
    ) -> None:
        if not isinstance(model, nn.Module):
            raise invalid("model", model, "a torch.nn.Module", cls=RampartsTypeError)
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise invalid("batch_size", batch_size, "an integer >= 1, or None for the device's default")
        if device is None:
            param = next(model.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.model = model.to(self.device)
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

    def logits(self, x: Tensor) -> Tensor:
        return self.model(self._normalise(x))

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
