"""Equation-solving extraction of logistic and softmax regression (Tramèr et al., USENIX Security 2016).

A softmax regression answers p_k(x) = exp(w_k . x + b_k) / sum_j exp(w_j . x + b_j). The log-ratio of two
of its probabilities is linear in the input,

    log(p_k(x) / p_0(x)) = (w_k - w_0) . x + (b_k - b_0),

so every score query gives K - 1 linear equations, one per class k > 0, in the d + 1 unknowns of that
class. With d + 1 random points the K - 1 systems share one (d + 1) x (d + 1) matrix [x 1]: **d + 1 queries
in total** recover the whole model, whatever K (each query returns all K probabilities). Binary logistic
regression is the case K = 2: d + 1 queries give w and b of sigmoid(w . x + b) (scikit-learn's `coef_`).

The model is identifiable only up to the softmax's shift invariance (adding one vector to every w_k changes
nothing), so the recovered parameters are relative to class 0: row 0 is zero, row k is w_k - w_0.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from ramparts.errors import invalid
from ramparts.oracles.base import Knowledge
from ramparts.params import Interval
from ramparts.theft.base import Predictor, TheftAttack, TheftContext, register

__all__ = ["EquationSolving", "RecoveredSoftmax"]

# log-probabilities at or below this were floored by the oracle (float32's smallest normal is -87.3):
# the equation they give is wrong, so they are refused rather than solved.
_FLOORED = math.log(torch.finfo(torch.float32).tiny) + 1.0


class RecoveredSoftmax(nn.Module):
    """The extracted model: logits ``x.flatten(1) @ weight.T + bias`` in float64.

    ``weight[k] = w_k - w_0`` and ``bias[k] = b_k - b_0`` (row 0 is zero): the parameters relative to
    class 0, which is all a score oracle can reveal.
    """

    weight: Tensor
    bias: Tensor

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1).to(self.weight.dtype) @ self.weight.T + self.bias


@register("equations")
class EquationSolving(TheftAttack):
    """Exact extraction of a (multinomial) logistic regression from its probabilities.

    ``n_queries``: the random points queried (uniform in [0, 1]^d); None means d + 1, the minimum, which
    suffices for every class at once (see the module docstring). More points are solved by least squares.
    """

    knowledge: ClassVar[Knowledge] = Knowledge.SCORE
    constraints: ClassVar = {"n_queries": Interval(int, low=2, none_ok=True)}

    def __init__(self, *, n_queries: int | None = None) -> None:
        self.n_queries = n_queries

    def min_queries(self, seed_x: Tensor) -> int:
        return math.prod(seed_x.shape[1:]) + 1

    def _run(self, ctx: TheftContext) -> tuple[Predictor, nn.Module | None]:
        shape = tuple(ctx.seed_x.shape[1:])
        d = math.prod(shape)
        n = d + 1 if self.n_queries is None else self.n_queries
        if n < d + 1:
            raise invalid(
                "EquationSolving.n_queries",
                n,
                f"at least d + 1 = {d + 1} for inputs of {d} features",
                "leave n_queries=None for the minimum of d + 1.",
            )
        left = ctx.remaining()
        if left is not None and left < n:
            raise invalid("max_queries", left, f"at least {n} queries for {n} points", "raise the budget.")
        x = torch.rand((n, *shape), generator=ctx.generator, device=ctx.device)
        log_p = ctx.ask_log_probs(x).double()
        if bool((log_p <= _FLOORED).any()):
            raise invalid(
                "target",
                "probabilities that underflow float32 at random points",
                "a softmax regression whose probabilities stay above 1e-37 on [0, 1]^d",
                "the oracle is not a logistic regression, or too confident for exact extraction.",
            )
        ratios = log_p[:, 1:] - log_p[:, :1]  # (n, K - 1): log(p_k / p_0)
        a = torch.cat([x.flatten(1).double(), torch.ones(n, 1, dtype=torch.float64, device=x.device)], 1)
        a_cpu, r_cpu = a.cpu(), ratios.cpu()
        if n == d + 1:
            theta = torch.linalg.solve(a_cpu, r_cpu)  # (d + 1, K - 1)
        else:
            theta = torch.linalg.lstsq(a_cpu, r_cpu, driver="gelsd").solution
        theta = theta.to(ctx.device)
        weight = torch.cat([torch.zeros(1, d, dtype=torch.float64, device=ctx.device), theta[:d].T], 0)
        bias = torch.cat([torch.zeros(1, dtype=torch.float64, device=ctx.device), theta[d]], 0)
        model = RecoveredSoftmax(weight, bias)
        ctx.record(model)
        return model, model
