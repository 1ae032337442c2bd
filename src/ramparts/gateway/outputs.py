"""Output modes per key: `full`, or one of `ramparts.defenses.hardening`'s specs (labels, topk:K, round:D,
noise:SIGMA[,SEED], reverse_sigmoid:BETA,GAMMA).

The hardenings are `Oracle` wrappers; here they wrap `BatchAnswers`, an oracle that answers with the
probabilities the model already computed for the request, so the model runs once per request whatever the
mode. One hardening object is kept per key, so a noisy key draws fresh noise on every request (its
generator restarts from its seed when the server restarts).
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from ramparts.defenses.hardening import harden
from ramparts.errors import invalid
from ramparts.oracles.base import Knowledge, Oracle, log_probabilities

_TINY = torch.finfo(torch.float32).tiny  # the floor of log-probabilities: a zero probability


class BatchAnswers(Oracle):
    """An oracle that answers the batch it was last `set` to (any `x` of the same length)."""

    knowledge = Knowledge.SCORE

    def __init__(self, num_classes: int, input_shape: tuple[int, ...]) -> None:
        self.num_classes = num_classes
        self.input_shape = input_shape
        self.device = torch.device("cpu")
        self._probs = torch.zeros(0, num_classes)

    def set(self, probs: Tensor) -> None:
        self._probs = probs

    def log_probs(self, x: Tensor) -> Tensor:
        if len(x) != len(self._probs):
            raise invalid("x", len(x), f"{len(self._probs)} rows (the batch the answers belong to)")
        return log_probabilities(self._probs)

    def labels(self, x: Tensor) -> Tensor:
        return self.log_probs(x).argmax(dim=1)


class OutputModes:
    """Applies each key's output mode to the model's probabilities; one hardening (and lock) per key and spec."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...]) -> None:
        self.num_classes = num_classes
        self.input_shape = input_shape
        self._modes: dict[tuple[int, str], tuple[BatchAnswers, Oracle]] = {}
        self._lock = threading.Lock()

    def check(self, spec: str) -> None:
        """Raise a `RampartsError` if `spec` is not a mode this model can serve."""
        if spec != "full":
            harden(BatchAnswers(self.num_classes, self.input_shape), spec)

    def apply(self, key_id: int, spec: str, probs: Tensor) -> Tensor | None:
        """The probabilities a key with mode `spec` gets (None for `labels`); labels are always the model's."""
        if spec == "full":
            return probs
        if spec == "labels":
            return None
        with self._lock:
            if (key_id, spec) not in self._modes:
                answers = BatchAnswers(self.num_classes, self.input_shape)
                self._modes[(key_id, spec)] = (answers, harden(answers, spec))
            answers, hardened = self._modes[(key_id, spec)]
            answers.set(probs)
            dummy = torch.empty(len(probs), 0)
            probs = hardened.log_probs(dummy).exp()
        return torch.where(probs <= 2 * _TINY, torch.zeros_like(probs), probs)


__all__ = ["BatchAnswers", "OutputModes"]
