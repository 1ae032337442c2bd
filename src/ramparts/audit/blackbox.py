"""The audit's black-box section: success rate against the query budget per image.

Each check (a score- or label-based attack) runs at every budget of the grid, ascending, with the view
enforcing `max_queries=B`: an attack run with budget B is exactly "success within B queries per image".
As with the eps curves, an image fooled within a smaller budget counts as fooled at every larger one (an
attacker with more queries could have run the smaller attack) and is not attacked again, so each curve
only goes up. The attacks see only what their knowledge allows (scores or labels), through the views.
Steps are recorded in the run folder like the eps sweeps and reused on resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ramparts.audit.checks import BlackBoxCheck
from ramparts.report.summary import eps_label
from ramparts.threat import ThreatModel

if TYPE_CHECKING:
    from ramparts.audit.runner import AuditRun

COUNTING = (
    "an image counts as fooled within a budget when the attack fooled it with at most that many queries "
    "per image, at this budget or a smaller one"
)
# The per-check arrays in adv_examples.npz: `bb_<key>_<suffix>`.
ARRAYS = ("x_adv", "budget_broken", "queries")


def array_prefix(key: str) -> str:
    return "bb_" + key.replace("-", "_")


def started_key(key: str) -> str:
    """The key `AuditRun.started` holds for a black-box check (distinct from the white-box checks')."""
    return "bb:" + key


def threat_for(
    check: BlackBoxCheck, *, ref: float, l2_eps: float, bounds: tuple[float, float]
) -> ThreatModel:
    """The check's threat model: linf at the reference eps, l2 at the section's L2 eps; untargeted."""
    return ThreatModel(norm=check.norm, eps=ref if check.norm == "linf" else l2_eps, bounds=bounds)


def budget_sweep(
    run: AuditRun,
    check: BlackBoxCheck,
    budgets: list[int],
    threat: ThreatModel,
    n: int,
    on_step: Callable[[], None],
) -> dict[str, Any]:
    """Run `check` at each budget on the first `n` audited samples (the clean mistakes are not attacked)."""
    run.started.add(started_key(check.key))
    x, y, correct = run.x[:n], run.y[:n], run.correct[:n]
    prefix = array_prefix(check.key)
    section: dict[str, Any] = {
        "key": check.key,
        "label": check.label,
        "attack": check.attack,
        "knowledge": check.knowledge,
        "norm": check.norm,
        "eps": threat.eps_value,
        "eps_label": eps_label(threat.eps_value, bounds=run.bounds)
        if check.norm == "linf"
        else f"{threat.eps_value:g}",
        "threat": threat.summary(),
        "n": len(x),
        "attacked": int(correct.sum()),
        "rows": [],
    }
    done, budget_broken, x_adv, queries = _recorded(run, check, budgets, threat, n)
    broken = ~correct | ~torch.isnan(budget_broken)
    for i, budget in enumerate(budgets):
        if i < len(done):
            section["rows"].append(done[i])
            run.reused += 1
            on_step()
            continue
        run.status(f"{check.label} {budget} queries")
        alive = (~broken).nonzero()[:, 0]
        summary = None
        if len(alive):
            attack = check.build(budget)
            res = attack(run.oracle, x[alive], y[alive], threat, seed=run.seed, max_queries=budget)
            won = res.success & (res.adv_pred != y[alive])
            broken[alive[won]] = True
            budget_broken[alive[won]] = float(budget)
            x_adv[alive[won]] = res.x_adv[won]
            queries[alive[won]] = res.queries[won].to(queries.dtype)
            summary = res.summary()
        fooled = broken & correct
        section["rows"].append(
            {
                "budget": budget,
                "success_rate": float(fooled.sum()) / max(1, int(correct.sum())),
                "robust_accuracy": float((~broken).float().mean()),
                "fooled": int(fooled.sum()),
                "attacked": len(alive),
                "newly_broken": 0 if summary is None else round(summary["success_rate"] * len(alive)),
                "summary": summary,
            }
        )
        run.arrays.update(
            {
                f"{prefix}_x_adv": x_adv.cpu().numpy(),
                f"{prefix}_budget_broken": budget_broken.cpu().numpy(),
                f"{prefix}_queries": queries.cpu().numpy(),
            }
        )
        run.blackbox[check.key] = section
        run.write_metrics()
        on_step()
    spent = queries[~torch.isnan(budget_broken)]
    section["median_queries_to_fool"] = float(spent.median()) if len(spent) else None
    run.arrays.update(
        {
            f"{prefix}_x_adv": x_adv.cpu().numpy(),
            f"{prefix}_budget_broken": budget_broken.cpu().numpy(),
            f"{prefix}_queries": queries.cpu().numpy(),
        }
    )
    run.blackbox[check.key] = section
    return section


def _recorded(
    run: AuditRun, check: BlackBoxCheck, budgets: list[int], threat: ThreatModel, n: int
) -> tuple[list[dict[str, Any]], torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the recorded rows of the first budgets, budget_broken, x_adv, queries) to continue the sweep from.

    The arrays may be one step ahead of metrics.json (written first): samples fooled at a budget past the
    recorded ones are rolled back. A record of another eps or other samples is measured again.
    """
    x = run.x[:n]
    budget_broken = torch.full((len(x),), math.nan, device=x.device, dtype=torch.float64)
    queries = torch.zeros(len(x), device=x.device, dtype=torch.int64)
    fresh: tuple[list[dict[str, Any]], torch.Tensor, torch.Tensor, torch.Tensor] = (
        [],
        budget_broken,
        x.clone(),
        queries,
    )
    prefix = array_prefix(check.key)
    stored = run.recorded.metrics.get("blackbox", {}).get(check.key)
    arrays = run.recorded.arrays
    if not isinstance(stored, dict) or stored.get("eps") != threat.eps_value or stored.get("n") != len(x):
        return fresh
    rows = stored.get("rows", [])
    if not rows or [r.get("budget") for r in rows] != budgets[: len(rows)]:
        return fresh
    if not all(f"{prefix}_{s}" in arrays for s in ARRAYS):
        return fresh
    budget_broken = torch.as_tensor(arrays[f"{prefix}_budget_broken"], dtype=torch.float64).to(x.device)
    x_adv = torch.as_tensor(arrays[f"{prefix}_x_adv"]).to(x.device)
    queries = torch.as_tensor(arrays[f"{prefix}_queries"], dtype=torch.int64).to(x.device)
    if budget_broken.shape != (len(x),) or x_adv.shape != x.shape or queries.shape != (len(x),):
        return fresh
    ahead = budget_broken > rows[-1]["budget"]
    budget_broken[ahead] = math.nan
    x_adv[ahead] = x[ahead]
    queries[ahead] = 0
    robust = float((run.correct[:n] & torch.isnan(budget_broken)).float().mean())
    if robust != rows[-1]["robust_accuracy"]:  # arrays of another run: measure again
        return fresh
    return rows, budget_broken, x_adv, queries


def white_box_reference(
    run: AuditRun, section: dict[str, Any], masks: dict[str, list[torch.Tensor]], grid: list[float]
) -> dict[str, Any] | None:
    """What the white-box battery reaches on the same images and threat: the fraction of the attacked
    (correctly classified) images that any linf attack fooled at the same eps, or that a minimum-norm L2
    attack (C&W) fooled within the same L2 distance. None when the battery measured neither."""
    n = section["n"]
    correct = run.correct[:n]
    attacked = int(correct.sum())
    if attacked == 0:
        return None
    if section["norm"] == "linf":
        at = next((i for i, e in enumerate(grid) if math.isclose(e, section["eps"], abs_tol=1e-12)), None)
        if at is None or not masks:
            return None
        broken = torch.zeros_like(correct)
        for per_eps in masks.values():
            broken |= per_eps[at][:n]
        labels = [k for k in masks]
        return {
            "label": "white-box linf battery",
            "checks": labels,
            "success_rate": float((broken & correct).sum()) / attacked,
        }
    for key, stats in run.minimal.items():
        if stats.get("norm") != "l2":
            continue
        dist = run.arrays.get(f"{key.replace('-', '_')}_distance")
        if dist is None:
            continue
        d = np.asarray(dist)[:n]
        fooled = np.isfinite(d) & (d <= section["eps"] + 1e-9) & correct.cpu().numpy()
        return {
            "label": f"{stats['label']} (white-box)",
            "checks": [key],
            "success_rate": float(fooled.sum()) / attacked,
        }
    return None
