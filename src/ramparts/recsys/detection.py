"""Shilling detection: flag fake user profiles before the recommender is trained on them.

- Profile statistics (Chirita, Nejdl & Zamfir 2005, "Preventing shilling attacks in online recommender
  systems"; Mobasher et al. 2007 / Williams et al. 2007 for the detection attributes): RDMA, WDMA, DegSim
  and length variance per user, used by a small logistic-regression classifier trained on labelled
  attacked data (`ProfileClassifier`), as Mobasher et al. train supervised classifiers on these attributes.
- PCA variable selection (Mehta & Nejdl 2009, "Unsupervised strategies for shilling detection and robust
  collaborative filtering"): unsupervised; fake profiles are highly correlated, so they contribute least to
  the top principal components of the user-as-variable data (`pca_detect`).

Both return a `ramparts.defenses.detection.DetectionResult` over users (higher score = more suspicious).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ramparts.defenses.detection import DetectionResult
from ramparts.errors import RampartsTypeError, check_int, invalid
from ramparts.recsys.data import Ratings

__all__ = [
    "FEATURES",
    "PrecisionRecall",
    "ProfileClassifier",
    "detection_metrics",
    "pca_detect",
    "profile_features",
]

FEATURES = ("rdma", "wdma", "degsim", "length_variance")


def _user_pearson(values: Tensor, observed: Tensor, significance: float = 50.0) -> Tensor:
    """Pearson correlation between users over their co-rated items (0 where undefined, 0 on the diagonal),
    scaled by min(co-rated, significance) / significance (Herlocker et al. 1999's significance weighting),
    so that two users sharing one item do not count as perfectly similar.
    """
    obs = observed.float()
    counts = obs.sum(1).clamp_min(1)
    centred = (values - (values * obs).sum(1, keepdim=True) / counts[:, None]) * obs
    square = centred.square()
    numerator = centred @ centred.T
    denominator = ((square @ obs.T) * (obs @ square.T)).sqrt()
    sim = torch.where(denominator > 0, numerator / denominator.clamp_min(1e-12), torch.zeros(()))
    co_rated = obs @ obs.T
    return (sim * (co_rated / significance).clamp(max=1.0)).fill_diagonal_(0.0)


def profile_features(ratings: Ratings, *, neighbours: int = 25) -> Tensor:
    """The n_users x 4 attributes named in `FEATURES`:

    - RDMA: mean over the user's ratings of |r_ui - mean_i| / n_i (deviation from agreement, weighted by
      the item's rarity); WDMA: the same with n_i^2, stressing rare items (Mobasher et al. 2007);
    - DegSim: mean (significance-weighted) Pearson similarity with the `neighbours` most similar users
      (fakes are alike);
    - length variance: |n_u - mean n| / sum_v (n_v - mean n)^2 (fakes all have the same length).
    """
    check_int("neighbours", neighbours, 1)
    values, observed = ratings.dense()
    item_counts = ratings.item_counts().float().clamp_min(1)
    item_mean, _ = ratings.item_stats()
    deviation = (values - item_mean[None, :]).abs() * observed
    user_counts = ratings.user_counts().float().clamp_min(1)
    rdma = (deviation / item_counts).sum(1) / user_counts
    wdma = (deviation / item_counts.square()).sum(1) / user_counts
    k = min(neighbours, ratings.n_users - 1)
    degsim = (
        _user_pearson(values, observed).topk(k, dim=1).values.mean(1)
        if k > 0
        else torch.zeros(ratings.n_users)
    )
    lengths = ratings.user_counts().float()
    spread = (lengths - lengths.mean()).square().sum().clamp_min(1e-12)
    length_variance = (lengths - lengths.mean()).abs() / spread
    return torch.stack([rdma, wdma, degsim, length_variance], dim=1)


class ProfileClassifier:
    """Logistic regression on z-scored `profile_features` (Mobasher et al. 2007's supervised detection).

    `fit` on attacked ratings whose fake users are known (e.g. attacks you injected yourself on other targets),
    then `detect` new ratings; features are z-scored within each data set, so the classifier transfers
    across data sets of different size.
    """

    def __init__(
        self, *, neighbours: int = 25, l2: float = 1e-3, steps: int = 300, threshold: float = 0.5
    ) -> None:
        self.neighbours = neighbours
        self.l2 = l2
        self.steps = steps
        self.threshold = threshold
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None

    def _features(self, ratings: Ratings) -> Tensor:
        f = profile_features(ratings, neighbours=self.neighbours)
        return (f - f.mean(0)) / f.std(0).clamp_min(1e-12)

    def fit(self, ratings: Ratings | list[Ratings], fake_mask: Tensor | list[Tensor]) -> ProfileClassifier:
        """Learn the weights from one or several labelled data sets (True = fake user); full-batch L-BFGS."""
        sets = ratings if isinstance(ratings, list) else [ratings]
        masks = fake_mask if isinstance(fake_mask, list) else [fake_mask]
        if len(sets) != len(masks):
            raise invalid("fake_mask", len(masks), f"one mask per ratings set ({len(sets)})")
        for r, m in zip(sets, masks, strict=True):
            if not isinstance(m, Tensor) or m.dtype != torch.bool or m.shape != (r.n_users,):
                raise invalid("fake_mask", m, f"a bool tensor of shape ({r.n_users},)", cls=RampartsTypeError)
        check_int("steps", self.steps, 1)
        x = torch.cat([self._features(r) for r in sets])
        y = torch.cat(masks).float()
        if not 0 < float(y.sum()) < y.numel():
            raise invalid("fake_mask", int(y.sum()), "both fake and real users", "inject an attack first.")
        weight = torch.zeros(x.shape[1], requires_grad=True)
        bias = torch.zeros((), requires_grad=True)
        opt = torch.optim.LBFGS([weight, bias], max_iter=self.steps, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad()
            logits = x @ weight + bias
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
            loss = loss + self.l2 * weight.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.weight, self.bias = weight.detach(), bias.detach()
        return self

    @torch.no_grad()
    def detect(self, ratings: Ratings) -> DetectionResult:
        """Probability of being fake per user; flagged where it is >= `threshold`."""
        if self.weight is None or self.bias is None:
            raise invalid(
                "ProfileClassifier", "unfitted", "a fitted classifier", "call .fit(ratings, fake_mask) first."
            )
        scores = torch.sigmoid(self._features(ratings) @ self.weight + self.bias)
        config = {"neighbours": self.neighbours, "l2": self.l2, "threshold": self.threshold}
        extra = {"weights": dict(zip(FEATURES, self.weight.tolist(), strict=True))}
        return DetectionResult("profile_classifier", config, scores >= self.threshold, scores, extra)


@torch.no_grad()
def pca_detect(ratings: Ratings, *, n_flag: int, components: int = 3) -> DetectionResult:
    """PCA-VarSelect (Mehta & Nejdl 2009): flag the `n_flag` users who contribute least to the top
    `components` principal components.

    Each user's ratings are z-scored over the items they rated (unrated = 0, the user's mean) and scaled to
    unit norm, so PCA runs on the users' correlation matrix and long profiles do not dominate; users are the
    variables, so their loadings are the left singular vectors of the users x items matrix. The score
    is minus the sum of squared loadings on the top components (higher = more suspicious). `n_flag` is the
    expected number of attackers (Mehta & Nejdl assume it known or estimated). Bandwagon profiles, which
    share their popular items, form a component of their own and escape it (measured in docs/poisoning.md).
    """
    check_int("n_flag", n_flag, 0)
    check_int("components", components, 1)
    if n_flag > ratings.n_users:
        raise invalid("n_flag", n_flag, f"at most n_users = {ratings.n_users}")
    values, observed = ratings.dense()
    obs = observed.float()
    counts = obs.sum(1, keepdim=True).clamp_min(1)
    mean = (values * obs).sum(1, keepdim=True) / counts
    std = (((values - mean) * obs).square().sum(1, keepdim=True) / counts).sqrt()
    z = torch.where(std > 0, (values - mean) / std.clamp_min(1e-12), torch.zeros(())) * obs
    z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    q = min(components, min(z.shape))
    left, _, _ = torch.linalg.svd(z, full_matrices=False)
    contribution = left[:, :q].square().sum(1)
    scores = -contribution
    flagged = torch.zeros(ratings.n_users, dtype=torch.bool)
    flagged[scores.topk(n_flag).indices] = True
    return DetectionResult("pca_varselect", {"n_flag": n_flag, "components": components}, flagged, scores)


class PrecisionRecall(NamedTuple):
    precision: float
    recall: float


def detection_metrics(flagged: Tensor, fake_mask: Tensor) -> PrecisionRecall:
    """Precision (flagged users that are fake) and recall (fake users flagged); NaN where undefined."""
    for name, t in (("flagged", flagged), ("fake_mask", fake_mask)):
        if not isinstance(t, Tensor) or t.dtype != torch.bool or t.dim() != 1:
            raise invalid(name, t, "a 1-D bool tensor", cls=RampartsTypeError)
    if flagged.shape != fake_mask.shape:
        raise invalid("flagged", tuple(flagged.shape), f"the shape of fake_mask {tuple(fake_mask.shape)}")
    hits = float((flagged & fake_mask).sum())
    n_flagged, n_fake = float(flagged.sum()), float(fake_mask.sum())
    return PrecisionRecall(
        hits / n_flagged if n_flagged else float("nan"), hits / n_fake if n_fake else float("nan")
    )
