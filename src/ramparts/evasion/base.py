"""The evasion attack contract: one public `__call__`, defined here once, around each attack's `_run`.

Following Foolbox 3 and scikit-learn: `__init__` only stores keyword hyperparameters; `__call__`
validates everything, hands the attack a view of exactly the knowledge it declared, runs it, projects
the output back into the threat model and recomputes success itself, so a faulty attack cannot report
a false success.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, final

import torch
from torch import Tensor

from ramparts.criteria import Criterion, resolve_targets
from ramparts.errors import QueryBudgetExceeded, RampartsTypeError, invalid
from ramparts.oracles import Oracle, as_oracle
from ramparts.oracles.base import Knowledge
from ramparts.params import HasParams
from ramparts.registry import Registry
from ramparts.results import EvasionResult
from ramparts.targets import LabelBox, view_for
from ramparts.threat import GOALS, NORMS, ThreatModel

log = logging.getLogger(__name__)

ATTACKS: Registry[type[EvasionAttack]] = Registry("attack")
register = ATTACKS.register
# Inputs may leave the bounds by this much (float round-off of upstream preprocessing).
_BOUNDS_TOL = 1e-6


class Tracker:
    """Per-sample best adversarial so far, by signed margin (see `Criterion.margin`) or by distance.

    `mode="margin"` keeps the lowest margin (fixed-budget attacks); `mode="distance"` keeps, among
    successful candidates, the one closest to the original (minimum-norm attacks such as C&W).
    """

    def __init__(self, x: Tensor, margin: Tensor, threat: ThreatModel, mode: str = "margin") -> None:
        self.x = x.clone()
        self.margin = margin.clone()
        self.threat = threat
        self.mode = mode
        self.distance = torch.zeros_like(margin)
        self._x0 = x
        self.listener: Callable[[], None] | None = None

    @property
    def success(self) -> Tensor:
        return self.margin < 0

    def offer(self, idx: Tensor | None, x_cand: Tensor, margin: Tensor) -> Tensor:
        """Keep the candidates that beat the current best of their sample; returns which did.

        `idx` names the batch samples of the rows; None means the whole batch in order (no gather).
        """
        old = self.margin if idx is None else self.margin[idx]
        if self.mode == "margin":
            better = margin < old
            dist = None
        else:
            x0 = self._x0 if idx is None else self._x0[idx]
            dist = self.threat.distance(x_cand, x0)
            old_dist = self.distance if idx is None else self.distance[idx]
            within = dist <= self.threat.eps_value
            # An adversarial point outside the ball is not a success: score it by how far outside it is.
            margin = torch.where(within, margin, margin.clamp_min(0) + (dist - self.threat.eps_value))
            won, was_won = margin < 0, old < 0
            better = (won & (~was_won | (dist < old_dist))) | (~won & ~was_won & (margin < old))
        mask = better.view((-1,) + (1,) * (x_cand.dim() - 1))
        if idx is None:
            self.x = torch.where(mask, x_cand, self.x)
            self.margin = torch.where(better, margin, old)
            if dist is not None:
                self.distance = torch.where(better, dist, self.distance)
        else:
            self.x[idx] = torch.where(mask, x_cand, self.x[idx])
            self.margin[idx] = torch.where(better, margin, old)
            if dist is not None:
                self.distance[idx] = torch.where(better, dist, self.distance[idx])
        if self.listener is not None:
            self.listener()
        return better

    def pending(self) -> Tensor:
        """Indices of the samples that have not yet reached the goal."""
        return (~self.success).nonzero()[:, 0]


@dataclass(frozen=True)
class AttackProgress:
    """A snapshot for progress displays: samples that reached the goal and queries spent so far."""

    attack: str
    n: int
    succeeded: int
    queries_total: int
    queries_max: int
    elapsed_s: float


class _Reporter:
    """Calls a progress callback after tracker updates, at most every `every_s` seconds."""

    def __init__(
        self, name: str, tracker: Tracker, box: LabelBox, callback: Callable[[AttackProgress], None]
    ) -> None:
        self.name, self.tracker, self.box, self.callback = name, tracker, box, callback
        self.t0 = self.last = time.perf_counter()
        self.every_s = 0.1

    def __call__(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        queries = self.box.queries
        self.callback(
            AttackProgress(
                self.name,
                len(queries),
                int(self.tracker.success.sum()),
                int(queries.sum()),
                int(queries.max()),
                now - self.t0,
            )
        )


@dataclass
class AttackContext:
    """Everything an attack's `_run` works with. `box` is the view of the declared knowledge."""

    box: LabelBox
    x: Tensor
    criterion: Criterion
    threat: ThreatModel
    tracker: Tracker
    generator: torch.Generator
    early_stop: bool
    budget_exhausted: bool = False

    def start_indices(self) -> Tensor:
        """The samples to attack: all, or with early stopping only those not already won."""
        if self.early_stop:
            return self.tracker.pending()
        return torch.arange(len(self.x), device=self.x.device)

    def affordable(self, idx: Tensor, cost: int = 1, wanted: Tensor | None = None) -> Tensor:
        """Which of the samples `idx` can still pay `cost` queries each under the view's budget.

        Query-based attacks drop the others from their active set (keeping their best so far) instead
        of letting one exhausted sample stop the whole batch; the result then reports `budget_exhausted`
        if any sample that still `wanted` to go on (default: all of `idx`) was cut short.
        """
        left = self.box.remaining(idx)
        if left is None:
            return torch.ones(len(idx), dtype=torch.bool, device=idx.device)
        can = left >= cost
        cut = ~can if wanted is None else wanted & ~can
        if bool(cut.any()):
            self.budget_exhausted = True
        return can


