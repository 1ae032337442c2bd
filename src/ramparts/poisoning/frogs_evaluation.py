"""Measure Poison Frogs (Shafahi et al. 2018): the one-shot kill in transfer learning (frozen features, a
retrained linear head per target) and end-to-end fine-tuning of the whole network, as `PoisonResult`s."""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import torch
from torch import Tensor, nn

from ramparts.data import Dataset
from ramparts.errors import RampartsTypeError, check_int, invalid
from ramparts.poisoning.frogs import (
    FrogsCraft,
    PoisonFrogs,
    _check_images,
    _check_positive,
    _device_of,
    penultimate,
)
from ramparts.results import PoisonResult
from ramparts.training import TrainConfig, evaluate, train

__all__ = ["evaluate_end_to_end", "evaluate_transfer"]

logger = logging.getLogger(__name__)


def evaluate_transfer(
    attack: PoisonFrogs,
    features: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    targets: Dataset,
    bases: Tensor,
    *,
    base_class: int,
    poisons_per_target: int = 1,
    epochs: int = 4000,
    lr: float = 0.5,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = False,
) -> PoisonResult:
    """The paper's transfer-learning one-shot kill: frozen ``features``, only a new linear head is trained.

    Every target is its own experiment: ``poisons_per_target`` poisons are crafted from bases drawn
    (by ``seed``) from ``bases`` (base-class images outside ``train_set``), added to ``train_set``
    with the base label (clean label), and a fresh linear head is fitted on the frozen features; the
    attack succeeds when that head puts the target in ``base_class``. Features are computed once and
    all heads (one per target, plus the clean baseline) are fitted together by full-batch Adam on a
    stacked weight tensor. The head's classes are the labels present in ``train_set``. The heads must
    be fitted close to convergence (the poison is one point among hundreds): on the digits, 1000
    Adam steps left most poisons misclassified and the attack at chance, 4000 at lr 0.5 fit them.
    The kill also needs a feature space where the clean set is (nearly) linearly separable, as in
    the paper; otherwise the head treats the poison as one more training error (docs/poisoning.md).
    """
    labels, base_idx, pick = _setup(train_set, targets, bases, base_class, poisons_per_target, seed)
    _check_positive("lr", lr)
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, int | float) or not weight_decay >= 0:
        raise invalid("weight_decay", weight_decay, "a number >= 0", "pass 0 for no weight decay")
    check_int("epochs", epochs, 1)
    start = time.perf_counter()
    device = _device_of(features)
    craft = attack.craft(
        features,
        targets.x.repeat_interleave(poisons_per_target, dim=0),
        bases[pick.flatten()],
        seed=seed,
        progress=progress,
    )
    features.eval()
    with torch.no_grad():
        f_train = _features(features, train_set.x, device)
        f_test = _features(features, test_set.x, device)
        f_target = _features(features, targets.x, device)
        f_poison = _features(features, craft.poisons, device).view(len(targets), poisons_per_target, -1)
    y_train = _remap(train_set.y, labels, "train_set").to(device)
    y_test = _remap(test_set.y, labels, "test_set").to(device)
    n_heads = len(targets) + 1  # head 0 is the clean baseline
    poison_feats = torch.cat([torch.zeros_like(f_poison[:1]), f_poison])
    poison_weight = torch.ones(n_heads, poisons_per_target, device=device)
    poison_weight[0] = 0.0
    weight, bias = _fit_heads(
        f_train,
        y_train,
        poison_feats,
        base_idx,
        poison_weight,
        num_classes=len(labels),
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
    )
    with torch.no_grad():
        test_pred = (torch.einsum("nd,hkd->hnk", f_test, weight) + bias[:, None]).argmax(dim=2)
        accuracy = (test_pred == y_test).float().mean(dim=1)
        target_logits = torch.einsum("td,tkd->tk", f_target, weight[1:]) + bias[1:]
        success = target_logits.argmax(dim=1) == base_idx
        clean_pred = (torch.einsum("td,kd->tk", f_target, weight[0]) + bias[0]).argmax(dim=1)
    n_poison = len(targets) * poisons_per_target
    return PoisonResult(
        attack="poison_frogs",
        config={
            **attack.config(),
            "setting": "transfer",
            "base_class": base_class,
            "poisons_per_target": poisons_per_target,
            "head_epochs": epochs,
            "head_lr": lr,
            "head_weight_decay": weight_decay,
        },
        seed=seed,
        fraction=poisons_per_target / (len(train_set) + poisons_per_target),
        n_poison=n_poison,
        clean_accuracy=float(accuracy[1:].mean()),
        baseline_accuracy=float(accuracy[0]),
        attack_success=float(success.float().mean()),
        elapsed_s=time.perf_counter() - start,
        extra=_extra(craft, success, clean_pred == base_idx, accuracy[1:], poisons_per_target),
    )


