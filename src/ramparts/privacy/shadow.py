"""Shadow (reference) models: K models of the target's recipe, each trained on a random part of a
population that contains the records under test, so that every record is IN some models and OUT of
the others (Shokri et al. 2017; the construction of LiRA, Carlini et al. 2022).

Models train in chunks through `ramparts.parallel` (in-process, or a Ray cluster), each chunk together
on one device with `privacy.batched.train_models`. With `run_dir`, each model is saved as soon as its
chunk finishes (safetensors, through the zoo) next to `shadows.json` (the recipe, the seed and the
masks' digest), and a new call with the same configuration loads the finished models instead of
training them again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ramparts.data import Dataset
from ramparts.errors import invalid
from ramparts.parallel import Executor, InProcessExecutor
from ramparts.privacy.batched import train_models
from ramparts.privacy.signals import augment
from ramparts.zoo import ARCHITECTURES, build

__all__ = ["ShadowPool", "ShadowRecipe", "train_shadows"]

_STATE = "shadows.json"


@dataclass(frozen=True)
class ShadowRecipe:
    """How every shadow model is built and trained (the attacker's copy of the target's recipe)."""

    arch: str
    arch_config: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    precision: str = "fp32"
    compiled: bool = False

    def full_config(self, data: Dataset) -> dict[str, Any]:
        c, h, _ = data.input_shape
        return {**self.arch_config, "in_channels": c, "input_size": h, "num_classes": len(data.classes)}


@dataclass
class ShadowPool:
    """K trained models and `masks[k, i]`: record i of `data` was in model k's training set."""

    data: Dataset
    masks: Tensor
    recipe: ShadowRecipe
    states: list[dict[str, Tensor]]
    seed: int = 0
    _last: tuple[tuple[Any, ...], Tensor] | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.states)

    def model(self, k: int, device: str | torch.device = "cpu") -> nn.Module:
        model = build(self.recipe.arch, **self.recipe.full_config(self.data))
        model.load_state_dict(self.states[k])
        return model.to(device).eval()

    @torch.no_grad()
    def log_probs(
        self, x: Tensor, views: Sequence[str] = ("id",), device: str | torch.device = "cpu", batch: int = 1024
    ) -> Tensor:
        """[K, V, N, C]: every shadow model's log-probabilities for every view of every record.

        The last answer is kept: several attacks scoring the same records with the same pool (the audit's
        LiRA online and offline) pay for the shadow models' passes once. The key includes the tensor's
        version counter, so an in-place change of `x` is never served a stale answer.
        """
        key = (x.data_ptr(), x._version, tuple(x.shape), x.dtype, str(x.device), tuple(views), str(device))
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        xs = augment(x.to(device), views)
        out = []
        for k in range(len(self)):
            model = self.model(k, device)
            rows = [model(chunk).log_softmax(1) for chunk in xs.flatten(0, 1).split(batch)]
            out.append(torch.cat(rows).view(xs.shape[0], xs.shape[1], -1))
        answer = torch.stack(out)
        self._last = (key, answer)
        return answer


