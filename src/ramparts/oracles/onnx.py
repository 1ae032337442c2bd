"""An ONNX classifier (run by onnxruntime) as a score or label oracle."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ramparts.errors import AccessError, invalid, unknown
from ramparts.oracles.base import Knowledge, Oracle, log_probabilities

OutputKind = Literal["logits", "probabilities", "auto"]
OUTPUT_KINDS: tuple[str, ...] = ("logits", "probabilities", "auto")

_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"
_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}
# log(0) would be -inf, and -inf - -inf is NaN in a margin: the smallest normal float32 keeps it finite.


class OnnxOracle(Oracle):
    """An ONNX model file whose first input takes a batch of images and whose first output is (N, K).

    `outputs` says whether the graph ends in logits or in probabilities (a softmax); `"auto"` decides
    from a probe batch (every row non-negative and summing to 1 means probabilities). The input name,
    element type and shape come from the model; `input_shape` and `num_classes` are needed only where
    the model leaves them symbolic. A model with a fixed batch dimension is fed in batches of exactly
    that size (the last one padded). `labels_only=True` hides the scores (knowledge LABEL).
    Inputs are converted to numpy on the CPU (the one conversion a non-torch runtime forces); answers
    come back as float32 tensors on `device`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
        outputs: OutputKind = "logits",
        labels_only: bool = False,
        batch_size: int = 1024,
        providers: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        import onnxruntime as ort

        if outputs not in OUTPUT_KINDS:
            raise unknown("outputs", outputs, OUTPUT_KINDS)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise invalid("batch_size", batch_size, "an integer >= 1")
        self.path = Path(path)
        self.device = torch.device(device)
        self.knowledge = Knowledge.LABEL if labels_only else Knowledge.SCORE
        self.providers = self._providers(ort, providers)
        self._session = self._open(ort)
        inputs = self._session.get_inputs()  # initializers with defaults are not listed: all are required
        if len(inputs) != 1:
            names = [i.name for i in inputs]
            raise invalid("path", str(self.path), f"a model with one input, got inputs {names}")
        spec = inputs[0]
        if spec.type not in _DTYPES:
            raise invalid(
                "path",
                str(self.path),
                f"a model whose input is one of {sorted(_DTYPES)}, got {spec.type}",
                "export the model with a floating-point input.",
            )
        self.input_name: str = spec.name
        self._np_dtype = _DTYPES[spec.type]
        dims = list(spec.shape)
        self._fixed_batch = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else None
        self.batch_size = self._fixed_batch or batch_size
        self.input_shape = self._input_shape(dims[1:], input_shape)
        self.output_name: str = self._session.get_outputs()[0].name
        self.num_classes = self._num_classes(num_classes)
        self._outputs_probabilities: bool | None = {"logits": False, "probabilities": True, "auto": None}[
            outputs
        ]
        if self._outputs_probabilities is None and self.input_shape is not None:
            self._outputs_probabilities = self._detect_probabilities(self._run(self._probe_input(4)))

    # -- construction -----------------------------------------------------------------------------

    def _providers(self, ort: Any, providers: Sequence[str] | None) -> list[str]:
        available = list(ort.get_available_providers())
        if providers is not None:
            chosen = [providers] if isinstance(providers, str) else list(providers)
            for name in chosen:
                if name not in available:
                    raise unknown("providers", name, available)
            return chosen
        if self.device.type == "cpu":
            return [_CPU]
        if self.device.type == "cuda":
            if _CUDA not in available:
                raise invalid(
                    "device",
                    str(self.device),
                    f"a device onnxruntime can use (providers here: {', '.join(available)})",
                    "install onnxruntime-gpu, or pass device='cpu'.",
                )
            return [_CUDA, _CPU]
        raise invalid("device", str(self.device), "'cpu' or 'cuda'")

    def _open(self, ort: Any) -> Any:
        if not self.path.is_file():
            raise invalid("path", str(self.path), "an existing .onnx file", "check the path.")
        options = ort.SessionOptions()
        if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
            # The same reason as OMP_WAIT_POLICY: spinning worker threads starve a shared machine.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.intra_op_num_threads = torch.get_num_threads()
        try:
            return ort.InferenceSession(str(self.path), sess_options=options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own Exception subclasses (InvalidProtobuf, Fail...)
            raise invalid(
                "path",
                str(self.path),
                "an ONNX model file",
                f"export the model with torch.onnx.export (onnxruntime said: {_first_line(exc)})",
            ) from None

    def _input_shape(self, dims: list[Any], given: Sequence[int] | None) -> tuple[int, ...] | None:
        model_shape = tuple(dims) if all(isinstance(d, int) and d > 0 for d in dims) else None
        if given is None:
            return model_shape
        shape = tuple(int(d) for d in given)
        if len(shape) != len(dims) or any(
            isinstance(d, int) and d > 0 and d != s for d, s in zip(dims, shape, strict=False)
        ):
            raise invalid(
                "input_shape",
                shape,
                f"the model's input shape {tuple(dims)} (without the batch dimension)",
                "pass the shape the model was exported with, or leave input_shape out.",
            )
        return shape

    def _num_classes(self, given: int | None) -> int:
        out = self._session.get_outputs()[0].shape
        declared = out[-1] if len(out) == 2 and isinstance(out[-1], int) and out[-1] > 0 else None
        if given is not None:
            if isinstance(given, bool) or not isinstance(given, int) or given < 2:
                raise invalid("num_classes", given, "an integer >= 2")
            if declared is not None and declared != given:
                raise invalid(
                    "num_classes", given, f"the model's {declared} outputs", "leave num_classes out."
                )
            return given
        if declared is not None:
            return int(declared)
        if self.input_shape is None:
            raise invalid(
                "num_classes",
                None,
                "an integer, or input_shape so that it can be probed (the model leaves both symbolic)",
                "pass num_classes=10 or input_shape=(1, 28, 28).",
            )
        return int(self._run(self._probe_input(1)).shape[1])

    def _probe_input(self, n: int) -> Tensor:
        assert self.input_shape is not None  # callers check; not user input
        gen = torch.Generator().manual_seed(0)
        return torch.rand(n, *self.input_shape, generator=gen)

    @staticmethod
    def _detect_probabilities(out: Tensor) -> bool:
        return bool((out >= 0).all()) and bool(torch.allclose(out.sum(1), torch.ones(len(out)), atol=1e-3))

    # -- evaluation -------------------------------------------------------------------------------

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise invalid("x", type(x).__name__, "a floating-point torch.Tensor")
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise invalid(
                "x",
                f"a batch of shape {tuple(x.shape)}",
                f"inputs of shape (N, {', '.join(map(str, self.input_shape))}) for {self.path.name}",
                "pass images of the shape the model was exported with.",
            )

    def _run(self, x: Tensor) -> Tensor:
        """The model's first output for `x` as float32 (N, K) on the CPU, in chunks of `batch_size`."""
        arr = x.detach().to("cpu", torch.float32).numpy().astype(self._np_dtype, copy=False)
        outs = []
        for start in range(0, len(arr), self.batch_size):
            part = arr[start : start + self.batch_size]
            rows = len(part)
            if self._fixed_batch is not None and rows < self._fixed_batch:
                pad = np.zeros((self._fixed_batch - rows, *part.shape[1:]), dtype=part.dtype)
                part = np.concatenate([part, pad])
            try:
                (out,) = self._session.run([self.output_name], {self.input_name: part})
            except Exception as exc:  # onnxruntime's InvalidArgument/Fail are plain Exception subclasses
                raise invalid(
                    "x",
                    f"a batch of shape {tuple(x.shape)}",
                    f"inputs {self.path.name} accepts",
                    f"onnxruntime said: {_first_line(exc)}",
                ) from None
            outs.append(np.asarray(out)[:rows])
        result = torch.from_numpy(np.concatenate(outs) if len(outs) > 1 else outs[0]).float()
        if result.dim() != 2:
            raise invalid(
                "path",
                str(self.path),
                f"a model whose first output is (N, num_classes), got shape {tuple(result.shape)}",
            )
        return result

    def _scores(self, x: Tensor) -> Tensor:
        self._check(x)
        if len(x) == 0:
            return torch.empty(0, self.num_classes)
        out = self._run(x)
        if self._outputs_probabilities is None:  # "auto" without a known input shape: decide on first use
            self._outputs_probabilities = self._detect_probabilities(out)
        return out

    @torch.no_grad()
    def log_probs(self, x: Tensor) -> Tensor:
        if self.knowledge < Knowledge.SCORE:
            raise AccessError(
                "labels_only: this ONNX oracle answers labels only. Fix: create it with labels_only=False."
            )
        out = self._scores(x)
        lp = log_probabilities(out) if self._outputs_probabilities else out.log_softmax(dim=1)
        return lp.to(self.device)

    @torch.no_grad()
    def labels(self, x: Tensor) -> Tensor:
        return self._scores(x).argmax(dim=1).to(self.device)

    def __repr__(self) -> str:
        kind = {None: "auto", True: "probabilities", False: "logits"}[self._outputs_probabilities]
        return (
            f"OnnxOracle({str(self.path)!r}, input_shape={self.input_shape}, num_classes={self.num_classes}, "
            f"outputs={kind!r}, knowledge={self.knowledge.name}, providers={self.providers})"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
