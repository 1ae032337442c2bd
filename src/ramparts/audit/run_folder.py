"""The run folder: config.json (what identifies a run), metrics.json and adv_examples.npz (what it measured).

A folder whose config.json matches the new run's configuration is resumed: the measurements recorded
there are reused. A folder of another configuration is refused unless `overwrite`, which removes the
files an audit writes (nothing else) and starts afresh.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ramparts.audit.checks import Check, l2_cap
from ramparts.errors import ValidationError, invalid
from ramparts.report.json import to_jsonable, write_json
from ramparts.report.summary import eps_label
from ramparts.threat import ThreatModel

# Every file an audit writes into its folder (what `overwrite` removes).
RUN_FILES: tuple[str, ...] = (
    "config.json",
    "metrics.json",
    "adv_examples.npz",
    "model.json",
    "model.safetensors",
    "classifier.json",  # a defended model's folder (ramparts.defenses.persist)
    "classifier.safetensors",
    "defense.safetensors",
    "defense.json",  # the defence section's record
    "report.html",
    "report.json",
)
COUNTING = "a sample counts as broken at eps when fooled at eps or at a smaller eps of the grid"


class RunFolderMismatchError(ValidationError):
    """The run folder holds a run of another configuration."""

    def __init__(
        self,
        folder: Path,
        differences: Sequence[str],
        *,
        param: str = "out_dir",
        fix: str = "pass another out_dir, or overwrite=True to start afresh.",
    ) -> None:
        self.folder, self.differences = folder, list(differences)
        expected = (
            "a new folder or the run folder of this same configuration, but its config.json differs in "
            + ", ".join(self.differences)
        )
        super().__init__(str(invalid(param, str(folder), expected, fix)))


@dataclass
class Recorded:
    """What an earlier run of the same configuration left in the folder (empty when nothing)."""

    metrics: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def run_config(
    *,
    checks: Sequence[Check],
    grid: Sequence[float],
    ref: float,
    n: int,
    seed: int,
    bounds: tuple[float, float],
    input_numel: int,
    identity: Mapping[str, Any],
    blackbox: Mapping[str, Any] | None = None,
    theft: Mapping[str, Any] | None = None,
    membership: Mapping[str, Any] | None = None,
    poisoning: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The run's configuration (config.json): everything its measurements depend on."""
    width = bounds[1] - bounds[0]
    return {
        "n": n,
        "seed": seed,
        "eps_grid": list(grid),
        "eps_grid_labels": [eps_label(e, bounds=bounds) for e in grid],
        "reference_eps": ref,
        "bounds": list(bounds),
        "checks": [c.summary() for c in checks],
        "threat_models": {
            c.key: ThreatModel(
                norm=c.norm, eps=l2_cap(input_numel, width) if c.minimizes_norm else ref, bounds=bounds
            ).summary()
            for c in checks
        },
        "counting": COUNTING,
        "blackbox": dict(blackbox) if blackbox else None,
        "theft": dict(theft) if theft else None,
        "membership": dict(membership) if membership else None,
        "poisoning": dict(poisoning) if poisoning else None,
        "identity": dict(identity),
    }


def open_run_folder(out: Path, config: Mapping[str, Any], *, overwrite: bool = False) -> Recorded | None:
    """Prepare `out` for a run of `config` and write config.json.

    Returns what an earlier run of the identical configuration recorded there (resume), or None for a
    fresh start. Raises `RunFolderMismatchError` when config.json is another configuration's and not `overwrite`.
    """
    out.mkdir(parents=True, exist_ok=True)
    config_file = out / "config.json"
    recorded = None
    if overwrite:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
            (out / f"{name}.tmp").unlink(missing_ok=True)
    elif config_file.is_file():
        try:
            stored = json.loads(config_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            stored = None
        differences = _differences(stored, to_jsonable(config))
        if differences:
            raise RunFolderMismatchError(out, differences)
        recorded = Recorded(_read_metrics(out / "metrics.json"), _read_arrays(out / "adv_examples.npz"))
    write_json(config, config_file)
    return recorded


def write_metrics(out: Path, metrics: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """adv_examples.npz, then metrics.json: the arrays are never behind the measurements that cite them."""
    save_arrays(out / "adv_examples.npz", arrays)
    write_json(metrics, out / "metrics.json")


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """np.savez of named arrays via a temporary file (no object arrays, so no pickles:
    np.load(allow_pickle=False) reads it)."""
    tmp = path.with_name(path.name + ".tmp")
    save: Callable[..., None] = np.savez
    with tmp.open("wb") as f:
        save(f, **arrays)
    tmp.replace(path)


def _differences(stored: Any, config: Mapping[str, Any]) -> list[str]:
    """The keys (dotted one level into `identity`) where the stored config differs from `config`."""
    if not isinstance(stored, dict):
        return ["everything (it is not a ramparts audit configuration)"]
    keys = [k for k in dict.fromkeys([*config, *stored]) if stored.get(k) != config.get(k)]
    out: list[str] = []
    for key in keys:
        old, new = stored.get(key), config.get(key)
        if key == "identity" and isinstance(old, dict) and isinstance(new, dict):
            out += [f"identity.{k}" for k in dict.fromkeys([*new, *old]) if old.get(k) != new.get(k)]
        else:
            out.append(key)
    model = config.get("identity", {}).get("model", {})
    if not out and isinstance(model, dict) and "weights_sha256" in model and model["weights_sha256"] is None:
        out.append("identity.model (this model cannot be fingerprinted, so it is never resumed)")
    return out


def _read_metrics(path: Path) -> dict[str, Any]:
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return {}
