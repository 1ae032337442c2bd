"""Measure a poisoning attack end to end: train the victim's pipeline on the poisoned set, test on clean data.

A *pipeline* is the victim's training procedure: a function that trains a fresh model on a dataset and
returns it in eval mode. Pipelines are deterministic (seeded), so the clean baseline and the poisoned
model differ only by the poisons.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ramparts import zoo
from ramparts.data import Dataset
from ramparts.defenses.detection import DetectionResult
from ramparts.errors import RampartsTypeError, check_int, invalid, unknown
from ramparts.poisoning.base import PoisonedSet, PoisoningAttack, check_fraction
from ramparts.poisoning.flipping import fit_linear
from ramparts.results import PoisonResult
from ramparts.training import TrainConfig, evaluate, predict_logits, train

__all__ = ["Pipeline", "evaluate_poisoning", "fraction_sweep", "linear_pipeline", "zoo_pipeline"]

logger = logging.getLogger(__name__)

Pipeline = Callable[[Dataset], nn.Module]


def zoo_pipeline(arch: str, arch_config: dict[str, Any], config: TrainConfig) -> Pipeline:
    """Build ``arch`` from the zoo and train it with ``config``; initialisation seeded from ``config.seed``.

    ``in_channels``, ``input_size`` and ``num_classes`` are filled from the dataset unless given.
    """
    if not isinstance(config, TrainConfig):
        raise invalid(
            "config", type(config).__name__, "a ramparts.training.TrainConfig", cls=RampartsTypeError
        )
    if arch not in zoo.ARCHITECTURES:
        raise unknown("arch", arch, zoo.ARCHITECTURES)

    def pipeline(data: Dataset) -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            model = zoo.build(arch, **_io_config(arch_config, data.input_shape, data.num_classes))
        train(model, data, config=config, progress=False)
        return model.eval()

    return pipeline


def linear_pipeline(*, epochs: int = 100, lr: float = 1.0, l2: float = 1e-3, seed: int = 0) -> Pipeline:
    """Multinomial logistic regression (Flatten + Linear), fitted by full-batch L-BFGS for ``epochs`` iterations.

    ``lr`` is the L-BFGS step scale (1.0 with its strong-Wolfe line search), ``l2`` the weight penalty.
    The fit starts from zero weights, so it is deterministic; ``seed`` is kept in the signature so that
    every pipeline factory is called alike. The victim of the label-flipping attacks and quick audits.
    """
    check_int("epochs", epochs, 1)
    check_int("seed", seed, 0)
    for name, value in (("lr", lr), ("l2", l2)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise invalid(name, value, "a finite number", cls=RampartsTypeError)
    if not 0 < lr < float("inf"):
        raise invalid("lr", lr, "a step scale > 0", "use 1.0")
    if not 0 <= l2 < float("inf"):
        raise invalid("l2", l2, "a number >= 0", "try 1e-3")

    def pipeline(data: Dataset) -> nn.Module:
        x = data.x.detach().flatten(1).cpu()
        linear = fit_linear(x, data.y.cpu(), data.num_classes, steps=epochs, l2=float(l2), lr=float(lr))
        return nn.Sequential(nn.Flatten(), linear).eval()

    return pipeline


def evaluate_poisoning(
    poisoned: PoisonedSet,
    test: Dataset,
    pipeline: Pipeline,
    *,
    baseline: nn.Module | None = None,
    trigger: Callable[[Tensor], Tensor] | None = None,
    target_class: int | None = None,
    clean_train: Dataset | None = None,
) -> PoisonResult:
    """Train ``pipeline`` on the poisoned set and measure it on clean ``test`` against a clean baseline.

    The baseline is ``baseline`` or, if None, ``pipeline(clean_train)``. With ``trigger`` (a backdoor),
    ``attack_success`` is the share of test inputs *not* of ``target_class`` that the poisoned model
    labels ``target_class`` once triggered; the clean model's share is in ``extra["baseline_attack_success"]``.
    """
    if not isinstance(poisoned, PoisonedSet):
        raise invalid("poisoned", type(poisoned).__name__, "a PoisonedSet", cls=RampartsTypeError)
    if not isinstance(test, Dataset):
        raise invalid("test", type(test).__name__, "a ramparts.data.Dataset", cls=RampartsTypeError)
    if (trigger is None) != (target_class is None):
        raise invalid("target_class", target_class, "given together with trigger", "pass both or neither")
    start = time.perf_counter()
    if baseline is None:
        if clean_train is None:
            raise invalid("baseline", None, "a clean model, or clean_train to train one", "pass clean_train=")
        baseline = pipeline(clean_train)
    model = pipeline(poisoned.data)
    success: float | None = None
    extra: dict[str, Any] = {}
    if trigger is not None and target_class is not None:
        success = _trigger_success(model, test, trigger, target_class)
        extra["baseline_attack_success"] = _trigger_success(baseline, test, trigger, target_class)
    return PoisonResult(
        attack=poisoned.attack,
        config=poisoned.config,
        seed=poisoned.seed,
        fraction=poisoned.fraction,
        n_poison=poisoned.n_poison,
        clean_accuracy=evaluate(model, test),
        baseline_accuracy=evaluate(baseline, test),
        attack_success=success,
        elapsed_s=time.perf_counter() - start,
        extra=extra,
    )


def fraction_sweep(
    attack: PoisoningAttack,
    train: Dataset,
    test: Dataset,
    pipeline: Pipeline,
    fractions: Sequence[float],
    *,
    seed: int = 0,
    progress: bool = False,
    baseline: nn.Module | None = None,
) -> PoisonResult:
    """Run ``attack`` at each fraction; the result of the largest, whose ``curve`` lists every point.

    The clean baseline is trained once (the fraction-0 point), or given as ``baseline`` (the pipeline's
    model on ``train``, e.g. shared by several sweeps). Backdoors are recognised by their
    ``apply_trigger`` and ``target_class`` attributes. ``progress`` logs each point at INFO level.
    """
    if not isinstance(attack, PoisoningAttack):
        raise invalid("attack", type(attack).__name__, "a PoisoningAttack", cls=RampartsTypeError)
    points = sorted({check_fraction(f, "fractions") for f in fractions})
    if not points:
        raise invalid("fractions", list(fractions), "at least one poison fraction", "pass e.g. [0.01, 0.05]")
    start = time.perf_counter()
    trigger: Callable[[Tensor], Tensor] | None = getattr(attack, "apply_trigger", None)
    target: int | None = getattr(attack, "target_class", None) if trigger is not None else None
    if baseline is None:
        baseline = pipeline(train)
    elif not isinstance(baseline, nn.Module):
        raise invalid("baseline", type(baseline).__name__, "an nn.Module or None", cls=RampartsTypeError)
    clean_acc = evaluate(baseline, test)
    base_success = (
        None if trigger is None or target is None else _trigger_success(baseline, test, trigger, target)
    )
    curve: list[dict[str, Any]] = [
        {"fraction": 0.0, "n_poison": 0, "clean_accuracy": clean_acc, "attack_success": base_success}
    ]
    last: PoisonResult | None = None
    for frac in (f for f in points if f > 0):
        poisoned = attack(train, fraction=frac, seed=seed)
        last = evaluate_poisoning(
            poisoned, test, pipeline, baseline=baseline, trigger=trigger, target_class=target
        )
        curve.append(
            {
                "fraction": frac,
                "n_poison": last.n_poison,
                "clean_accuracy": last.clean_accuracy,
                "attack_success": last.attack_success,
            }
        )
        if progress:
            logger.info(
                "%s at %.4f: clean accuracy %.4f, attack success %s",
                attack.name,
                frac,
                last.clean_accuracy,
                last.attack_success,
            )
    top = curve[-1]
    extra = {} if last is None else dict(last.extra)
    return PoisonResult(
        attack=attack.name,
        config=attack.config(),
        seed=seed,
        fraction=top["fraction"],
        n_poison=top["n_poison"],
        clean_accuracy=top["clean_accuracy"],
        baseline_accuracy=clean_acc,
        attack_success=top["attack_success"],
        elapsed_s=time.perf_counter() - start,
        curve=curve,
        extra=extra,
    )


def _trigger_success(
    model: nn.Module, test: Dataset, trigger: Callable[[Tensor], Tensor], target: int
) -> float:
    """Share of test inputs not of class ``target`` that ``model`` labels ``target`` once triggered."""
    keep = test.y != target
    if not bool(keep.any()):
        raise invalid("test", f"only class {target}", "test inputs of other classes than target_class")
    pred = predict_logits(model, trigger(test.x[keep])).argmax(dim=1)
    return float((pred == target).float().mean())


def _io_config(arch_config: dict[str, Any], shape: tuple[int, int, int], num_classes: int) -> dict[str, Any]:
    c, h, _ = shape
    return {"in_channels": c, "input_size": h, "num_classes": num_classes, **arch_config}


def retrain_without(
    poisoned: PoisonedSet,
    found: DetectionResult,
    test: Dataset,
    pipeline: Pipeline,
    *,
    attack: PoisoningAttack,
    before: dict[str, Any],
    baseline: nn.Module,
) -> dict[str, Any]:
    """What a sanitiser's flags are worth: retrain ``pipeline`` on the records ``found`` did not flag and
    compare with ``before`` (the curve point of the same poisoned set; ``baseline``: the clean pipeline's
    model). JSON-ready: detection metrics against the poison mask, clean accuracy and attack success before
    and after, the poisons and records left."""
    if not isinstance(found, DetectionResult) or found.flagged.shape != poisoned.poison.shape:
        raise invalid(
            "found", type(found).__name__, f"a DetectionResult over the {len(poisoned.poison)} records"
        )
    keep = ~found.flagged
    kept = PoisonedSet(
        data=poisoned.data.subset(torch.nonzero(keep).flatten()),
        poison=poisoned.poison[keep],
        attack=poisoned.attack,
        config=poisoned.config,
        seed=poisoned.seed,
    )
    trigger: Callable[[Tensor], Tensor] | None = getattr(attack, "apply_trigger", None)
    target: int | None = getattr(attack, "target_class", None) if trigger is not None else None
    after = evaluate_poisoning(kept, test, pipeline, baseline=baseline, trigger=trigger, target_class=target)
    return {
        "detection": found.metrics(poisoned.poison),
        "before": {
            "clean_accuracy": before["clean_accuracy"],
            "attack_success": before.get("attack_success"),
        },
        "after": {
            "clean_accuracy": after.clean_accuracy,
            "attack_success": after.attack_success,
            "poisons_left": int(kept.poison.sum()),
            "records_left": len(kept.data),
        },
    }
