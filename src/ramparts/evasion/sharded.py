"""Sharded evaluation: one attack over a large batch, cut into shards that run in parallel on devices.

Each task carries its shard, the attack (class and parameters), the threat model and the model as zoo
files (a path) or as a :class:`ZooModel` (architecture, config and weights as tensors): modules are never
pickled. A task builds a `TorchOracle` on its device (a :class:`~ramparts.parallel.DeviceExecutor`
worker's own, or ``device``), runs the attack with the shared seed and returns the result on the CPU;
the results are merged in order with `EvasionResult.concat`. A shard is exactly one chunk of
``attack(oracle, x, y, threat, seed=seed, batch_size=shard_size)``, so the merged result equals that
single-process run wherever the device computes the same bits (the same device type and thread count;
on CUDA, deterministic kernels: `ramparts.parallel.deterministic`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ramparts import zoo
from ramparts.errors import RampartsTypeError, check_int, invalid
from ramparts.evasion.base import EvasionAttack
from ramparts.oracles import TorchOracle
from ramparts.parallel import Executor, InProcessExecutor, worker_device
from ramparts.results import EvasionResult
from ramparts.threat import ThreatModel

__all__ = ["ZooModel", "evaluate_sharded", "robust_accuracy_curve"]

# TorchOracle's arguments that evaluate_sharded sets itself; the others may come in `oracle_options`.
_OWN_ORACLE_ARGS = frozenset({"self", "model", "input_shape", "num_classes", "mean", "std", "device"})
# The oracle last built in this process (a worker keeps its model between shards): key, oracle.
_CACHE: dict[tuple[Any, ...], TorchOracle] = {}


@dataclass(frozen=True)
class ZooModel:
    """A zoo architecture with its weights, sent to workers as tensors instead of files.

    ``mean``/``std`` normalise inside the oracle, ``input_shape`` is the sample shape (probed from ``x``
    when None). Build one from a trained module with :meth:`from_module`.
    """

    arch: str
    config: dict[str, Any]
    state: dict[str, Tensor] = field(repr=False)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_shape: tuple[int, ...] | None = None
    digest: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.arch not in zoo.ARCHITECTURES:
            raise invalid("model.arch", self.arch, f"one of {', '.join(sorted(zoo.ARCHITECTURES))}")
        if not self.digest:  # identifies the weights for a worker's cache, computed once here
            sha = hashlib.sha256(repr((self.arch, sorted(self.config.items()))).encode())
            for name, tensor in sorted(self.state.items()):
                sha.update(name.encode())
                sha.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            object.__setattr__(self, "digest", sha.hexdigest())

    @classmethod
    def from_module(
        cls,
        model: nn.Module,
        arch: str,
        config: Mapping[str, Any],
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        input_shape: Sequence[int] | None = None,
    ) -> ZooModel:
        """The zoo description of ``model`` (built by ``zoo.build(arch, **config)``), weights on the CPU."""
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        return cls(
            arch,
            dict(config),
            state,
            None if mean is None else tuple(mean),
            None if std is None else tuple(std),
            None if input_shape is None else tuple(input_shape),
        )


@dataclass(frozen=True)
class _Shard:
    """One task: the attack on rows of the batch, with everything needed to rebuild the oracle."""

    attack: EvasionAttack
    model: str | ZooModel
    x: Tensor
    y: Tensor
    targets: Tensor | None
    threat: ThreatModel
    seed: int
    max_queries: int | None
    early_stop: bool
    device: str | None
    oracle_options: dict[str, Any]


def evaluate_sharded(
    attack: EvasionAttack,
    model: str | os.PathLike[str] | ZooModel,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    *,
    shard_size: int,
    executor: Executor | None = None,
    seed: int = 0,
    targets: Tensor | None = None,
    max_queries: int | None = None,
    early_stop: bool = True,
    device: str | None = None,
    oracle_options: Mapping[str, Any] | None = None,
    on_shard: Callable[[int, EvasionResult], None] | None = None,
) -> EvasionResult:
    """Run ``attack`` on ``(x, y)`` in shards of ``shard_size`` through ``executor``; one merged result.

    ``model``: a model saved by ``zoo.save_model`` (prefix, folder, .json or .safetensors; its recorded
    ``extra.mean``/``extra.std``/``extra.input_shape`` apply) or a :class:`ZooModel`. ``device``: where
    each shard runs; None means the worker's device in a ``DeviceExecutor``, else the CPU (give
    ``"cuda"`` on a Ray cluster: each task then reserves one GPU). ``oracle_options``: further
    ``TorchOracle`` keyword arguments (e.g. ``batch_size``). ``on_shard(i, result)`` is called as shard
    ``i`` finishes. ``elapsed_s`` of the result is the sum of the shards' attack times, not wall time.
    Shards are views of ``x`` on the CPU; executors that send tasks elsewhere copy out only each shard's
    rows, as they send it (a ``DeviceExecutor`` while its workers compute the previous shards)."""
    if not isinstance(attack, EvasionAttack):
        raise invalid(
            "attack",
            attack,
            "an EvasionAttack instance",
            "e.g. ATTACKS.get('pgd')(steps=10)",
            cls=RampartsTypeError,
        )
    attack.validate_params()
    if not isinstance(threat, ThreatModel):
        raise invalid("threat", threat, "a ramparts.ThreatModel", cls=RampartsTypeError)
    check_int("shard_size", shard_size, 1)
    check_int("seed", seed, 0)
    if not isinstance(x, Tensor) or x.dim() < 2 or len(x) == 0:
        raise invalid("x", getattr(x, "shape", type(x).__name__), "a non-empty batch tensor (N, ...)")
    for name, value in (("y", y), ("targets", targets)):
        if value is not None and (not isinstance(value, Tensor) or value.shape != (len(x),)):
            raise invalid(
                name, getattr(value, "shape", type(value).__name__), f"a tensor of shape ({len(x)},)"
            )
    spec = _model_spec(model)
    options = _oracle_options(oracle_options)
    x, y = x.detach().cpu(), y.detach().cpu()
    tasks = [
        _Shard(
            attack,
            spec,
            x[start : start + shard_size],
            y[start : start + shard_size],
            None if targets is None else targets[start : start + shard_size].detach().cpu(),
            threat,
            seed,
            max_queries,
            early_stop,
            device,
            options,
        )
        for start in range(0, len(x), shard_size)
    ]
    runner = executor or InProcessExecutor()
    gpus = 1 if device is not None and torch.device(device).type == "cuda" else 0
    parts: dict[int, EvasionResult] = {}
    for index, result in runner.map(_run_shard, tasks, num_gpus=gpus):
        parts[index] = result
        if on_shard is not None:
            on_shard(index, result)
    return EvasionResult.concat([parts[i] for i in range(len(tasks))])


def robust_accuracy_curve(
    attack: EvasionAttack,
    model: str | os.PathLike[str] | ZooModel,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    eps: Sequence[float | str],
    **options: Any,
) -> list[tuple[float, EvasionResult]]:
    """``evaluate_sharded`` at each budget of ``eps`` (``threat`` with its ``eps`` replaced), in order:
    ``(eps value, result)`` pairs; ``result.robust_accuracy`` is the curve. ``options`` go to
    ``evaluate_sharded`` (``shard_size`` and ``executor`` among them)."""
    if isinstance(eps, str) or not isinstance(eps, Sequence) or not eps:
        raise invalid("eps", eps, "a non-empty list of budgets such as [2/255, '8/255']")
    curve = []
    for budget in eps:
        at = dataclasses.replace(threat, eps=budget)
        curve.append((at.eps_value, evaluate_sharded(attack, model, x, y, at, **options)))
    return curve


def _model_spec(model: object) -> str | ZooModel:
    """A ZooModel as it is, or the absolute path of saved zoo files (workers may run elsewhere)."""
    if isinstance(model, ZooModel):
        return model
    if not isinstance(model, str | os.PathLike):
        raise invalid(
            "model",
            type(model).__name__,
            "the path of a saved zoo model or a ZooModel",
            cls=RampartsTypeError,
        )
    prefix = zoo.model_prefix(Path(model)).resolve()
    if not prefix.with_name(prefix.name + ".json").is_file():
        raise invalid(
            "model", str(model), f"a zoo model with its JSON at {prefix}.json", "save it with zoo.save_model."
        )
    return str(Path(model).resolve())


def _oracle_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The extra TorchOracle arguments, checked against its signature here rather than in a worker."""
    if options is None:
        return {}
    accepted = set(inspect.signature(TorchOracle.__init__).parameters) - _OWN_ORACLE_ARGS
    unknown = sorted(set(options) - accepted) if isinstance(options, Mapping) else None
    if unknown is None or unknown:
        raise invalid(
            "oracle_options", options, f"a dict of TorchOracle arguments among {', '.join(sorted(accepted))}"
        )
    return dict(options)


