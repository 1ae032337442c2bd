"""The model-theft contract: an attacker with one query budget rebuilds a model through its API.

Like the evasion attacks, a theft declares the knowledge it needs (`label` or `score`) and gets a view of
exactly that; `__call__` is defined once here: it validates, builds the view, runs the subclass's `_run`,
and measures the stolen model itself (accuracy, fidelity to the oracle on held-out data), so a faulty
subclass cannot report a false fidelity.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast, final

import torch
from torch import Tensor, nn

from ramparts.data import Dataset
from ramparts.errors import RampartsTypeError, invalid
from ramparts.oracles import Oracle, as_oracle
from ramparts.oracles.base import Knowledge
from ramparts.params import HasParams
from ramparts.registry import Registry
from ramparts.results import TheftResult
from ramparts.targets import LabelBox, ScoreBox, view_for

THEFTS: Registry[type[TheftAttack]] = Registry("theft")
register = THEFTS.register

Predictor = Callable[[Tensor], Tensor]


@dataclass
class TheftContext:
    """What a theft's `_run` works with.

    `box` is the view of the declared knowledge over the whole attack: every row sent is one counted
    query (use `ask_labels` / `ask_log_probs`, which charge the single attacker). `seed_x` is the
    attacker's own data (unlabelled); `record(queries, predictor)` adds a point to the fidelity curve.
    `run_dir`, when given, is where a resumable theft keeps its state between rounds. A theft plans
    within `remaining()` queries and sets `budget_exhausted` when the budget cut it short; the view's
    `QueryBudgetExceeded` is the last line of defence, not the way to stop.
    """

    box: LabelBox
    seed_x: Tensor
    num_classes: int
    generator: torch.Generator
    device: torch.device
    run_dir: Path | None
    evaluate: Callable[[Predictor], float]
    curve: list[tuple[int, float]] = field(default_factory=list)
    budget_exhausted: bool = False

    @property
    def queries(self) -> int:
        return int(self.box.queries.sum())

    def _rows(self, x: Tensor) -> Tensor:
        return torch.zeros(len(x), dtype=torch.int64, device=x.device)

    def ask_labels(self, x: Tensor) -> Tensor:
        """Oracle labels of `x`; each row is one query. Answers outside the declared classes are refused."""
        labels = self.box.labels(x, self._rows(x))
        if labels.shape != (len(x),) or bool(((labels < 0) | (labels >= self.num_classes)).any()):
            raise _wrong_answer(
                f"labels of shape {tuple(labels.shape)}", f"{len(x)} labels in [0, {self.num_classes})"
            )
        return labels

    def ask_log_probs(self, x: Tensor) -> Tensor:
        """Oracle log-probabilities of `x` (score thefts only); each row is one query."""
        lp = cast(ScoreBox, self.box).log_probs(x, self._rows(x))
        if lp.shape != (len(x), self.num_classes):
            raise _wrong_answer(f"scores of shape {tuple(lp.shape)}", f"shape ({len(x)}, {self.num_classes})")
        return lp

    def restore_queries(self, queries: int) -> None:
        """Resume: count the queries an interrupted run of this theft already spent (no oracle call)."""
        self.box.restore(torch.tensor([queries]))

    def remaining(self) -> int | None:
        left = self.box.remaining()
        return None if left is None else int(left[0])

    def record(self, predictor: Predictor) -> float:
        """Measure the current substitute's fidelity and add (queries, fidelity) to the curve."""
        fid = self.evaluate(predictor)
        self.curve.append((self.queries, fid))
        return fid