class EvasionAttack(HasParams):
    """Base of every evasion attack. Subclasses set the class attributes and implement `_run`."""

    name: ClassVar[str]
    knowledge: ClassVar[Knowledge] = Knowledge.GRADIENT
    norms: ClassVar[Sequence[str]] = NORMS
    goals: ClassVar[Sequence[str]] = GOALS
    target_rules: ClassVar[Sequence[str] | None] = None
    tracking: ClassVar[str] = "margin"
    minimizes_norm: ClassVar[bool] = False

    @final
    def __call__(
        self,
        target: Any,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        *,
        targets: Tensor | None = None,
        seed: int = 0,
        max_queries: int | None = None,
        early_stop: bool = True,
        progress: Callable[[AttackProgress], None] | None = None,
        batch_size: int | None = None,
    ) -> EvasionResult:
        """Attack the batch `(x, y)` of `target` within `threat`; see the class docstring for the method.

        `targets`: per-sample classes when `threat.target == "given"`. `max_queries`: per-sample budget
        of queries (forward evaluations). `early_stop`: samples stop costing compute once they reach the
        goal (on by default, as an evaluation wants). `progress`: called with an `AttackProgress` at most
        ten times a second while the attack runs, and once at the end. `batch_size`: attack at most this
        many samples at a time (`auto_batch_size` gives a CPU-friendly size); the chunks share `seed`.
        """
        if batch_size is not None:
            if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
                raise invalid("batch_size", batch_size, "an integer >= 1 or None (the whole batch at once)")
            if isinstance(x, Tensor) and len(x) > batch_size:
                return self._in_chunks(
                    target, x, y, threat, targets, seed, max_queries, early_stop, progress, batch_size
                )
        self.validate_params()
        if not isinstance(threat, ThreatModel):
            raise invalid("threat", threat, "a ramparts.ThreatModel", cls=RampartsTypeError)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise invalid("seed", seed, "an integer", cls=RampartsTypeError)
        self._check_threat(threat)
        oracle = as_oracle(target, tuple(x.shape[1:]) if isinstance(x, Tensor) else None)
        x, y = validate_batch(x, y, threat, oracle)
        if oracle.knowledge < Knowledge.SCORE and threat.goal == "confidence":
            raise invalid("threat.goal", "confidence", "untargeted or targeted for a label-only target")
        generator = torch.Generator(device=oracle.device).manual_seed(seed)
        with oracle.evaluating():
            clean_lp, clean_pred = _privileged(oracle, x)
            tgt = resolve_targets(threat, y, targets, clean_lp, oracle.num_classes, generator)
            criterion = Criterion.build(threat, y, tgt, clean_lp)
            if self.knowledge < Knowledge.SCORE and criterion.needs_scores:
                raise invalid(
                    "threat",
                    threat.describe(),
                    f"a goal decidable from labels for the label-only attack {self.name!r}",
                    "drop min_target_confidence / the confidence goal, or use a score-based attack.",
                )
            start_margin = _margin(criterion, clean_lp, clean_pred)
            tracker = Tracker(x, start_margin, threat, self.tracking)
            box = view_for(oracle, self.knowledge, len(x), max_queries)
            ctx = AttackContext(box, x, criterion, threat, tracker, generator, early_stop)
            reporter = None if progress is None else _Reporter(self.name, tracker, box, progress)
            tracker.listener = reporter
            exhausted = False
            _synchronize(oracle.device)
            t0 = time.perf_counter()
            try:
                self._run(ctx)
            except QueryBudgetExceeded as err:
                log.info("%s stopped: %s; keeping the best found so far", self.name, err)
                exhausted = True
            _synchronize(oracle.device)
            elapsed = time.perf_counter() - t0
            exhausted = exhausted or ctx.budget_exhausted
            if reporter is not None:
                reporter(force=True)
            x_adv = threat.project(tracker.x, x)
            adv_lp, adv_pred = _privileged_changed(oracle, x_adv, x, clean_lp, clean_pred)
        success = _margin(criterion, adv_lp, adv_pred) < 0
        return EvasionResult(
            attack=self.name,
            config=self.get_params(),
            threat=threat.summary(),
            seed=seed,
            x_adv=x_adv,
            labels=y,
            targets=tgt,
            success=success,
            distance=threat.distance(x_adv, x),
            clean_pred=clean_pred,
            adv_pred=adv_pred,
            clean_conf=None if clean_lp is None else clean_lp.amax(dim=1).exp(),
            adv_conf=None if adv_lp is None else adv_lp.amax(dim=1).exp(),
            queries=box.queries.clone(),
            backwards=box.backwards.clone(),
            elapsed_s=elapsed,
            budget_exhausted=exhausted,
        )

    def _in_chunks(
        self,
        target: Any,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        targets: Tensor | None,
        seed: int,
        max_queries: int | None,
        early_stop: bool,
        progress: Callable[[AttackProgress], None] | None,
        batch_size: int,
    ) -> EvasionResult:
        """`__call__` on consecutive chunks of `batch_size` samples, merged into one result."""
        if not isinstance(y, Tensor) or len(y) != len(x):
            raise invalid("y", getattr(y, "shape", type(y).__name__), f"a tensor of {len(x)} labels")
        parts: list[EvasionResult] = []
        for start in range(0, len(x), batch_size):
            rows = slice(start, start + batch_size)
            report = None if progress is None else _offset_progress(progress, parts, len(x))
            parts.append(
                self(
                    target,
                    x[rows],
                    y[rows],
                    threat,
                    targets=None if targets is None else targets[rows],
                    seed=seed,
                    max_queries=max_queries,
                    early_stop=early_stop,
                    progress=report,
                )
            )
        return EvasionResult.concat(parts)

    def _check_threat(self, threat: ThreatModel) -> None:
        """Reject a norm, goal or target rule the attack's paper does not cover."""
        if threat.norm not in self.norms:
            raise invalid("threat.norm", threat.norm, f"one of {', '.join(self.norms)} for {self.name!r}")
        if threat.goal not in self.goals:
            raise invalid("threat.goal", threat.goal, f"one of {', '.join(self.goals)} for {self.name!r}")
        if self.target_rules is not None and threat.target not in self.target_rules:
            raise invalid(
                "threat.target",
                threat.target,
                f"one of {', '.join(self.target_rules)} for {self.name!r}",
                f"use ThreatModel(goal='targeted', target={self.target_rules[0]!r}).",
            )

    @abstractmethod
    def _run(self, ctx: AttackContext) -> None:
        """Search for adversarial examples, offering candidates to `ctx.tracker`."""


