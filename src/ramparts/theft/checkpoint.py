"""Step checkpoints for resumable thefts: a run folder holds the last completed step of one theft.

A theft that runs in steps (Jacobian rounds, Knockoff phases) saves after each completed step: the
substitute (safetensors + JSON, through the zoo), its arrays (npz, read with `allow_pickle=False`) and a
JSON state that names them, written last and atomically, so that it marks the step complete. A new call
with the same identity (the theft's parameters, seed set, budget, device...) resumes after that step; a
folder holding another theft is refused with the differing keys named. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ramparts.errors import invalid
from ramparts.theft.base import TheftContext
from ramparts.zoo import save_model

__all__ = ["Step", "identity", "inconsistent", "load_step", "save_step", "tensor_sha256"]


@dataclass(frozen=True)
class Step:
    """The last completed step read back from a run folder."""

    step: int
    arrays: dict[str, Tensor]
    weights: Path
    curve: list[tuple[int, float]]
    queries: int
    budget_exhausted: bool
    extra: dict[str, Any]


def tensor_sha256(x: Tensor) -> str:
    """Digest of a tensor's values (dtype and shape not included: record those beside it)."""
    return hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def identity(fmt: str, ctx: TheftContext, params: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What must match for a folder to be resumed: the format, the theft's parameters, the seed set, the
    number of classes, the budget left and the device, plus the theft's own `extra` keys."""
    ident = {
        "format": fmt,
        "params": params,
        "seed_sha256": tensor_sha256(ctx.seed_x),
        "seed_shape": list(ctx.seed_x.shape),
        "num_classes": ctx.num_classes,
        "budget": ctx.remaining(),
        "device": ctx.device.type,
        **extra,
    }
    # Through JSON once, so that tuples compare equal to the lists read back from the folder.
    return dict(json.loads(json.dumps(ident, sort_keys=True)))


def save_step(
    folder: Path,
    state_name: str,
    ident: dict[str, Any],
    step: int,
    ctx: TheftContext,
    model: nn.Module,
    arch: str,
    config: dict[str, Any],
    arrays: dict[str, Tensor],
    extra: dict[str, Any] | None = None,
) -> None:
    """Arrays and weights of `step` under step-named files, then `state_name` (JSON) pointing at them;
    the files of earlier steps are removed after."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"step-{step:03d}"
    arrays_file = folder / f"arrays-{stem}.npz"
    tmp = folder / f"arrays-{stem}.tmp.npz"
    host: dict[str, Any] = {k: v.detach().cpu().numpy() for k, v in arrays.items()}
    np.savez(tmp, allow_pickle=False, **host)
    os.replace(tmp, arrays_file)
    weights = save_model(model, folder / f"substitute-{stem}", arch=arch, config=config)
    state = {
        **ident,
        "step": step,
        "queries": ctx.queries,
        "curve": [list(p) for p in ctx.curve],
        "budget_exhausted": ctx.budget_exhausted,
        "weights": weights.name,
        "arrays": arrays_file.name,
        "extra": extra or {},
    }
    _write_json(folder / state_name, state)
    for old in folder.glob("*-step-*"):
        if stem not in old.name:
            old.unlink(missing_ok=True)


def load_step(folder: Path, state_name: str, ident: dict[str, Any]) -> Step | None:
    """The last completed step in `folder`, None when it holds none; another theft's folder is refused."""
    file = folder / state_name
    if not file.is_file():
        return None
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid(
            "run_dir", str(folder), f"a readable {state_name}", f"delete it to start afresh ({exc})"
        ) from exc
    differ = sorted(k for k, v in ident.items() if state.get(k) != v)
    if differ:
        raise invalid(
            "run_dir",
            str(folder),
            f"a new folder or one holding this same theft, but its {state_name} differs in {', '.join(differ)}",
            "pass another run_dir, or delete the folder to start afresh",
        )
    with np.load(folder / state["arrays"], allow_pickle=False) as data:
        arrays = {k: torch.from_numpy(np.array(data[k])) for k in data.files}
    return Step(
        step=int(state["step"]),
        arrays=arrays,
        weights=folder / state["weights"],
        curve=[(int(q), float(f)) for q, f in state["curve"]],
        queries=int(state["queries"]),
        budget_exhausted=bool(state.get("budget_exhausted", False)),
        extra=dict(state.get("extra", {})),
    )


def inconsistent(folder: Path, state_name: str) -> Exception:
    """The error for a state file that does not match its own arrays."""
    return invalid("run_dir", str(folder), f"{state_name} consistent with its arrays", "delete the folder")


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
