"""report.json: strict JSON (no NaN), tensors and numpy values turned into plain Python."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


def to_jsonable(value: Any) -> Any:
    """A copy of `value` that `json.dumps(..., allow_nan=False)` accepts; NaN and inf become None."""
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray | np.generic):
        return to_jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(asdict(value))
    return str(value)


def dumps(value: Any) -> str:
    """Indented strict JSON of `value`."""
    return json.dumps(to_jsonable(value), indent=2, allow_nan=False)


def write_json(value: Any, path: str | os.PathLike[str]) -> Path:
    """Write `value` as strict JSON (via a temporary file, so a reader never sees half a file)."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(dumps(value) + "\n", encoding="utf-8")
    tmp.replace(file)
    return file
