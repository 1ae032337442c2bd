"""Explicit-feedback rating data: the `Ratings` container, a low-rank synthetic generator, MovieLens files.

Ratings are COO triples (user, item, rating) held as tensors, so that attacks append fake users with a
concatenation and models read whole batches without a Python loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ramparts.errors import RampartsTypeError, check_int, invalid

__all__ = ["Ratings", "load_movielens", "synthetic_ratings", "train_test_split"]


@dataclass(frozen=True)
class Ratings:
    """A set of explicit ratings: `ratings[j]` is what user `users[j]` gave item `items[j]`.

    `users`/`items` are int64 indices in `[0, n_users)` / `[0, n_items)`, `ratings` float32 inside
    `scale = (min, max)`. `user_ids`/`item_ids` keep the original ids of loaded files (None otherwise).
    """

    users: Tensor
    items: Tensor
    ratings: Tensor
    n_users: int
    n_items: int
    scale: tuple[float, float] = (1.0, 5.0)
    name: str = "ratings"
    user_ids: tuple[str, ...] | None = None
    item_ids: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for field_name in ("users", "items", "ratings"):
            value = getattr(self, field_name)
            if not isinstance(value, Tensor) or value.dim() != 1:
                raise invalid(field_name, value, "a 1-D tensor", cls=RampartsTypeError)
        if self.users.dtype != torch.int64 or self.items.dtype != torch.int64:
            raise invalid(
                "users/items", (self.users.dtype, self.items.dtype), "int64 tensors", cls=RampartsTypeError
            )
        if not self.ratings.is_floating_point():
            raise invalid("ratings", self.ratings.dtype, "a float tensor", cls=RampartsTypeError)
        if not self.users.shape == self.items.shape == self.ratings.shape:
            shapes = (tuple(self.users.shape), tuple(self.items.shape), tuple(self.ratings.shape))
            raise invalid("users/items/ratings", shapes, "three tensors of the same length")
        check_int("n_users", self.n_users, 1)
        check_int("n_items", self.n_items, 1)
        low, high = self.scale
        if not low < high:
            raise invalid("scale", self.scale, "(min, max) with min < max")
        if len(self):
            if int(self.users.min()) < 0 or int(self.users.max()) >= self.n_users:
                raise invalid("users", "out-of-range indices", f"indices in [0, {self.n_users})")
            if int(self.items.min()) < 0 or int(self.items.max()) >= self.n_items:
                raise invalid("items", "out-of-range indices", f"indices in [0, {self.n_items})")
            if float(self.ratings.min()) < low or float(self.ratings.max()) > high:
                given = (float(self.ratings.min()), float(self.ratings.max()))
                raise invalid(
                    "ratings", given, f"values inside scale {self.scale}", "clip them or widen `scale`."
                )

    def __len__(self) -> int:
        return int(self.ratings.numel())

    @property
    def density(self) -> float:
        """Share of the user x item matrix that is rated."""
        return len(self) / (self.n_users * self.n_items)

    def dense(self) -> tuple[Tensor, Tensor]:
        """(values, observed): the n_users x n_items rating matrix (0 where unrated) and its bool mask."""
        values = torch.zeros(self.n_users, self.n_items, dtype=torch.float32)
        observed = torch.zeros(self.n_users, self.n_items, dtype=torch.bool)
        values[self.users, self.items] = self.ratings.float()
        observed[self.users, self.items] = True
        return values, observed

    def user_counts(self) -> Tensor:
        """Number of ratings per user (int64, length n_users)."""
        return torch.bincount(self.users, minlength=self.n_users)

    def item_counts(self) -> Tensor:
        """Number of ratings per item (int64, length n_items): its popularity."""
        return torch.bincount(self.items, minlength=self.n_items)

    def item_stats(self) -> tuple[Tensor, Tensor]:
        """(mean, std) rating per item; unrated items get the global mean and std (the attacker's fallback)."""
        counts = self.item_counts().float()
        r = self.ratings.float()
        sums = torch.zeros(self.n_items).index_add_(0, self.items, r)
        squares = torch.zeros(self.n_items).index_add_(0, self.items, r * r)
        mean = torch.where(counts > 0, sums / counts.clamp_min(1), r.mean())
        var = torch.where(counts > 1, squares / counts.clamp_min(1) - mean * mean, r.var())
        return mean, var.clamp_min(0).sqrt()

    def select(self, keep: Tensor) -> Ratings:
        """The ratings where the bool mask `keep` (one entry per rating) is True; same users and items."""
        return Ratings(
            self.users[keep],
            self.items[keep],
            self.ratings[keep],
            self.n_users,
            self.n_items,
            self.scale,
            self.name,
            self.user_ids,
            self.item_ids,
        )


def synthetic_ratings(
    *,
    n_users: int = 943,
    n_items: int = 1682,
    rank: int = 10,
    density: float = 0.063,
    scale: tuple[float, float] = (1.0, 5.0),
    popularity: float = 1.0,
    noise: float = 0.5,
    seed: int = 0,
) -> Ratings:
    """Low-rank ratings with Zipf-like item popularity: the embedded default (ML-100K sized by default).

    Rating = mean + user bias + item bias + <user factor, item factor> + Gaussian noise, rounded to the
    integer grid of `scale`. Which items a user rates is drawn with probability proportional to
    `(popularity rank)^-popularity`, so a few items are rated by many users (bandwagon material) and most
    by few; popular items also get a higher bias, as in MovieLens. Users rate `density * n_items` items on
    average (log-normal spread, at least 5). Same seed -> same ratings.
    """
    check_int("n_users", n_users, 2)
    check_int("n_items", n_items, 2)
    check_int("rank", rank, 1)
    if not 0.0 < density <= 1.0:
        raise invalid("density", density, "a float in (0, 1]", "e.g. density=0.063 (MovieLens 100K).")
    if popularity < 0:
        raise invalid("popularity", popularity, "a Zipf exponent >= 0 (0 = uniform popularity)")
    if noise < 0:
        raise invalid("noise", noise, "a standard deviation >= 0")
    low, high = float(scale[0]), float(scale[1])
    if not high - low >= 1:
        raise invalid("scale", scale, "(min, max) with max - min >= 1 (an integer rating grid)")
    gen = torch.Generator().manual_seed(seed)
    # Which items: Zipf weights over a random popularity order, sampled without replacement per user
    # with the Gumbel top-k trick (one sort for all users).
    order = torch.randperm(n_items, generator=gen)
    pop_rank = torch.empty(n_items).index_put_((order,), torch.arange(1, n_items + 1, dtype=torch.float32))
    log_w = -popularity * pop_rank.log()
    mean_count = density * n_items
    counts = (mean_count * torch.exp(0.6 * torch.randn(n_users, generator=gen) - 0.18)).round()
    counts = counts.clamp(min(5, n_items), n_items).long()
    gumbel = -torch.log(-torch.log(torch.rand(n_users, n_items, generator=gen).clamp(1e-12, 1 - 1e-12)))
    keys_order = (log_w + gumbel).argsort(dim=1, descending=True)
    chosen = torch.arange(n_items).expand(n_users, n_items) < counts[:, None]
    users = torch.arange(n_users)[:, None].expand(n_users, n_items)[chosen]
    items = keys_order[chosen]
    # What rating: a low-rank model.
    centre = low + 0.625 * (high - low)
    spread = (high - low) / 4
    user_f = torch.randn(n_users, rank, generator=gen) / math.sqrt(rank)
    item_f = torch.randn(n_items, rank, generator=gen) / math.sqrt(rank)
    user_b = 0.5 * torch.randn(n_users, generator=gen)
    item_b = 0.5 * torch.randn(n_items, generator=gen) - 0.3 * (pop_rank / n_items - 0.5)
    signal = user_b[users] + item_b[items] + (user_f[users] * item_f[items]).sum(1)
    raw = centre + spread * (signal + noise * torch.randn(users.numel(), generator=gen))
    ratings = raw.round().clamp(low, high).float()
    return Ratings(users, items, ratings, n_users, n_items, (low, high), f"synthetic(seed={seed})")


def train_test_split(
    ratings: Ratings, *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[Ratings, Ratings]:
    """Per-user holdout: each user keeps `floor(test_fraction * n_u)` random ratings for test, at least one
    in train. Same users and items in both halves (indices are not changed). Same seed -> same split.
    """
    if not 0.0 < test_fraction < 1.0:
        raise invalid("test_fraction", test_fraction, "a float in (0, 1)", "e.g. test_fraction=0.2.")
    gen = torch.Generator().manual_seed(seed)
    n = len(ratings)
    shuffle = torch.randperm(n, generator=gen)
    by_user = shuffle[torch.argsort(ratings.users[shuffle], stable=True)]
    sorted_users = ratings.users[by_user]
    counts = ratings.user_counts()
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(n) - starts[sorted_users]
    n_test = torch.minimum((test_fraction * counts).floor().long(), (counts - 1).clamp_min(0))
    is_test = torch.zeros(n, dtype=torch.bool)
    is_test[by_user] = position < n_test[sorted_users]
    return ratings.select(~is_test), ratings.select(is_test)


def _parse_line(line: str, fmt: str) -> list[str]:
    if fmt == "dat":
        return line.split("::")
    if fmt == "csv":
        return line.split(",")
    return line.split()


def load_movielens(
    path: str | Path,
    *,
    scale: tuple[float, float] | None = None,
    name: str | None = None,
) -> Ratings:
    """Read MovieLens ratings the user supplies (no download) and re-index users and items from 0.

    Formats, chosen by file name: `u.data` or `*.tsv`/`*.data` (ML-100K: tab-separated
    user item rating timestamp), `ratings.dat` (ML-1M/10M: `user::item::rating::timestamp`) and
    `ratings.csv` (ML-latest: header `userId,movieId,rating,timestamp`). A folder is searched for these
    names. Ids are kept as strings in `user_ids`/`item_ids`, in first-seen order. `scale` defaults to the
    smallest and largest rating in the file. Bad rows and repeated (user, item) pairs are errors naming the
    line number.
    """
    file = Path(path)
    if file.is_dir():
        found = [file / n for n in ("u.data", "ratings.dat", "ratings.csv") if (file / n).is_file()]
        if not found:
            raise invalid(
                "path", str(path), "a MovieLens file or a folder holding u.data, ratings.dat or ratings.csv"
            )
        file = found[0]
    if not file.is_file():
        raise invalid(
            "path", str(path), "an existing MovieLens ratings file", "download it yourself and pass its path."
        )
    fmt = "dat" if file.suffix == ".dat" else "csv" if file.suffix == ".csv" else "tab"
    user_index: dict[str, int] = {}
    item_index: dict[str, int] = {}
    users: list[int] = []
    items: list[int] = []
    values: list[float] = []
    seen: set[tuple[int, int]] = set()
    with file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text or (fmt == "csv" and number == 1 and text.lower().startswith("userid")):
                continue
            fields = _parse_line(text, fmt)
            if len(fields) < 3:
                raise invalid(f"{file.name} line {number}", text, "user, item, rating (and timestamp)")
            try:
                value = float(fields[2])
            except ValueError:
                raise invalid(
                    f"{file.name} line {number}", text, "a numeric rating in the third field"
                ) from None
            if not math.isfinite(value):
                raise invalid(f"{file.name} line {number}", text, "a finite rating")
            u = user_index.setdefault(fields[0].strip(), len(user_index))
            i = item_index.setdefault(fields[1].strip(), len(item_index))
            if (u, i) in seen:
                raise invalid(
                    f"{file.name} line {number}",
                    text,
                    "one rating per (user, item) pair",
                    "deduplicate the file.",
                )
            seen.add((u, i))
            users.append(u)
            items.append(i)
            values.append(value)
    if not values:
        raise invalid("path", str(file), "a file with at least one rating")
    r = torch.tensor(values, dtype=torch.float32)
    bounds = (float(r.min()), float(r.max())) if scale is None else (float(scale[0]), float(scale[1]))
    if bounds[0] == bounds[1]:
        bounds = (bounds[0], bounds[0] + 1.0)
    return Ratings(
        torch.tensor(users, dtype=torch.int64),
        torch.tensor(items, dtype=torch.int64),
        r,
        len(user_index),
        len(item_index),
        bounds,
        name or file.name,
        tuple(user_index),
        tuple(item_index),
    )


def as_index_tensor(values: int | Sequence[int] | Tensor, param: str, size: int) -> Tensor:
    """`values` as a 1-D int64 tensor checked to lie in `[0, size)`; an error naming `param` otherwise."""
    t = torch.as_tensor(values).reshape(-1)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise invalid(param, values, "integer indices", cls=RampartsTypeError)
    t = t.long()
    if t.numel() == 0:
        raise invalid(param, values, "at least one index")
    if int(t.min()) < 0 or int(t.max()) >= size:
        raise invalid(param, values, f"indices in [0, {size})", "pick indices of existing users/items.")
    return t