def evaluate_end_to_end(
    attack: PoisonFrogs,
    model: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    targets: Dataset,
    bases: Tensor,
    *,
    base_class: int,
    poisons_per_target: int = 1,
    config: TrainConfig | None = None,
    seed: int = 0,
    progress: bool = False,
) -> PoisonResult:
    """End-to-end fine-tuning: a copy of the whole ``model`` is trained on ``train_set`` + the poisons.

    Poisons are crafted against :func:`penultimate` of ``model`` as it is before fine-tuning; every
    target is its own experiment (its own copy of ``model``), plus one clean fine-tune for the
    baseline. Labels are ``model``'s own output indices. Costly: keep ``targets`` small.
    """
    pick = _setup(train_set, targets, bases, base_class, poisons_per_target, seed)[2]
    cfg = config if config is not None else TrainConfig(epochs=3, batch_size=64, lr=1e-3, seed=seed)
    if not isinstance(cfg, TrainConfig):
        raise invalid("config", type(cfg).__name__, "a ramparts.training.TrainConfig", cls=RampartsTypeError)
    start = time.perf_counter()
    device = _device_of(model)
    craft = attack.craft(
        penultimate(model),
        targets.x.repeat_interleave(poisons_per_target, dim=0),
        bases[pick.flatten()],
        seed=seed,
        progress=progress,
    )
    baseline = copy.deepcopy(model)
    train(baseline, train_set, config=cfg, progress=False)
    baseline_accuracy = evaluate(baseline, test_set)
    poisons = craft.poisons.view(len(targets), poisons_per_target, *targets.input_shape)
    label = torch.full((poisons_per_target,), base_class, dtype=torch.long)
    success = torch.zeros(len(targets), dtype=torch.bool)
    accuracies = torch.zeros(len(targets))
    for i in range(len(targets)):
        victim = copy.deepcopy(model)
        poisoned = Dataset(
            torch.cat([train_set.x, poisons[i].to(train_set.x.device)]),
            torch.cat([train_set.y, label.to(train_set.y.device)]),
            train_set.classes,
            train_set.name,
        )
        train(victim, poisoned, config=cfg, progress=False)
        accuracies[i] = evaluate(victim, test_set)
        victim.eval()
        with torch.no_grad():
            success[i] = bool(victim(targets.x[i : i + 1].to(device)).argmax(dim=1).item() == base_class)
        logger.info(
            "Poison Frogs end-to-end: target %d/%d, success=%s", i + 1, len(targets), bool(success[i])
        )
    baseline.eval()
    with torch.no_grad():
        clean_hit = baseline(targets.x.to(device)).argmax(dim=1).cpu() == base_class
    return PoisonResult(
        attack="poison_frogs",
        config={
            **attack.config(),
            "setting": "end_to_end",
            "base_class": base_class,
            "poisons_per_target": poisons_per_target,
            "train": cfg.to_dict(),
        },
        seed=seed,
        fraction=poisons_per_target / (len(train_set) + poisons_per_target),
        n_poison=len(targets) * poisons_per_target,
        clean_accuracy=float(accuracies.mean()),
        baseline_accuracy=baseline_accuracy,
        attack_success=float(success.float().mean()),
        elapsed_s=time.perf_counter() - start,
        extra=_extra(craft, success, clean_hit, accuracies, poisons_per_target),
    )


