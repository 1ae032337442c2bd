"""Shadow models + an attack classifier: Shokri, Stronati, Song & Shmatikov, "Membership Inference Attacks
Against Machine Learning Models", IEEE S&P 2017.

Each shadow model's answers on the records it trained on (label 1) and on the others (label 0) train
a binary classifier (scikit-learn MLP on standardised features); the classifier then scores the
target's answers. Shared (`per_class=False`): features are the sorted log-probabilities plus the true
class's log-probability; per class (the paper's): one classifier per true class on the raw
log-probability vector.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from ramparts.params import Interval, Options
from ramparts.privacy.base import MembershipAttack, MembershipContext, register

__all__ = ["ShadowModelAttack"]


@register("shokri")
class ShadowModelAttack(MembershipAttack):
    """Shokri et al.'s attack; `max_rows` shadow answers (drawn at random) train each classifier."""

    needs_shadows: ClassVar[bool] = True
    constraints: ClassVar = {
        "per_class": Options((True, False)),
        "max_rows": Interval(int, low=10),
        "hidden": Interval(int, low=1),
    }

    def __init__(self, *, per_class: bool = False, max_rows: int = 20_000, hidden: int = 64) -> None:
        self.per_class = per_class
        self.max_rows = max_rows
        self.hidden = hidden

    def _scores(self, ctx: MembershipContext) -> Tensor:
        pool = ctx.require_shadows()
        data = pool.data
        lp = pool.log_probs(data.x, device=ctx.x.device)[:, 0]  # [K, N, C]
        k, n, c = lp.shape
        rows = torch.randperm(k * n, generator=ctx.generator)[: self.max_rows]
        feats = self._features(lp.reshape(k * n, c)[rows.to(lp.device)], data.y.repeat(k)[rows].to(lp.device))
        labels = pool.masks.reshape(-1)[rows].numpy().astype(np.int64)
        classes = data.y.repeat(k)[rows].numpy()
        target = self._features(ctx.target_log_probs()[0], ctx.y)
        target_classes = ctx.y.cpu().numpy()
        scores = np.zeros(len(target))
        groups = range(c) if self.per_class else [None]
        seed = int(torch.randint(2**31 - 1, (1,), generator=ctx.generator))
        for g in groups:
            train = classes == g if g is not None else np.ones(len(labels), dtype=bool)
            test = target_classes == g if g is not None else np.ones(len(target), dtype=bool)
            if not test.any():
                continue
            if len(np.unique(labels[train])) < 2:
                scores[test] = 0.5
                continue
            clf = make_pipeline(
                StandardScaler(), MLPClassifier((self.hidden,), max_iter=300, random_state=seed)
            ).fit(feats[train], labels[train])
            scores[test] = clf.predict_proba(target[test])[:, 1]
        return torch.from_numpy(scores)

    def _features(self, log_probs: Tensor, y: Tensor) -> np.ndarray:
        if self.per_class:
            return log_probs.cpu().numpy()
        ordered = log_probs.sort(dim=1, descending=True).values
        true = log_probs.gather(1, y[:, None])
        return torch.cat([ordered, true], dim=1).cpu().numpy()
