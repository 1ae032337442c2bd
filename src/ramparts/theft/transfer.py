"""Transfer attacks: craft adversarial examples white-box on a stolen substitute, measure them on the oracle.

Papernot et al. (AsiaCCS 2017), section 5: the adversary crafts with FGSM (here also PGD and MI-FGSM,
ramparts' own attacks from `evasion/`) on its substitute and sends the results to the remote model;
the transfer rate is the fraction the oracle misclassifies. The oracle is only asked for labels, through
a counting label view, so the cost of the measurement in queries is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ramparts.errors import RampartsTypeError, invalid, unknown
from ramparts.evasion import ATTACKS
from ramparts.oracles import as_oracle
from ramparts.oracles.base import Knowledge
from ramparts.targets import view_for
from ramparts.threat import ThreatModel

__all__ = ["TRANSFER_ATTACKS", "transfer_attack"]

TRANSFER_ATTACKS: tuple[str, ...] = ("fgsm", "pgd", "mifgsm")


def transfer_attack(
    substitute: Any,
    oracle: Any,
    x: Tensor,
    y: Tensor,
    *,
    attack: str = "fgsm",
    eps_grid: Sequence[float] = (0.1, 0.2, 0.3),
    norm: str = "linf",
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
    noise_baseline: bool = True,
    **hyper: Any,
) -> list[dict[str, Any]]:
    """Craft `attack` (with hyperparameters `hyper`) on `substitute` (white-box; an `nn.Module` or a
    gradient oracle) for each eps of `eps_grid`, and measure on `oracle` (labels only).

    One row per eps (JSON-ready): `oracle_error` (fraction of `x` the oracle misclassifies after the
    attack: the paper's transfer rate), `transfer_rate` (the same among the samples the oracle classifies
    correctly when clean), `substitute_fooled` (fraction the substitute misclassifies),
    `also_fooled_substitute` (among the oracle's mistakes, the fraction where the substitute was fooled
    too), `noise_error` (with `noise_baseline`: the oracle's error on random noise of the same norm
    and eps, the floor an attack must beat), `oracle_queries` (labels asked at this eps) and
    `queries_total` (running total, the clean labels included). Crafting runs with early stopping off:
    stopping at the substitute's boundary transfers badly.
    """
    if attack not in TRANSFER_ATTACKS:
        raise unknown("attack", attack, TRANSFER_ATTACKS)
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise invalid("x/y", (type(x).__name__, type(y).__name__), "torch tensors", cls=RampartsTypeError)
    if len(x) == 0 or len(x) != len(y):
        raise invalid("x/y", (tuple(x.shape), tuple(y.shape)), "a non-empty batch with one label per input")
    grid = [float(e) for e in eps_grid]
    if not grid:
        raise invalid("eps_grid", list(eps_grid), "at least one eps")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise invalid("seed", seed, "an integer", cls=RampartsTypeError)
    shape = tuple(x.shape[1:])
    target = as_oracle(oracle, shape)
    sub = as_oracle(substitute, shape)
    maker = ATTACKS.get(attack)
    crafter = maker(**hyper)
    box = view_for(target, Knowledge.LABEL, 1)
    x_o, y_o = x.to(target.device), y.to(target.device)

    def ask(rows: Tensor) -> Tensor:
        return box.labels(rows, torch.zeros(len(rows), dtype=torch.int64, device=rows.device))

    with target.evaluating():
        clean_ok = ask(x_o) == y_o
        rows: list[dict[str, Any]] = []
        gen = torch.Generator(device=target.device).manual_seed(seed)
        for eps in grid:
            threat = ThreatModel(norm=norm, eps=eps, bounds=bounds)
            before = int(box.queries.sum())
            res = crafter(sub, x, y, threat, seed=seed, early_stop=False)
            x_adv = res.x_adv.to(target.device)
            oracle_wrong = ask(x_adv) != y_o
            sub_wrong = (res.adv_pred != res.labels).to(target.device)
            row: dict[str, Any] = {
                "attack": attack,
                "eps": eps,
                "norm": norm,
                "n": len(x),
                "oracle_clean_accuracy": float(clean_ok.float().mean()),
                "oracle_error": float(oracle_wrong.float().mean()),
                "transfer_rate": _rate(oracle_wrong & clean_ok, clean_ok),
                "substitute_fooled": float(sub_wrong.float().mean()),
                "also_fooled_substitute": _rate(oracle_wrong & sub_wrong, oracle_wrong),
            }
            if noise_baseline:
                noisy = _noise(x_o, threat, gen)
                row["noise_error"] = float((ask(noisy) != y_o).float().mean())
            row["oracle_queries"] = int(box.queries.sum()) - before
            row["queries_total"] = int(box.queries.sum())
            row["attack_summary"] = {"config": res.config, "seed": seed}
            rows.append(row)
    return rows


def _rate(hit: Tensor, among: Tensor) -> float | None:
    total = int(among.sum())
    return None if total == 0 else int(hit.sum()) / total


def _noise(x: Tensor, threat: ThreatModel, gen: torch.Generator) -> Tensor:
    """Random perturbation at the full budget: random signs for linf, a random direction for l2."""
    eps = threat.eps_value
    lo, hi = threat.bounds
    if threat.norm == "linf":
        delta = torch.randint(0, 2, x.shape, generator=gen, device=x.device).to(x.dtype) * 2 - 1
        return (x + eps * delta).clamp(lo, hi)
    if threat.norm == "l2":
        delta = torch.randn(x.shape, generator=gen, device=x.device)
        delta = delta / delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.ndim - 1)))
        return (x + eps * delta).clamp(lo, hi)
    raise invalid("norm", threat.norm, "linf or l2 for the noise baseline", "pass noise_baseline=False")