def _setup(
    train_set: Dataset, targets: Dataset, bases: Tensor, base_class: int, poisons_per_target: int, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Validate the experiment; return the head's labels, the base class's index among them, the bases drawn."""
    check_int("poisons_per_target", poisons_per_target, 1)
    check_int("seed", seed, 0)
    for name, ds in (("train_set", train_set), ("targets", targets)):
        if not isinstance(ds, Dataset):
            raise invalid(name, type(ds).__name__, "a ramparts.data.Dataset", cls=RampartsTypeError)
    _check_images("bases", bases)
    if tuple(bases.shape[1:]) != train_set.input_shape or targets.input_shape != train_set.input_shape:
        raise invalid(
            "bases",
            tuple(bases.shape),
            f"images of the training set's shape {train_set.input_shape}, like the targets",
            "draw bases and targets from the same data as train_set",
        )
    labels = torch.unique(train_set.y).cpu()
    if base_class not in labels.tolist():
        raise invalid("base_class", base_class, f"a label of train_set ({labels.tolist()})")
    if bool((targets.y == base_class).any()):
        bad = int((targets.y == base_class).nonzero()[0])
        raise invalid(
            "targets",
            f"targets.y[{bad}] == base_class == {base_class}",
            "targets of a class other than base_class",
            "pick a base of another class than the target (or drop targets of the base class)",
        )
    if bases.shape[0] < poisons_per_target:
        raise invalid(
            "bases", bases.shape[0], f"at least poisons_per_target={poisons_per_target} base images"
        )
    gen = torch.Generator().manual_seed(seed)
    pick = torch.stack(
        [torch.randperm(bases.shape[0], generator=gen)[:poisons_per_target] for _ in targets.y]
    )
    base_idx = int((labels == base_class).nonzero()[0])
    return labels, torch.tensor(base_idx), pick


def _fit_heads(
    f_train: Tensor,
    y_train: Tensor,
    f_poison: Tensor,
    base_idx: Tensor,
    poison_weight: Tensor,
    *,
    num_classes: int,
    epochs: int,
    lr: float,
    weight_decay: float,
) -> tuple[Tensor, Tensor]:
    """Fit H linear heads at once by full-batch Adam: head h sees the clean set plus its poisons.

    Cross-entropy is averaged over the clean samples and head h's (weighted) poisons, which are all
    labelled ``base_idx``; weights start at zero so the fit is deterministic.
    """
    n_heads, dim = f_poison.shape[0], f_train.shape[1]
    device = f_train.device
    scale = f_train.norm(dim=1).mean().clamp_min(1e-12)
    f_train, f_poison = f_train / scale, f_poison / scale
    weight = torch.zeros(n_heads, num_classes, dim, device=device, requires_grad=True)
    bias = torch.zeros(n_heads, num_classes, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr)
    y_poison = base_idx.to(device).expand(f_poison.shape[:2])
    count = f_train.shape[0] + poison_weight.sum(dim=1)
    for _ in range(epochs):
        optimizer.zero_grad()
        logits = torch.einsum("nd,hkd->hnk", f_train, weight) + bias[:, None]
        clean = nn.functional.cross_entropy(
            logits.transpose(1, 2), y_train.expand(n_heads, -1), reduction="none"
        )
        p_logits = torch.einsum("hpd,hkd->hpk", f_poison, weight) + bias[:, None]
        poison = nn.functional.cross_entropy(p_logits.transpose(1, 2), y_poison, reduction="none")
        per_head = (clean.sum(dim=1) + (poison * poison_weight).sum(dim=1)) / count
        loss = per_head.sum() + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        optimizer.step()
    return (weight / scale).detach(), bias.detach()


def _extra(
    craft: FrogsCraft, success: Tensor, clean_hit: Tensor, accuracies: Tensor, per_target: int
) -> dict[str, Any]:
    """Per-target outcomes and the crafting distances, JSON-ready."""
    ratio = (craft.feature_after / craft.feature_before.clamp_min(1e-12)).view(-1, per_target)
    return {
        "craft": craft.summary(),
        "per_target": [
            {
                "success": bool(success[i]),
                "clean_model_says_base": bool(clean_hit[i]),
                "clean_accuracy": float(accuracies[i]),
                "feature_ratio": [float(r) for r in ratio[i]],
                "l2": [float(v) for v in craft.l2.view(-1, per_target)[i]],
            }
            for i in range(success.shape[0])
        ],
    }


def _features(features: nn.Module, x: Tensor, device: torch.device, batch_size: int = 512) -> Tensor:
    return torch.cat(
        [features(x[i : i + batch_size].to(device)).flatten(1) for i in range(0, x.shape[0], batch_size)]
    )


def _remap(y: Tensor, labels: Tensor, param: str) -> Tensor:
    """Labels -> their index in the sorted label set ``labels`` (the head's classes)."""
    y = y.cpu()
    known = torch.isin(y, labels)
    if not bool(known.all()):
        raise invalid(param, sorted(set(y[~known].tolist())), f"only labels of train_set ({labels.tolist()})")
    return torch.searchsorted(labels, y)
