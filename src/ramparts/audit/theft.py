"""The audit's theft section: how well a label-only attacker copies the audited model, and what the copy buys.

The Jacobian-based substitute training of Papernot et al. (`ramparts.theft.jacobian`, label-only) starts
from `seeds` held-out test images (preferably ones the audit does not evaluate on), runs a few rounds, and
is measured on the audited images that are not seeds: fidelity (agreement with the model) and accuracy of
the substitute, and fidelity against the labels used (the curve). FGSM crafted white-box on the substitute
(`ramparts.theft.transfer.transfer_attack`) at the reference eps and a larger one measures the transfer
rate against random-sign noise of the same size. The whole section is one step of the run: recorded in
metrics.json under `theft` and reused on resume when the recorded configuration matches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ramparts.data import Dataset
from ramparts.errors import invalid
from ramparts.report.summary import eps_label
from ramparts.theft import THEFTS
from ramparts.theft.transfer import transfer_attack

if TYPE_CHECKING:
    from ramparts.audit.runner import AuditRun

THEFT_ATTACKS: tuple[str, ...] = ("jacobian",)
DEFAULT_THEFT = "jacobian"
DEFAULT_THEFT_SEEDS = 50
# 4 rounds = 3 augmentations: seeds * 2^3 labels (400 for 50 seeds); about 4 s on 2 CPU cores (digits).
THEFT_PARAMS: dict[str, Any] = {"rounds": 4, "lam": 0.1, "epochs": 20}
TRANSFER_ATTACK = "fgsm"


def resolve_theft(value: str | None) -> str | None:
    """The theft of the section, None for none ("none", "" or None)."""
    if value is None or str(value).strip().lower() in ("", "none"):
        return None
    name = str(value).strip().lower()
    if name not in THEFT_ATTACKS:
        raise invalid("theft", value, f"one of {', '.join(THEFT_ATTACKS)} or 'none'")
    return name


# Progress steps of the section: the theft, then the transfer attack.
STEPS = 2


def transfer_eps(ref: float, grid: list[float], bounds: tuple[float, float]) -> list[float]:
    """The reference eps and a larger one: the grid's largest, else 4x the reference (within the bounds)."""
    width = bounds[1] - bounds[0]
    large = max(grid) if grid and max(grid) > ref else min(4 * ref, width)
    return [ref, large] if large > ref else [ref]


def theft_config(
    attack: str, seeds: int, ref: float, grid: list[float], bounds: tuple[float, float]
) -> dict[str, Any]:
    """config.json's `theft`: everything the section's measurements depend on."""
    return {
        "attack": attack,
        "knowledge": "label",
        "seeds": seeds,
        "params": dict(THEFT_PARAMS),
        "transfer_attack": TRANSFER_ATTACK,
        "transfer_eps": transfer_eps(ref, grid, bounds),
    }


def split(run: AuditRun, test_ds: Dataset, seeds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices of test_ds the attacker starts from, mask of the audited images to evaluate on).

    Seeds are drawn (with the run's seed) from the test images the audit does not evaluate on first,
    then from the audited ones, which are then left out of the evaluation."""
    gen = torch.Generator().manual_seed(run.seed + 1)
    order = torch.randperm(len(test_ds), generator=gen)
    audited = torch.zeros(len(test_ds), dtype=torch.bool)
    audited[run.pick] = True
    ranked = torch.cat([order[~audited[order]], order[audited[order]]])
    seed_idx = ranked[:seeds]
    taken = torch.zeros(len(test_ds), dtype=torch.bool)
    taken[seed_idx] = True
    evaluate = ~taken[run.pick]
    if not bool(evaluate.any()):
        raise invalid(
            "theft_seeds",
            seeds,
            f"fewer seeds than the {len(test_ds)} test images, leaving audited images to evaluate the copy on",
            "lower --theft-seeds.",
        )
    return seed_idx, evaluate


def theft_section(run: AuditRun, test_ds: Dataset, config: dict[str, Any]) -> dict[str, Any]:
    """Run (or reuse) the theft and the transfer measurements; the section of metrics.json and report.json."""
    return run.one_step("theft", config, lambda: _measure(run, test_ds, config))


def _measure(run: AuditRun, test_ds: Dataset, config: dict[str, Any]) -> dict[str, Any]:
    seed_idx, evaluate = split(run, test_ds, config["seeds"])
    run.status(f"{config['attack']} from {config['seeds']} seeds")
    x_eval, y_eval = run.x[evaluate], run.y[evaluate]
    eval_ds = Dataset(x_eval.cpu(), y_eval.cpu(), classes=run.classes, name="audited images")
    attack = THEFTS.get(config["attack"])(**{**config["params"], "bounds": run.bounds})
    with torch.random.fork_rng(devices=[]):  # the substitute's initialisation: same whatever ran before
        torch.manual_seed(run.seed)
        result = attack(run.oracle, test_ds.x[seed_idx], eval_ds, seed=run.seed)
    summary = result.summary()
    run.tick()
    run.status("transfer")
    rows = transfer_attack(
        result.substitute,
        run.oracle,
        x_eval,
        y_eval,
        attack=config["transfer_attack"],
        eps_grid=config["transfer_eps"],
        bounds=run.bounds,
        seed=run.seed,
    )
    for row in rows:
        row["eps_label"] = eps_label(row["eps"], bounds=run.bounds)
    run.tick()
    return {
        "label": "Jacobian-based substitute training",
        "n_eval": len(x_eval),
        "seed_index": seed_idx.tolist(),
        "result": {k: v for k, v in summary.items() if k != "config"},
        "queries": summary["queries"],
        "fidelity": summary["fidelity"],
        "accuracy": summary["accuracy"],
        "oracle_accuracy": summary["oracle_accuracy"],
        "curve": summary["curve"],
        "transfer": rows,
    }
