"""The audit's poisoning section: how far a share of poisoned training data moves the audited pipeline.

It runs where the audit knows the training data (it retrains the pipeline): the default recipe (the
architecture, epochs, lr and batch size the default model is trained with) on poisoned copies of the
training set. Two attacks at each fraction: random label flips (indiscriminate: clean accuracy lost)
and a BadNets backdoor (a small patch that sends inputs to class 0: attack success at intact clean
accuracy). Then spectral signatures (Tran et al. 2018) sanitise the most backdoored set, and the
pipeline retrained on what is left shows whether the backdoor survives. One step of the run: recorded
in metrics.json under `poisoning`, reused on resume when the configuration matches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ramparts.audit.model import DEFAULT_ARCH, DEFAULT_EPOCHS, TRAIN_BATCH, TRAIN_LR
from ramparts.data import Dataset
from ramparts.defenses.spectral import spectral_signatures
from ramparts.errors import RampartsTypeError, invalid
from ramparts.poisoning import POISONING, BadNets
from ramparts.poisoning.evaluate import fraction_sweep, retrain_without, zoo_pipeline
from ramparts.report.summary import attack_citation
from ramparts.training import TrainConfig

if TYPE_CHECKING:
    from ramparts.audit.runner import AuditRun

DEFAULT_FRACTIONS: tuple[float, ...] = (0.01, 0.05)
ATTACKS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("Random label flips", "flip_random", {}),
    ("BadNets backdoor", "badnets", {"target_class": 0}),
)


def check_fractions(fractions: object) -> tuple[float, ...]:
    """`poisoning_fractions` as a sorted tuple of shares in (0, 0.5); None or empty: no section."""
    if fractions is None:
        return ()
    if isinstance(fractions, str | bytes) or not isinstance(fractions, tuple | list):
        raise invalid(
            "poisoning_fractions", fractions, "a list of shares in (0, 0.5), or None", cls=RampartsTypeError
        )
    for value in fractions:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 0.5:
            raise invalid("poisoning_fractions", fractions, "shares in (0, 0.5), e.g. 0.01,0.05")
    return tuple(sorted({float(v) for v in fractions}))


def citations(section: dict[str, Any]) -> dict[str, str | None]:
    """The papers the section's attacks and its sanitiser follow, by label."""
    found: dict[str, str | None] = {
        row["label"]: attack_citation(POISONING.get(row["attack"])) for row in section["attacks"]
    }
    if section.get("defense"):
        found["Spectral signatures"] = attack_citation(spectral_signatures)
    return found


def training_subset(train_ds: Dataset, records: int, seed: int) -> Dataset:
    """The records the section poisons and retrains on: all of `train_ds` (`records` 0 or >= its size), else
    `records` of them drawn with the run's seed (a smaller retraining budget; the shares stay the same)."""
    if isinstance(records, bool) or not isinstance(records, int) or records < 0:
        raise invalid("poisoning_records", records, "an integer >= 0 (0: the whole training set)")
    if records == 0 or records >= len(train_ds):
        return train_ds
    pick = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(seed + 7))[:records]
    return train_ds.subset(sorted(pick.tolist()))


def steps(config: dict[str, Any]) -> int:
    """Progress steps of the section: one per model trained (the clean one, one per attack and fraction,
    and for a backdoor the poisoned model the sanitiser reads and the retrain without what it removed)."""
    backdoor = any(name == "badnets" for _, name, _ in config["attacks"])
    return 1 + len(config["attacks"]) * len(config["fractions"]) + 2 * backdoor


def poisoning_config(
    train_ds: Dataset,
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
    epochs: int = DEFAULT_EPOCHS,
    of: int | None = None,
) -> dict[str, Any]:
    """config.json's `poisoning`: everything the section's measurements depend on; `of`: the size of the
    training set `train_ds` was drawn from (`training_subset`), when it is a subset."""
    patch = max(1, min(3, train_ds.input_shape[1] // 4))
    return {
        "fractions": [float(f) for f in sorted(fractions)],
        "train_records": len(train_ds),
        **({"drawn_from": of} if of is not None and of != len(train_ds) else {}),
        "recipe": {"arch": DEFAULT_ARCH, "epochs": epochs, "lr": TRAIN_LR, "batch_size": TRAIN_BATCH},
        "attacks": [
            [label, name, {**params, "patch_size": patch} if name == "badnets" else params]
            for label, name, params in ATTACKS
        ],
        "defense": {"method": "spectral_signatures", "removal_factor": 1.5},
    }


def poisoning_section(
    run: AuditRun, train_ds: Dataset, test_ds: Dataset, config: dict[str, Any]
) -> dict[str, Any]:
    """Run (or reuse) the poisoning measurements; the section of metrics.json and report.json."""
    return run.one_step("poisoning", config, lambda: _measure(run, train_ds, test_ds, config))


def _measure(run: AuditRun, train_ds: Dataset, test_ds: Dataset, config: dict[str, Any]) -> dict[str, Any]:
    r = config["recipe"]
    c, h, _ = train_ds.input_shape
    arch_config = {"in_channels": c, "input_size": h, "num_classes": train_ds.num_classes}
    train_cfg = TrainConfig(
        epochs=r["epochs"],
        lr=r["lr"],
        batch_size=r["batch_size"],
        seed=run.seed,
        device=str(run.oracle.device),
    )
    trainer = zoo_pipeline(r["arch"], arch_config, train_cfg)

    def pipeline(data: Dataset) -> nn.Module:
        model = trainer(data)
        run.tick()
        return model

    fractions = config["fractions"]
    run.status("the clean pipeline")
    clean = pipeline(train_ds)  # shared by every sweep's fraction-0 point
    rows = []
    backdoor: BadNets | None = None
    for label, name, params in config["attacks"]:
        run.status(label)
        attack = POISONING.get(name)(**params)
        sweep = fraction_sweep(attack, train_ds, test_ds, pipeline, fractions, seed=run.seed, baseline=clean)
        rows.append(
            {
                "label": label,
                "attack": name,
                "params": params,
                "baseline_accuracy": sweep.baseline_accuracy,
                "curve": sweep.curve,
            }
        )
        if isinstance(attack, BadNets):
            backdoor = attack
    defense = None
    if backdoor is not None:
        run.status("spectral signatures")
        largest = fractions[-1]
        poisoned = backdoor(train_ds, fraction=largest, seed=run.seed)
        model = pipeline(poisoned.data)
        found = spectral_signatures(model, poisoned.data, expected_fraction=largest)
        before = next(row for row in rows if row["attack"] == "badnets")["curve"][-1]
        outcome = retrain_without(
            poisoned, found, test_ds, pipeline, attack=backdoor, before=before, baseline=clean
        )
        defense = {"method": "spectral_signatures", "fraction": largest, **outcome}
    return {"result": {"attacks": [row["label"] for row in rows]}, "attacks": rows, "defense": defense}