def _run_shard(task: _Shard) -> EvasionResult:
    """One shard on this worker's device (a module-level function: workers import it by name)."""
    device = torch.device(task.device) if task.device is not None else worker_device() or torch.device("cpu")
    oracle = _oracle(task.model, device, task.oracle_options, tuple(task.x.shape[1:]))
    return task.attack(
        oracle,
        task.x,
        task.y,
        task.threat,
        targets=task.targets,
        seed=task.seed,
        max_queries=task.max_queries,
        early_stop=task.early_stop,
    )


def _oracle(
    model: str | ZooModel, device: torch.device, options: dict[str, Any], shape: tuple[int, ...]
) -> TorchOracle:
    """The oracle for `model` on `device`, reused from the previous shard when nothing changed."""
    if isinstance(model, ZooModel):
        key: tuple[Any, ...] = ("state", model.digest)
    else:
        prefix = zoo.model_prefix(Path(model))
        files = sorted(prefix.parent.glob(prefix.name + ".*"))
        key = ("files", model, tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files))
    key += (str(device), repr(sorted(options.items())), shape)
    if key in _CACHE:
        return _CACHE[key]
    if isinstance(model, ZooModel):
        module = zoo.build(model.arch, **model.config)
        module.load_state_dict(model.state)
        config, mean, std, recorded = model.config, model.mean, model.std, model.input_shape
    else:
        module, meta = zoo.load_model(model)
        extra = meta["extra"] if isinstance(meta.get("extra"), dict) else {}
        config = meta["config"] if isinstance(meta.get("config"), dict) else {}
        mean, std, recorded = extra.get("mean"), extra.get("std"), extra.get("input_shape")
    oracle = TorchOracle(
        module.eval(),
        input_shape=tuple(recorded) if recorded is not None else shape,
        num_classes=config.get("num_classes"),
        mean=mean,
        std=std,
        device=device,
        **options,
    )
    _CACHE.clear()
    _CACHE[key] = oracle
    return oracle
