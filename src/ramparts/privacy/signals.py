"""What a membership attack reads from a model's answer to one record, and the queries it sends.

- `loss`: the cross-entropy -log p_y (Yeom et al. 2018);
- `logit`: logit-scaled confidence log(p_y / (1 - p_y)) = log p_y - logsumexp_{j != y} log p_j, the
  near-Gaussian statistic of LiRA (Carlini et al. 2022), computed from log-probabilities so it stays
  finite where p_y rounds to 1;
- `hinge`: log p_y - max_{j != y} log p_j, equal to the logit margin z_y - max_{j != y} z_j.

`augment(x, views)` builds the augmented queries of LiRA / label-only attacks: the identity, the
horizontal mirror and shifts by whole pixels (zero padding), in a fixed order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ramparts.errors import invalid

__all__ = ["SIGNALS", "augment", "check_views", "signal"]

SIGNALS: tuple[str, ...] = ("logit", "hinge", "loss")


def signal(log_probs: Tensor, y: Tensor, kind: str = "logit") -> Tensor:
    """The per-record statistic `kind` from class log-probabilities [..., N, C] and labels [N] -> [..., N]
    (leading dimensions: models, views)."""
    if kind not in SIGNALS:
        raise invalid("signal", kind, f"one of {', '.join(SIGNALS)}")
    index = y[:, None].expand(*log_probs.shape[:-1], 1)
    true = log_probs.gather(-1, index).squeeze(-1)
    if kind == "loss":
        return -true
    others = log_probs.scatter(-1, index, float("-inf"))
    if kind == "logit":
        return true - torch.logsumexp(others, dim=-1)
    return true - others.max(dim=-1).values


def check_views(views: Sequence[str]) -> tuple[str, ...]:
    """Validated view names: "id", "mirror", "shift:DX,DY" (whole pixels)."""
    if isinstance(views, str) or not views:
        raise invalid("views", views, 'a non-empty list such as ["id", "mirror", "shift:1,0"]')
    for v in views:
        if v in ("id", "mirror"):
            continue
        parts = v.removeprefix("shift:").split(",") if v.startswith("shift:") else []
        if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
            raise invalid("views", v, '"id", "mirror" or "shift:DX,DY" with whole pixels, e.g. "shift:2,-1"')
    return tuple(views)


def augment(x: Tensor, views: Sequence[str]) -> Tensor:
    """[V, N, C, H, W]: every record under each view, in the order of `views`."""
    out = []
    for v in check_views(views):
        if v == "id":
            out.append(x)
        elif v == "mirror":
            out.append(x.flip(-1))
        else:
            dx, dy = (int(p) for p in v.removeprefix("shift:").split(","))
            out.append(_shift(x, dx, dy))
    return torch.stack(out)


def _shift(x: Tensor, dx: int, dy: int) -> Tensor:
    """Content moved right by dx and down by dy pixels; the uncovered border is zero."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (abs(dx), abs(dx), abs(dy), abs(dy)))
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[..., top : top + h, left : left + w]