class TheftAttack(HasParams):
    """Base of every model-extraction attack. Subclasses set `knowledge` and implement `_run`,
    which returns a predictor (the stolen model: inputs -> logits or log-probabilities) and the
    module behind it when there is one."""

    name: ClassVar[str]
    knowledge: ClassVar[Knowledge] = Knowledge.LABEL

    @final
    def __call__(
        self,
        target: Any,
        seed_data: Dataset | Tensor,
        eval_data: Dataset,
        *,
        max_queries: int | None = None,
        seed: int = 0,
        run_dir: str | Path | None = None,
    ) -> TheftResult:
        """Steal `target` starting from `seed_data` (the attacker's unlabelled inputs); measure the
        substitute on `eval_data` (held-out, labelled): accuracy, and fidelity = agreement with the oracle."""
        self.validate_params()
        seed_x = seed_data.x if isinstance(seed_data, Dataset) else seed_data
        if not isinstance(seed_x, Tensor) or seed_x.dtype != torch.float32:
            raise invalid(
                "seed_data", type(seed_x).__name__, "a Dataset or a float32 tensor", cls=RampartsTypeError
            )
        if len(seed_x) == 0:
            raise invalid("seed_data", "an empty set", "at least one input", "give the attacker some inputs.")
        if not isinstance(eval_data, Dataset):
            raise invalid("eval_data", type(eval_data).__name__, "a ramparts Dataset", cls=RampartsTypeError)
        oracle = as_oracle(target, tuple(seed_x.shape[1:]))
        if (
            max_queries is not None
            and isinstance(max_queries, int)
            and 0 < max_queries < self.min_queries(seed_x)
        ):
            raise invalid(
                "max_queries",
                max_queries,
                f"at least {self.min_queries(seed_x)} for {self.name!r} with this seed set",
                "raise the budget or use fewer seed inputs.",
            )
        box = view_for(oracle, self.knowledge, 1, max_queries)
        gen = torch.Generator(device=oracle.device).manual_seed(seed)
        x_eval = eval_data.x.to(oracle.device)
        with oracle.evaluating():
            oracle_eval = oracle.labels(x_eval)
            _check_classes(oracle, oracle_eval)

            def evaluate(predict: Predictor) -> float:
                return float((_predict_labels(predict, x_eval) == oracle_eval).float().mean())

            ctx = TheftContext(
                box,
                seed_x.to(oracle.device),
                oracle.num_classes,
                gen,
                oracle.device,
                Path(run_dir) if run_dir is not None else None,
                evaluate,
            )
            t0 = time.perf_counter()
            predictor, module = self._run(ctx)
            elapsed = time.perf_counter() - t0
            pred = _predict_labels(predictor, x_eval)
        return TheftResult(
            attack=self.name,
            config=self.get_params(),
            seed=seed,
            substitute=module,
            queries=ctx.queries,
            accuracy=float((pred == eval_data.y.to(pred.device)).float().mean()),
            fidelity=float((pred == oracle_eval).float().mean()),
            oracle_accuracy=float((oracle_eval == eval_data.y.to(oracle_eval.device)).float().mean()),
            curve=list(ctx.curve),
            elapsed_s=elapsed,
            budget_exhausted=ctx.budget_exhausted,
        )

    def min_queries(self, seed_x: Tensor) -> int:
        """The smallest budget this theft can work with (e.g. one label per seed input)."""
        return 1

    @abstractmethod
    def _run(self, ctx: TheftContext) -> tuple[Predictor, nn.Module | None]:
        """Steal; return the predictor and the module behind it (None for e.g. solved equations)."""


@torch.no_grad()
def _predict_labels(predict: Predictor, x: Tensor, batch: int = 1024) -> Tensor:
    return torch.cat([predict(part).argmax(dim=1) for part in x.split(batch)])


def _wrong_answer(given: str, expected: str) -> Exception:
    return invalid(
        "target",
        given,
        f"{expected}, the number of classes the oracle declares",
        "check the oracle's num_classes (or its output layer).",
    )


def _check_classes(oracle: Oracle, labels: Tensor) -> None:
    if bool(((labels < 0) | (labels >= oracle.num_classes)).any()):
        raise invalid(
            "target",
            f"labels up to {int(labels.max())}",
            f"labels in [0, {oracle.num_classes}) as the oracle declares",
            "check the oracle's num_classes.",
        )