def _offset_progress(
    progress: Callable[[AttackProgress], None], done: list[EvasionResult], n: int
) -> Callable[[AttackProgress], None]:
    """A chunk's progress callback that reports the whole batch: the finished chunks plus this one."""
    succeeded = sum(int(p.success.sum()) for p in done)
    queries = sum(int(p.queries.sum()) for p in done)
    most = max((int(p.queries.max()) for p in done), default=0)
    elapsed = sum(p.elapsed_s for p in done)

    def report(p: AttackProgress) -> None:
        progress(
            AttackProgress(
                p.attack,
                n,
                succeeded + p.succeeded,
                queries + p.queries_total,
                max(most, p.queries_max),
                elapsed + p.elapsed_s,
            )
        )

    return report


# Input elements per batch on a CPU: larger batches spill the caches and run slower per sample
# (MNIST small_cnn forward+backward: 0.58 s per 1,024 images at 128 a batch, 1.31 s at 1,024).
_CPU_BATCH_ELEMENTS = 2**17


def auto_batch_size(device: torch.device | str, sample_shape: Sequence[int]) -> int | None:
    """A batch size for attacks on `device`: None (the whole batch) on an accelerator; on a CPU,
    as many samples as fit in `_CPU_BATCH_ELEMENTS` input elements."""
    if torch.device(device).type != "cpu":
        return None
    numel = 1
    for d in sample_shape:
        numel *= int(d)
    return max(1, _CPU_BATCH_ELEMENTS // max(1, numel))


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock timings measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _privileged(oracle: Oracle, x: Tensor) -> tuple[Tensor | None, Tensor]:
    """The evaluator's own look at the model (not counted against the attack's budget)."""
    if oracle.knowledge >= Knowledge.SCORE:
        lp = oracle.log_probs(x)
        return lp, lp.argmax(dim=1)
    return None, oracle.labels(x)


def _privileged_changed(
    oracle: Oracle, x_adv: Tensor, x: Tensor, clean_lp: Tensor | None, clean_pred: Tensor
) -> tuple[Tensor | None, Tensor]:
    """`_privileged` at `x_adv`, evaluating only the rows the attack changed: the others are the clean
    inputs, already evaluated (on an adversarially trained model most rows of a PGD run are not attacked)."""
    changed = (x_adv != x).flatten(1).any(dim=1)
    if bool(changed.all()):
        return _privileged(oracle, x_adv)
    adv_lp = None if clean_lp is None else clean_lp.clone()
    adv_pred = clean_pred.clone()
    rows = changed.nonzero()[:, 0]
    if len(rows):
        lp, pred = _privileged(oracle, x_adv[rows])
        if adv_lp is not None and lp is not None:
            adv_lp[rows] = lp
        adv_pred[rows] = pred
    return adv_lp, adv_pred


def _margin(criterion: Criterion, log_probs: Tensor | None, pred: Tensor) -> Tensor:
    if log_probs is not None:
        return criterion.margin(log_probs)
    return criterion.label_margin(pred)


def validate_batch(x: Any, y: Any, threat: ThreatModel, oracle: Oracle) -> tuple[Tensor, Tensor]:
    """Check inputs and labels at the boundary; returns them on the model's device."""
    if not isinstance(x, Tensor):
        raise invalid(
            "x", type(x).__name__, "a torch.Tensor", "convert with torch.as_tensor(x).", cls=RampartsTypeError
        )
    if not isinstance(y, Tensor):
        raise invalid(
            "y",
            type(y).__name__,
            "a torch.Tensor of class indices",
            "use torch.as_tensor(y).",
            cls=RampartsTypeError,
        )
    if x.dtype != torch.float32:
        raise invalid(
            "x", f"dtype {x.dtype}", "dtype torch.float32", "convert with x.float().", cls=RampartsTypeError
        )
    if x.dim() < 2 or len(x) == 0:
        raise invalid("x", f"shape {tuple(x.shape)}", "a non-empty batch (N, ...) such as (N, C, H, W)")
    if oracle.input_shape is not None and tuple(x.shape[1:]) != tuple(oracle.input_shape):
        raise invalid("x", f"shape {tuple(x.shape)}", f"(N, {', '.join(map(str, oracle.input_shape))})")
    if not bool(torch.isfinite(x).all()):
        raise invalid("x", "NaN or Inf values", "finite values", "clean the inputs before attacking.")
    lo, hi = threat.bounds
    x_min, x_max = float(x.min()), float(x.max())
    if x_min < lo - _BOUNDS_TOL or x_max > hi + _BOUNDS_TOL:
        raise invalid(
            "x",
            f"values in [{x_min:g}, {x_max:g}]",
            f"values inside threat.bounds {threat.bounds}",
            "scale inputs to the bounds (normalisation belongs inside the model wrapper: TorchOracle(mean=, std=)).",
        )
    _check_budget_fits(threat, x)
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise invalid(
            "y",
            f"dtype {y.dtype}",
            "an integer tensor of class indices",
            "use y.long().",
            cls=RampartsTypeError,
        )
    if y.shape != (len(x),):
        raise invalid("y", f"shape {tuple(y.shape)}", f"shape ({len(x)},): one label per input")
    if bool(((y < 0) | (y >= oracle.num_classes)).any()):
        raise invalid(
            "y", f"labels in [{int(y.min())}, {int(y.max())}]", f"labels in [0, {oracle.num_classes})"
        )
    return x.to(oracle.device), y.to(oracle.device, torch.int64)


def _check_budget_fits(threat: ThreatModel, x: Tensor) -> None:
    """An l2 or l0 budget larger than the whole input domain is a mistake in units, not a threat."""
    lo, hi = threat.bounds
    if threat.norm == "l2":
        diameter = (hi - lo) * x[0].numel() ** 0.5
        if threat.eps_value > diameter:
            raise invalid(
                "threat.eps",
                threat.eps_value,
                f"at most the l2 diameter of the input domain ({diameter:.4g})",
                "check the units: eps for l2 is a Euclidean length over the whole input.",
            )
    elif threat.norm == "l0":
        pixels = x[0, 0].numel() if x.dim() == 4 else x[0].numel()
        if threat.eps_value > pixels:
            raise invalid("threat.eps", threat.eps_value, f"at most the {pixels} pixels of an input")