def train_shadows(
    data: Dataset,
    k: int,
    recipe: ShadowRecipe,
    *,
    seed: int = 0,
    fraction: float = 0.5,
    device: str | torch.device = "cpu",
    executor: Executor | None = None,
    chunk: int = 8,
    batched: bool | None = None,
    run_dir: str | Path | None = None,
    on_model: Callable[[int], None] | None = None,
) -> ShadowPool:
    """Train `k` shadow models, each on round(fraction * N) records of `data` drawn with its own seed.

    `batched` (None: on CUDA only) trains each chunk together with vmap; on a CPU, vmapped convolutions
    measured 2-4x slower than one model at a time (benchmarks/shadow_training.py), with equal results."""
    for name, value, low in (("k", k, 1), ("chunk", chunk, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise invalid(name, value, f"an integer >= {low}")
    if recipe.arch not in ARCHITECTURES:
        raise invalid("recipe.arch", recipe.arch, f"one of {', '.join(sorted(ARCHITECTURES))}")
    n = len(data)
    size = round(fraction * n)
    if not 0 < fraction < 1 or not 1 <= size < n:
        raise invalid("fraction", fraction, f"in (0, 1), leaving each model between 1 and {n - 1} records")
    subsets = torch.stack(
        [
            torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + i))[:size]
            for i in range(k)
        ]
    )
    masks = torch.zeros(k, n, dtype=torch.bool)
    masks.scatter_(1, subsets, True)
    folder = Path(run_dir) if run_dir is not None else None
    identity = _identity(data, recipe, seed, masks)
    states: dict[int, dict[str, Tensor]] = _load(folder, identity, k) if folder is not None else {}
    todo = [list(range(s, min(s + chunk, k))) for s in range(0, k, chunk)]
    todo = [ids for ids in todo if any(i not in states for i in ids)]
    together = str(device).startswith("cuda") if batched is None else batched
    tasks = [
        _Chunk(
            recipe,
            recipe.full_config(data),
            data.x,
            data.y,
            subsets[ids],
            [seed * 100_003 + i for i in ids],
            str(device),
            together,
        )
        for ids in todo
    ]
    runner = executor or InProcessExecutor()
    for pos, trained in runner.map(_train_chunk, tasks, num_gpus=1 if str(device).startswith("cuda") else 0):
        for i, state in zip(todo[pos], trained, strict=True):
            states[i] = state
            if folder is not None:
                _save(folder, identity, i, state)
            if on_model is not None:
                on_model(i)
    return ShadowPool(data, masks, recipe, [states[i] for i in range(k)], seed)


@dataclass(frozen=True)
class _Chunk:
    recipe: ShadowRecipe
    config: dict[str, Any]
    x: Tensor
    y: Tensor
    subsets: Tensor
    seeds: list[int]
    device: str
    batched: bool


def _train_chunk(task: _Chunk) -> list[dict[str, Tensor]]:
    """One chunk of shadow models trained together (a module-level function, so Ray can ship it)."""
    r = task.recipe
    return train_models(
        r.arch,
        task.config,
        task.x,
        task.y,
        task.subsets,
        task.seeds,
        epochs=r.epochs,
        batch_size=r.batch_size,
        lr=r.lr,
        weight_decay=r.weight_decay,
        device=task.device,
        batched=task.batched,
        precision=r.precision,
        compiled=r.compiled,
    )


def _identity(data: Dataset, recipe: ShadowRecipe, seed: int, masks: Tensor) -> dict[str, Any]:
    digest = hashlib.sha256()
    for t in (data.x, data.y, masks):
        digest.update(t.contiguous().numpy().tobytes())
    return json.loads(json.dumps({"recipe": asdict(recipe), "seed": seed, "sha256": digest.hexdigest()}))


def _load(folder: Path, identity: dict[str, Any], k: int) -> dict[int, dict[str, Tensor]]:
    file = folder / _STATE
    if not file.is_file():
        return {}
    stored = json.loads(file.read_text(encoding="utf-8"))
    if stored.get("identity") != identity:
        raise invalid(
            "run_dir",
            str(folder),
            f"a new folder or one holding these same shadow models, but its {_STATE} differs",
            "pass another run_dir, or delete the folder to start afresh",
        )
    return {i: load_file(folder / f"shadow-{i:04d}.safetensors") for i in stored["done"] if i < k}


def _save(folder: Path, identity: dict[str, Any], i: int, state: dict[str, Tensor]) -> None:
    """The model first, then the JSON that lists it as done (atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"shadow-{i:04d}.tmp.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, folder / f"shadow-{i:04d}.safetensors")
    file = folder / _STATE
    done = json.loads(file.read_text(encoding="utf-8"))["done"] if file.is_file() else []
    record = {"identity": identity, "done": sorted({*done, i})}
    tmp_json = folder / (_STATE + ".tmp")
    tmp_json.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp_json, file)
