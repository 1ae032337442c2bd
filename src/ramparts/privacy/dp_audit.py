"""The privacy audit loop: train the target with DP-SGD at each epsilon, attack it with LiRA, and read off
what each epsilon buys (TPR at a low FPR) and what it costs (test accuracy).

The target trains on the same members as the non-private one, with the same recipe plus DP-SGD (Abadi et
al. 2016, through Opacus: `ramparts.protection.dp`); LiRA (online and offline) uses the shadow models it is
given. Shadows trained without DP make this the attack of someone who does not know the recipe is private;
pass DP-trained shadows to model one who does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ramparts.data import Dataset
from ramparts.errors import invalid
from ramparts.privacy.lira import LiRA
from ramparts.privacy.shadow import ShadowPool, ShadowRecipe
from ramparts.protection.dp import DPConfig
from ramparts.training import TrainConfig, train
from ramparts.zoo import build

__all__ = ["dp_tradeoff"]


def dp_tradeoff(
    records: Dataset,
    members: torch.Tensor,
    recipe: ShadowRecipe,
    shadows: ShadowPool,
    epsilons: Sequence[float],
    *,
    max_grad_norm: float = 1.0,
    delta: float = 1e-5,
    views: tuple[str, ...] = ("id",),
    fpr: float = 0.001,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per epsilon: spent epsilon, train/test accuracy, LiRA online/offline AUC and TPR at `fpr`."""
    if not epsilons or any(not isinstance(e, int | float) or isinstance(e, bool) or e <= 0 for e in epsilons):
        raise invalid("epsilons", list(epsilons), "positive numbers, e.g. 1, 4, 16")
    dev = torch.device(device)
    inside = members.nonzero().flatten().tolist()
    member_ds = records.subset(inside)
    rows = []
    for eps in epsilons:
        with torch.random.fork_rng(devices=[]):  # the same initial weights at every epsilon, in any process
            torch.manual_seed(seed)
            model = build(recipe.arch, **recipe.full_config(records))
        config = TrainConfig(
            epochs=recipe.epochs,
            batch_size=recipe.batch_size,
            lr=recipe.lr,
            weight_decay=recipe.weight_decay,
            seed=seed,
            device=str(dev),
            dp=DPConfig(epsilon=float(eps), delta=delta, max_grad_norm=max_grad_norm),
        )
        report = train(model, member_ds, config=config, progress=False)
        model = model.to(dev).eval()
        with torch.no_grad():
            pred = torch.cat([model(b.to(dev)).argmax(1).cpu() for b in records.x.split(1024)])
        correct = pred == records.y
        row: dict[str, Any] = {
            "epsilon": float(eps),
            "spent_epsilon": report.privacy.epsilon if report.privacy is not None else None,
            "train_accuracy": float(correct[members].float().mean()),
            "test_accuracy": float(correct[~members].float().mean()),
        }
        for mode, online in (("online", True), ("offline", False)):
            res = LiRA(online=online, views=views)(
                model,
                records.x,
                records.y,
                members=members,
                shadows=shadows,
                pool_index=torch.arange(len(records)),
                fprs=(0.01, fpr),
                seed=seed,
            )
            metrics = res.metrics or {}
            row[mode] = {
                "auc": metrics["auc"],
                "tpr": metrics[f"tpr@{fpr:g}"],
                "ci95": metrics["ci95"].get(f"tpr@{fpr:g}"),
            }
        rows.append(row)
    return rows
