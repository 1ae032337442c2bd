"""The audit's membership section: how much the audited model says about the records it trained on.

It runs where the audit knows the training data: the default model it trained itself, or a given model
together with `train_ds` (taken to be that model's training set). Members are the training records, non-
members the held-out test records. `shadows` models of the audit's default recipe (the architecture,
epochs, lr and batch size the default model is trained with) train on random halves of both, with the
run's seed; LOSS (no shadows) and LiRA online and offline score every record. The headline rate is the
TPR at the lowest FPR the non-members resolve (0.1% from 1,000 of them, else 1%). One step of the run:
recorded in metrics.json under `membership`, reused on resume when the configuration matches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ramparts.audit.model import DEFAULT_ARCH, DEFAULT_EPOCHS, TRAIN_BATCH, TRAIN_LR
from ramparts.data import Dataset
from ramparts.privacy import MEMBERSHIP, ShadowRecipe, train_shadows

if TYPE_CHECKING:
    from ramparts.audit.runner import AuditRun

DEFAULT_SHADOWS = 8
ATTACKS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("LOSS", "loss", {}),
    ("LiRA online", "lira", {"global_variance": True}),
    ("LiRA offline", "lira", {"online": False, "global_variance": True}),
)


def steps(config: dict[str, Any]) -> int:
    """Progress steps of the section: one per shadow model, one per attack."""
    return int(config["shadows"]) + len(config["attacks"])


def membership_config(
    train_ds: Dataset, test_ds: Dataset, shadows: int, epochs: int = DEFAULT_EPOCHS
) -> dict[str, Any]:
    """config.json's `membership`: everything the section's measurements depend on."""
    fpr = 0.001 if len(test_ds) >= 1000 else 0.01
    return {
        "shadows": shadows,
        "members": len(train_ds),
        "non_members": len(test_ds),
        "recipe": {"arch": DEFAULT_ARCH, "epochs": epochs, "lr": TRAIN_LR, "batch_size": TRAIN_BATCH},
        "attacks": [[label, name, params] for label, name, params in ATTACKS],
        "fpr": fpr,
    }


def membership_section(
    run: AuditRun, train_ds: Dataset, test_ds: Dataset, config: dict[str, Any]
) -> dict[str, Any]:
    """Run (or reuse) the membership measurements; the section of metrics.json and report.json."""
    return run.one_step("membership", config, lambda: _measure(run, train_ds, test_ds, config))


def _measure(run: AuditRun, train_ds: Dataset, test_ds: Dataset, config: dict[str, Any]) -> dict[str, Any]:
    records = Dataset(
        torch.cat([train_ds.x, test_ds.x]), torch.cat([train_ds.y, test_ds.y]), train_ds.classes, "records"
    )
    members = torch.arange(len(records)) < len(train_ds)
    r = config["recipe"]
    recipe = ShadowRecipe(r["arch"], {}, epochs=r["epochs"], batch_size=r["batch_size"], lr=r["lr"])
    run.status(f"training {config['shadows']} shadow models")
    pool = train_shadows(
        records,
        config["shadows"],
        recipe,
        seed=run.seed,
        device=run.oracle.device,
        chunk=1 if run.oracle.device.type == "cpu" else 8,  # one at a time on a CPU anyway: finer progress
        on_model=lambda _: run.tick(),
    )
    fpr = config["fpr"]
    rows = []
    for label, name, params in config["attacks"]:
        run.status(label)
        result = MEMBERSHIP.get(name)(**params)(
            run.oracle,
            records.x,
            records.y,
            members=members,
            shadows=pool,
            pool_index=torch.arange(len(records)),
            fprs=(0.01, fpr) if fpr != 0.01 else (0.01,),
            seed=run.seed,
        )
        m = result.metrics or {}
        rows.append(
            {
                "label": label,
                "attack": name,
                "params": params,
                "auc": m["auc"],
                "balanced_accuracy": m["balanced_accuracy"],
                "tpr": m[f"tpr@{fpr:g}"],
                "tpr_ci95": m["ci95"].get(f"tpr@{fpr:g}"),
                "tpr@0.01": m["tpr@0.01"],
                "auc_ci95": m["ci95"].get("auc"),
                "roc": m["roc"],
                "queries": result.queries,
            }
        )
        run.tick()
    best = max(rows, key=lambda row: (row["tpr"] or 0.0, row["auc"]))
    return {"result": {"best": best["label"]}, "fpr": fpr, "attacks": rows}
