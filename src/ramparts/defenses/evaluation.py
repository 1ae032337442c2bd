"""What output hardening costs the thief and what it costs the honest user.

`evaluate_theft_defences` runs every theft against the undefended oracle and against each hardened
oracle (`harden(victim, spec)`, a fresh wrapper per run so a noisy hardening's stream does not depend on
the order of the runs), with the same attacker data, budget and seed. For every (theft, hardening) pair
it records:

- `status`: `ok`; `blocked` when the hardened oracle cannot give the knowledge the theft declares (the
  view raises `AccessError` before any query, e.g. a score theft against `labels`) — a finding, not an
  error; `failed` when the theft worked undefended but the defended oracle made it stop with a ramparts
  error (e.g. equation solving refusing rounded probabilities that underflow). A theft that fails
  *undefended* is a configuration error and propagates.
- the stolen model's fidelity and accuracy (measured by the theft base class on `eval_data`; every
  hardening built by `harden` answers the victim's own labels, so fidelity to the hardened oracle is
  fidelity to the victim) and the queries used;
- `fidelity_drop`: the undefended run's fidelity at the same number of queries (its curve, last point at
  or below the defended run's queries) minus the defended fidelity — what the defence costs the attacker.

What the defence costs the honest user is measured once per hardening on `eval_data`: the change of the
top-1 accuracy through the hardened oracle's labels, and, where both oracles serve scores, the mean
absolute change of the probabilities (over samples and classes) and the change of the log-loss
(mean negative log-probability of the true class).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ramparts.data import Dataset
from ramparts.defenses.hardening import harden
from ramparts.errors import AccessError, RampartsError, RampartsTypeError, invalid
from ramparts.oracles.base import Knowledge, Oracle
from ramparts.results import TheftResult
from ramparts.theft import THEFTS
from ramparts.theft.base import TheftAttack

__all__ = ["HonestCost", "TheftDefenceReport", "TheftDefenceRow", "evaluate_theft_defences"]

UNDEFENDED = "none"
_BATCH = 1024


@dataclass(frozen=True)
class TheftDefenceRow:
    """One theft against one oracle (`hardening` is `"none"` for the undefended one)."""

    theft: str
    params: dict[str, Any]
    hardening: str
    status: str  # "ok" | "blocked" | "failed"
    reason: str | None = None
    queries: int | None = None
    fidelity: float | None = None
    accuracy: float | None = None
    undefended_fidelity: float | None = None  # the undefended run's fidelity at `queries`
    fidelity_drop: float | None = None  # undefended_fidelity - fidelity: the attacker's cost
    budget_exhausted: bool | None = None
    result: TheftResult | None = field(default=None, repr=False, compare=False)

    def summary(self) -> dict[str, Any]:
        return {
            "theft": self.theft,
            "params": _jsonable(self.params),
            "hardening": self.hardening,
            "status": self.status,
            "reason": self.reason,
            "queries": self.queries,
            "fidelity": self.fidelity,
            "accuracy": self.accuracy,
            "undefended_fidelity": self.undefended_fidelity,
            "fidelity_drop": self.fidelity_drop,
            "budget_exhausted": self.budget_exhausted,
        }


@dataclass(frozen=True)
class HonestCost:
    """What one hardening costs an honest user on the evaluation data.

    `accuracy_change`: top-1 accuracy through the hardened oracle minus the victim's; the score fields are
    None where the hardened oracle serves labels only (or the victim has no scores).
    """

    hardening: str
    knowledge: str
    accuracy: float
    accuracy_change: float
    mean_abs_prob_change: float | None
    log_loss: float | None
    log_loss_change: float | None

    def summary(self) -> dict[str, Any]:
        return {
            "hardening": self.hardening,
            "knowledge": self.knowledge,
            "accuracy": self.accuracy,
            "accuracy_change": self.accuracy_change,
            "mean_abs_prob_change": self.mean_abs_prob_change,
            "log_loss": self.log_loss,
            "log_loss_change": self.log_loss_change,
        }


@dataclass(frozen=True)
class TheftDefenceReport:
    """Every (theft, hardening) pair in `rows` (undefended first per theft) and each hardening's
    honest-user cost in `costs`."""

    rows: tuple[TheftDefenceRow, ...]
    costs: tuple[HonestCost, ...]
    victim_accuracy: float
    victim_log_loss: float | None
    max_queries: int | None
    seed: int

    def row(self, theft: str, hardening: str = UNDEFENDED) -> TheftDefenceRow:
        """The row of `theft` (its registered name) against `hardening` (a spec, or "none")."""
        for r in self.rows:
            if r.theft == theft and r.hardening == hardening:
                return r
        raise invalid(
            "theft/hardening",
            (theft, hardening),
            f"one of {sorted({(r.theft, r.hardening) for r in self.rows})}",
        )

    def cost(self, hardening: str) -> HonestCost:
        for c in self.costs:
            if c.hardening == hardening:
                return c
        raise invalid("hardening", hardening, f"one of {[c.hardening for c in self.costs]}")

    def summary(self) -> dict[str, Any]:
        return {
            "victim_accuracy": self.victim_accuracy,
            "victim_log_loss": self.victim_log_loss,
            "max_queries": self.max_queries,
            "seed": self.seed,
            "rows": [r.summary() for r in self.rows],
            "honest_user": [c.summary() for c in self.costs],
        }


def evaluate_theft_defences(
    victim: Oracle,
    thefts: Sequence[tuple[str, Mapping[str, Any]]],
    hardenings: Sequence[str],
    attacker_data: Dataset | Tensor,
    eval_data: Dataset,
    *,
    max_queries: int | None = None,
    seed: int = 0,
) -> TheftDefenceReport:
    """Run each theft (registered name, keyword parameters) against `victim` and against each hardening
    spec ("labels", "topk:3", "round:2", "noise:0.05", "reverse_sigmoid:0.5,0.1"); see the module docstring.

    `attacker_data` is the thieves' unlabelled data (seeds / transfer set); `eval_data` (labelled, held
    out) measures fidelity, accuracy and the honest user's cost. Specs and theft names are checked before
    any run.
    """
    if not isinstance(victim, Oracle):
        raise invalid(
            "victim",
            type(victim).__name__,
            "a ramparts Oracle",
            "wrap the model with ramparts.oracles.as_oracle.",
        )
    if not isinstance(eval_data, Dataset):
        raise invalid("eval_data", type(eval_data).__name__, "a ramparts Dataset", cls=RampartsTypeError)
    attacks = _build_thefts(thefts)
    specs = _check_specs(victim, hardenings)

    with torch.no_grad(), victim.evaluating():
        victim_probs = _scores(victim, eval_data.x)
        victim_labels = _labels(victim, eval_data.x)
    y = eval_data.y.to(victim_labels.device)
    victim_acc = float((victim_labels == y).float().mean())
    victim_ll = _log_loss(victim_probs, y) if victim_probs is not None else None

    costs = tuple(
        _honest_cost(victim, spec, eval_data, victim_acc, victim_probs, victim_ll) for spec in specs
    )

    rows: list[TheftDefenceRow] = []
    for (name, params), attack in zip(thefts, attacks, strict=True):
        kwargs = dict(params)
        base = attack(victim, attacker_data, eval_data, max_queries=max_queries, seed=seed)
        rows.append(_ok_row(name, kwargs, UNDEFENDED, base, base))
        for spec in specs:
            oracle = harden(victim, spec)
            fresh = THEFTS.get(name)(**kwargs)
            try:
                result = fresh(oracle, attacker_data, eval_data, max_queries=max_queries, seed=seed)
            except AccessError:
                rows.append(
                    TheftDefenceRow(
                        name,
                        kwargs,
                        spec,
                        "blocked",
                        f"blocked: needs {fresh.knowledge.name.lower()} access, "
                        f"the hardened oracle gives {oracle.knowledge.name.lower()} only",
                    )
                )
                continue
            except RampartsError as exc:
                rows.append(TheftDefenceRow(name, kwargs, spec, "failed", f"failed: {exc}"))
                continue
            rows.append(_ok_row(name, kwargs, spec, result, base))
    return TheftDefenceReport(tuple(rows), costs, victim_acc, victim_ll, max_queries, seed)


def _build_thefts(thefts: Sequence[tuple[str, Mapping[str, Any]]]) -> list[TheftAttack]:
    if isinstance(thefts, str | bytes) or not isinstance(thefts, Sequence) or not thefts:
        raise invalid(
            "thefts", thefts, "a non-empty sequence of (name, params) pairs, e.g. [('jacobian', {})]"
        )
    out = []
    for item in thefts:
        if not isinstance(item, tuple | list) or len(item) != 2 or not isinstance(item[1], Mapping):
            raise invalid("thefts", item, "a (name, params dict) pair", f"registered names: {THEFTS.names()}")
        attack = THEFTS.get(item[0])(**dict(item[1]))
        attack.validate_params()
        out.append(attack)
    return out


def _check_specs(victim: Oracle, hardenings: Sequence[str]) -> list[str]:
    if isinstance(hardenings, str) or not isinstance(hardenings, Sequence) or not hardenings:
        raise invalid("hardenings", hardenings, "a non-empty sequence of specs, e.g. ['labels', 'round:2']")
    specs = [s.strip() if isinstance(s, str) else s for s in hardenings]
    for spec in specs:
        harden(victim, spec)  # names the spec and its form on errors, before any theft runs
    if len(set(specs)) != len(specs):
        raise invalid("hardenings", list(hardenings), "distinct specs")
    return specs


def _ok_row(
    name: str, params: dict[str, Any], spec: str, r: TheftResult, base: TheftResult
) -> TheftDefenceRow:
    ref = _fidelity_at(base, r.queries)
    return TheftDefenceRow(
        name,
        params,
        spec,
        "ok",
        None,
        r.queries,
        r.fidelity,
        r.accuracy,
        ref,
        None if ref is None else ref - r.fidelity,
        r.budget_exhausted,
        r,
    )


def _fidelity_at(base: TheftResult, queries: int) -> float | None:
    """The undefended fidelity at `queries`: the last curve point (or the final result) at or below it."""
    points = [*base.curve, (base.queries, base.fidelity)]
    below = [(q, f) for q, f in points if q <= queries]
    if not below:
        return None
    best = max(q for q, _ in below)
    return [f for q, f in below if q == best][-1]


def _labels(oracle: Oracle, x: Tensor) -> Tensor:
    return torch.cat([oracle.labels(part.to(oracle.device)) for part in x.split(_BATCH)])


def _scores(oracle: Oracle, x: Tensor) -> Tensor | None:
    if oracle.knowledge < Knowledge.SCORE:
        return None
    return torch.cat([oracle.log_probs(part.to(oracle.device)).exp() for part in x.split(_BATCH)])


def _log_loss(probs: Tensor, y: Tensor) -> float:
    tiny = torch.finfo(probs.dtype).tiny
    p = probs.gather(1, y.to(probs.device).view(-1, 1)).squeeze(1)
    return float(-(p.clamp_min(tiny).log()).mean())


def _honest_cost(
    victim: Oracle,
    spec: str,
    eval_data: Dataset,
    victim_acc: float,
    victim_probs: Tensor | None,
    victim_ll: float | None,
) -> HonestCost:
    oracle = harden(victim, spec)
    with torch.no_grad(), oracle.evaluating():
        labels = _labels(oracle, eval_data.x)
        probs = _scores(oracle, eval_data.x) if victim_probs is not None else None
    y = eval_data.y.to(labels.device)
    acc = float((labels == y).float().mean())
    change = ll = ll_change = None
    if probs is not None and victim_probs is not None and victim_ll is not None:
        change = float((probs - victim_probs).abs().mean())
        ll = _log_loss(probs, y)
        ll_change = ll - victim_ll
    return HonestCost(spec, oracle.knowledge.name.lower(), acc, acc - victim_acc, change, ll, ll_change)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Tensor):
        return value.tolist()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)
