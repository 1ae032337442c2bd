"""Access levels over a model: `WhiteBox` > `ScoreBox` > `LabelBox`.

An attack declares the knowledge it needs and is handed exactly that view. A view counts, per sample,
every query (forward evaluation) and every backward pass, and raises `QueryBudgetExceeded` before a
query that would take any sample past its budget. The views hold the model only inside a closure and
expose no attribute that reaches it: a label-only attack cannot read scores or gradients by accident.
Outputs are detached: no autograd graph leads back into the model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ramparts.errors import AccessError, QueryBudgetExceeded, invalid
from ramparts.oracles.base import Knowledge, Oracle

LossFn = Callable[[Tensor], Tensor]


class LabelBox:
    """Label-only access: `labels(x, idx)` returns predicted classes and nothing else."""

    __slots__ = (
        "_ask_labels",
        "_backwards",
        "_forwards",
        "_whole_backwards",
        "_whole_calls",
        "budget",
        "num_classes",
        "tolerance",
    )

    def __init__(self, oracle: Oracle, n: int, budget: int | None = None) -> None:
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
            raise invalid(
                "max_queries", budget, "an integer >= 1 or None", "give at least one query per sample."
            )
        self.budget = budget
        self.num_classes = oracle.num_classes
        # Reduced-precision oracles (TorchOracle in bf16) blur margins near 0 by this share of |logits|.
        self.tolerance = float(oracle.decision_tolerance)
        # Calls on the whole batch are counted in Python (no kernel per step); sub-batches per sample.
        self._whole_calls = 0
        self._whole_backwards = 0
        self._forwards = torch.zeros(n, dtype=torch.int64, device=oracle.device)
        self._backwards = torch.zeros(n, dtype=torch.int64, device=oracle.device)
        self._ask_labels = _closure(oracle.labels)

    @property
    def forwards(self) -> Tensor:
        """Per-sample number of forward evaluations so far."""
        return self._forwards + self._whole_calls

    @property
    def backwards(self) -> Tensor:
        """Per-sample number of backward passes so far."""
        return self._backwards + self._whole_backwards

    @property
    def queries(self) -> Tensor:
        """Per-sample number of queries so far (every forward evaluation counts one)."""
        return self.forwards

    def restore(self, queries: Tensor) -> None:
        """Count per-sample queries that an interrupted run of the same attack already spent (resume)."""
        self._forwards += queries.to(self._forwards)

    def remaining(self, idx: Tensor | None = None) -> Tensor | None:
        """Queries left per sample (None without a budget)."""
        if self.budget is None:
            return None
        used = self.forwards if idx is None else self.forwards[idx]
        return self.budget - used

    def _charge(
        self, x: Tensor, idx: Tensor | None, backward: bool = False, active: Tensor | None = None
    ) -> None:
        n = len(self._forwards)
        if idx is None and len(x) != n:
            raise invalid("idx", None, f"sample indices for a sub-batch of {len(x)} out of {n}")
        if idx is not None and len(idx) != len(x):
            raise invalid("idx", len(idx), f"one index per row of x ({len(x)})")
        if active is not None:
            self._charge_active(idx, backward, active)
            return
        if idx is None:
            if self.budget is not None and bool((self.forwards + 1 > self.budget).any()):
                raise QueryBudgetExceeded(f"query budget of {self.budget} per sample reached")
            self._whole_calls += 1
            self._whole_backwards += int(backward)
            return
        if self.budget is not None:
            need = torch.bincount(idx, minlength=n)
            if bool((self.forwards + need > self.budget).any()):
                raise QueryBudgetExceeded(f"query budget of {self.budget} per sample reached")
        ones = torch.ones_like(idx)
        self._forwards.index_add_(0, idx, ones)
        if backward:
            self._backwards.index_add_(0, idx, ones)

    def _charge_active(self, idx: Tensor | None, backward: bool, active: Tensor) -> None:
        """Charge only the rows where `active` is True: the others (finished samples kept in a fixed-size
        batch, padding) are computed but are not queries of the attack. No host sync without a budget."""
        if active.shape != (len(self._forwards) if idx is None else len(idx),) or active.dtype != torch.bool:
            raise invalid("active", tuple(active.shape), "one boolean per row of x")
        need = active.long()
        if idx is not None:
            need = torch.zeros_like(self._forwards).index_add_(0, idx, need)
        if self.budget is not None and bool((self.forwards + need > self.budget).any()):
            raise QueryBudgetExceeded(f"query budget of {self.budget} per sample reached")
        self._forwards += need
        if backward:
            self._backwards += need

    def labels(self, x: Tensor, idx: Tensor | None = None) -> Tensor:
        """Predicted classes of `x`; `idx` names the batch samples the rows belong to (repeats allowed)."""
        self._charge(x, idx)
        return self._ask_labels(x.detach())


class ScoreBox(LabelBox):
    """Score access: class log-probabilities (no gradients), plus labels."""

    __slots__ = ("_ask_log_probs",)

    def __init__(self, oracle: Oracle, n: int, budget: int | None = None) -> None:
        super().__init__(oracle, n, budget)
        self._ask_log_probs = _closure(oracle.log_probs)

    def log_probs(self, x: Tensor, idx: Tensor | None = None) -> Tensor:
        self._charge(x, idx)
        return self._ask_log_probs(x.detach()).detach()

    def scores(self, x: Tensor, idx: Tensor | None = None) -> Tensor:
        """Class probabilities."""
        return self.log_probs(x, idx).exp()


class WhiteBox(ScoreBox):
    """Full access: logits and gradients of a per-sample loss of the logits."""

    __slots__ = ("_ask_logits",)

    def __init__(self, oracle: Oracle, n: int, budget: int | None = None) -> None:
        super().__init__(oracle, n, budget)
        self._ask_logits = _closure(oracle.logits)

    def logits(self, x: Tensor, idx: Tensor | None = None, active: Tensor | None = None) -> Tensor:
        """Logits at `x`; `active` (one bool per row) charges only those rows (see `value_and_grad`)."""
        self._charge(x, idx, active=active)
        with torch.no_grad():
            return self._ask_logits(x.detach())

    def value_and_grad(
        self, x: Tensor, loss_fn: LossFn, idx: Tensor | None = None, active: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Logits at `x` and the gradient of `loss_fn(logits).sum()` w.r.t. `x` (one forward + one backward).

        `active`: one bool per row; only those rows are charged. Fixed-shape loops (GPU active sets) keep
        finished samples and padding in the batch: their rows are computed but are not the attack's queries.
        """
        self._charge(x, idx, backward=True, active=active)
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self._ask_logits(x)
            (grad,) = torch.autograd.grad(loss_fn(logits).sum(), x)
        return logits.detach(), grad


View = LabelBox

_VIEWS: dict[Knowledge, type[LabelBox]] = {
    Knowledge.LABEL: LabelBox,
    Knowledge.SCORE: ScoreBox,
    Knowledge.GRADIENT: WhiteBox,
}


def view_for(oracle: Oracle, knowledge: Knowledge, n: int, budget: int | None = None) -> LabelBox:
    """The view of exactly `knowledge` over `oracle`, for a batch of `n` samples."""
    if oracle.knowledge < knowledge:
        raise AccessError(
            f"target: the attack needs {knowledge.name.lower()} access but the target offers only "
            f"{oracle.knowledge.name.lower()}. Fix: choose an attack that needs at most "
            f"{oracle.knowledge.name.lower()} access (see `ramparts attack --help`)."
        )
    return _VIEWS[knowledge](oracle, n, budget)


def _closure(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Wrap a bound method so the view keeps no attribute pointing at the oracle."""

    def call(x: Tensor) -> Tensor:
        return fn(x)

    return call
