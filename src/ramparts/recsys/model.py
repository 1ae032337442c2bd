"""Biased matrix factorisation (Koren, Bell & Volinsky 2009, "Matrix factorization techniques for
recommender systems"): r_ui ~ mu + b_u + b_i + <p_u, q_i>, trained on the observed ratings with L2.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ramparts.errors import check_int, invalid, unknown
from ramparts.recsys.data import Ratings, as_index_tensor

__all__ = ["MatrixFactorization", "fit", "rmse"]

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")


class MatrixFactorization(nn.Module):
    """A fitted biased MF model; it remembers what each user rated so `recommend` can skip those items."""

    mean: Tensor

    def __init__(
        self, n_users: int, n_items: int, factors: int, mean: float, scale: tuple[float, float]
    ) -> None:
        super().__init__()
        self.n_users, self.n_items, self.scale = n_users, n_items, scale
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.user_bias = nn.Parameter(torch.zeros(n_users))
        self.item_bias = nn.Parameter(torch.zeros(n_items))
        self.user_factors = nn.Parameter(torch.zeros(n_users, factors))
        self.item_factors = nn.Parameter(torch.zeros(n_items, factors))
        self.rated: Tensor = torch.zeros(n_users, n_items, dtype=torch.bool)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        """Unclipped scores for pairs (users[j], items[j]) (what training fits)."""
        dot = (self.user_factors[users] * self.item_factors[items]).sum(-1)
        return self.mean + self.user_bias[users] + self.item_bias[items] + dot

    @torch.no_grad()
    def predict(self, users: int | Sequence[int] | Tensor, items: int | Sequence[int] | Tensor) -> Tensor:
        """Predicted ratings for pairs (users[j], items[j]), clipped to the rating scale."""
        u = as_index_tensor(users, "users", self.n_users)
        i = as_index_tensor(items, "items", self.n_items)
        if u.shape != i.shape:
            raise invalid(
                "users/items", (tuple(u.shape), tuple(i.shape)), "the same number of users and items"
            )
        return self(u, i).clamp(*self.scale)

    @torch.no_grad()
    def scores(self, users: int | Sequence[int] | Tensor) -> Tensor:
        """The full predicted rows: a len(users) x n_items matrix of clipped predictions."""
        u = as_index_tensor(users, "users", self.n_users)
        full = self.user_factors[u] @ self.item_factors.T
        return (full + self.mean + self.user_bias[u, None] + self.item_bias[None, :]).clamp(*self.scale)

    @torch.no_grad()
    def recommend(
        self, users: int | Sequence[int] | Tensor, k: int = 10, *, exclude_rated: bool = True
    ) -> Tensor:
        """Top-k item indices per user (len(users) x k, best first); items the user rated are skipped.

        Ties (e.g. several items clipped at the top of the scale) are broken by the unclipped score.
        """
        check_int("k", k, 1)
        if k > self.n_items:
            raise invalid("k", k, f"at most n_items = {self.n_items}")
        u = as_index_tensor(users, "users", self.n_users)
        full = self.user_factors[u] @ self.item_factors.T + self.item_bias[None, :]
        if exclude_rated:
            full = full.masked_fill(self.rated[u], float("-inf"))
        return full.topk(k, dim=1).indices


def fit(
    ratings: Ratings,
    *,
    factors: int = 20,
    epochs: int = 100,
    lr: float = 0.02,
    l2: float = 0.1,
    batch_size: int | None = None,
    optimizer: str = "adam",
    seed: int = 0,
) -> MatrixFactorization:
    """Fit biased MF by minimising mean squared error + `l2` * (|p_u|^2 + |q_i|^2 + b_u^2 + b_i^2) per rating.

    `batch_size=None` is full-batch (fast and deterministic on small data); otherwise shuffled mini-batches.
    Factors start at N(0, 0.1^2), biases at 0, the global mean is fixed to the training mean.
    """
    check_int("factors", factors, 1)
    check_int("epochs", epochs, 1)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    if not lr > 0:
        raise invalid("lr", lr, "a learning rate > 0")
    if not l2 >= 0:
        raise invalid("l2", l2, "a regularisation weight >= 0")
    if optimizer not in OPTIMIZERS:
        raise unknown("optimizer", optimizer, OPTIMIZERS)
    if len(ratings) == 0:
        raise invalid("ratings", ratings.name, "at least one rating")
    gen = torch.Generator().manual_seed(seed)
    r = ratings.ratings.float()
    model = MatrixFactorization(ratings.n_users, ratings.n_items, factors, float(r.mean()), ratings.scale)
    with torch.no_grad():
        model.user_factors.copy_(0.1 * torch.randn(ratings.n_users, factors, generator=gen))
        model.item_factors.copy_(0.1 * torch.randn(ratings.n_items, factors, generator=gen))
    model.rated[ratings.users, ratings.items] = True
    params = list(model.parameters())
    opt: torch.optim.Optimizer = (
        torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr)
    )
    n = len(ratings)
    size = n if batch_size is None else min(batch_size, n)
    for epoch in range(epochs):
        order = torch.arange(n) if size == n else torch.randperm(n, generator=gen)
        for start in range(0, n, size):
            idx = order[start : start + size]
            u, i = ratings.users[idx], ratings.items[idx]
            err = model(u, i) - r[idx]
            reg = (
                model.user_factors[u].square().sum(-1)
                + model.item_factors[i].square().sum(-1)
                + model.user_bias[u].square()
                + model.item_bias[i].square()
            )
            loss = err.square().mean() + l2 * reg.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch % 50 == 0:
            log.debug("mf epoch %d loss %.4f", epoch, float(loss.detach()))
    return model.eval()


@torch.no_grad()
def rmse(model: MatrixFactorization, ratings: Ratings) -> float:
    """Root mean squared error of the clipped predictions on `ratings` (e.g. the test split)."""
    if len(ratings) == 0:
        raise invalid("ratings", ratings.name, "at least one rating")
    pred = model(ratings.users, ratings.items).clamp(*model.scale)
    return float((pred - ratings.ratings.float()).square().mean().sqrt())
