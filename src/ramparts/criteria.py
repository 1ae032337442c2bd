"""The adversary's goal for one batch, judged from class log-probabilities (or labels, for label-only access).

One signed margin decides everything: a sample has reached the goal when its margin is negative, and a
lower margin is a stronger adversarial example. Attacks use it to stop early and to keep the per-sample
best; the base class uses the very same function to recompute success, so the two never disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ramparts.errors import invalid
from ramparts.threat import ThreatModel


@dataclass(frozen=True)
class Criterion:
    """Per-sample goal: `labels` (true classes), `targets` (for targeted), and confidence levels.

    `log_max_true` holds, for the confidence goal, the log-probability the true class must fall below
    (a fixed level, or the clean value minus a margin); `log_min_target` the log-probability the target
    class must exceed, if a minimum confidence was asked.
    """

    goal: str
    labels: Tensor
    targets: Tensor | None = None
    log_max_true: Tensor | None = None
    log_min_target: float | None = None

    @classmethod
    def build(
        cls, threat: ThreatModel, labels: Tensor, targets: Tensor | None, clean_log_probs: Tensor | None
    ) -> Criterion:
        """The criterion of `threat` for a batch; `clean_log_probs` is needed for a confidence margin."""
        log_max_true = None
        if threat.goal == "confidence":
            if threat.max_true_confidence is not None:
                log_max_true = labels.new_full(
                    labels.shape, math.log(threat.max_true_confidence), dtype=torch.float32
                )
            else:
                if clean_log_probs is None:
                    raise invalid("goal", "confidence", "scores of the model for a confidence margin")
                clean_true = clean_log_probs.gather(1, labels[:, None])[:, 0].exp()
                margin = float(threat.confidence_margin or 0.0)
                log_max_true = (clean_true - margin).clamp_min(1e-12).log()
        log_min_target = None
        if threat.min_target_confidence is not None:
            log_min_target = math.log(threat.min_target_confidence)
        return cls(threat.goal, labels, targets, log_max_true, log_min_target)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: Tensor) -> Criterion:
        """The criterion of a sub-batch (used when succeeded samples drop out)."""
        return Criterion(
            self.goal,
            self.labels[idx],
            None if self.targets is None else self.targets[idx],
            None if self.log_max_true is None else self.log_max_true[idx],
            self.log_min_target,
        )

    @property
    def needs_scores(self) -> bool:
        """True when labels alone cannot decide the goal."""
        return self.goal == "confidence" or self.log_min_target is not None

    def margin(self, log_probs: Tensor) -> Tensor:
        """Signed margin: < 0 means the goal is reached; lower is a stronger adversarial example."""
        if self.goal == "confidence":
            assert self.log_max_true is not None
            return log_probs.gather(1, self.labels[:, None])[:, 0] - self.log_max_true
        cls = self.labels if self.targets is None else self.targets
        own = log_probs.gather(1, cls[:, None])[:, 0]
        others = log_probs.scatter(1, cls[:, None], float("-inf")).amax(dim=1)
        if self.goal == "untargeted":
            return own - others
        m = others - own
        if self.log_min_target is not None:
            m = torch.maximum(m, self.log_min_target - own)
        return m

    def margin_from_logits(self, logits: Tensor) -> Tensor:
        """`margin` from logits; differences of logits equal those of log-probabilities, so the
        normalisation is skipped where only differences enter (untargeted, plain targeted)."""
        if self.needs_scores:
            return self.margin(logits.log_softmax(dim=1))
        return self.margin(logits)

    def reached(self, log_probs: Tensor) -> Tensor:
        return self.margin(log_probs) < 0

    def reached_labels(self, predicted: Tensor) -> Tensor:
        """Success from labels only (untargeted or targeted without a confidence level)."""
        if self.needs_scores:
            raise invalid(
                "goal", self.goal, "a goal decidable from labels", "use a score or gradient target."
            )
        if self.targets is None:
            return predicted != self.labels
        return predicted == self.targets

    def label_margin(self, predicted: Tensor) -> Tensor:
        """A margin for label-only attacks: -1 where the goal is reached, +1 elsewhere."""
        return 1.0 - 2.0 * self.reached_labels(predicted).float()

    def loss(self, logits: Tensor) -> Tensor:
        """Per-sample cross-entropy objective to *maximise*: away from the true class, or towards the target."""
        if self.targets is None:
            return torch.nn.functional.cross_entropy(logits, self.labels, reduction="none")
        return -torch.nn.functional.cross_entropy(logits, self.targets, reduction="none")


def resolve_targets(
    threat: ThreatModel,
    labels: Tensor,
    given: Tensor | None,
    clean_log_probs: Tensor | None,
    num_classes: int,
    generator: torch.Generator,
) -> Tensor | None:
    """The per-sample target classes that `threat.target` asks for (None unless the goal is targeted)."""
    if threat.goal != "targeted":
        if given is not None:
            raise invalid("targets", "a tensor", "None unless goal='targeted' with target='given'")
        return None
    rule = threat.target
    if rule == "given":
        if given is None:
            raise invalid(
                "targets", None, "a tensor of target classes for target='given'", "pass targets=..."
            )
        if given.shape != labels.shape or given.dtype not in (torch.int64, torch.int32):
            raise invalid("targets", tuple(given.shape), f"an integer tensor of shape {tuple(labels.shape)}")
        given = given.to(labels.device, torch.int64)
        if bool(((given < 0) | (given >= num_classes)).any()):
            raise invalid("targets", "out-of-range classes", f"classes in [0, {num_classes})")
        if bool((given == labels).any()):
            raise invalid("targets", "a target equal to the true label", "targets different from labels y")
        return given
    if given is not None:
        raise invalid(
            "targets", "a tensor", f"None for target={rule!r}", "use target='given' to pass targets."
        )
    if rule == "random":
        shift = torch.randint(1, num_classes, labels.shape, generator=generator, device=labels.device)
        return (labels + shift) % num_classes
    if clean_log_probs is None:
        raise invalid("target", rule, "'random' or 'given' for a label-only target", "or give score access.")
    masked = clean_log_probs.scatter(1, labels[:, None], float("inf" if rule == "least_likely" else "-inf"))
    return masked.argmin(dim=1) if rule == "least_likely" else masked.argmax(dim=1)
