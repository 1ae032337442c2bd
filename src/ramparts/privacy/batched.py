"""Train many small models of one architecture together on one device (shadow models for LiRA and kin).

The batched path stacks the K models' parameters into ``[K, ...]`` leaf tensors
(``torch.func.stack_module_state``) and runs one forward pass for all models with
``torch.func.functional_call`` under ``torch.func.vmap``, the batched-training pattern of the
torch.func model-ensembling tutorial; the backward pass is ordinary autograd on the stacked leaves.
Adam is elementwise, so one Adam over the stacked tensors, fed the sum of the models' mean losses,
is exactly K independent Adams. The sequential path (``batched=False``) trains the same models one
by one with the same math and is the reference the batched path is tested against.

Model ``k`` depends only on ``seeds[k]`` and ``subsets[k]``: its initial weights come from
``torch.manual_seed(seeds[k])`` before ``zoo.build``, and its data order in epoch ``e`` from a
generator seeded with a fixed mix of ``seeds[k]`` and ``e`` (see :func:`epoch_order`).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from ramparts import zoo
from ramparts.errors import RampartsTypeError, check_int, invalid

__all__ = ["epoch_order", "train_models"]

_GOLDEN = 0x9E3779B97F4A7C15  # odd 64-bit constant: distinct (seed, epoch) pairs give distinct seeds
_MASK64 = (1 << 64) - 1
_DROPOUT_STREAM = 1 << 62  # keeps the dropout RNG of the sequential path apart from the shuffling seeds


PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


def _mix(seed: int, epoch: int) -> int:
    return (seed * _GOLDEN + epoch) & _MASK64


def epoch_order(seed: int, epoch: int, m: int) -> Tensor:
    """The order (a CPU permutation of ``range(m)``) in which a model seeded ``seed`` visits its data in ``epoch``."""
    return torch.randperm(m, generator=torch.Generator().manual_seed(_mix(seed, epoch)))


def train_models(
    arch: str,
    arch_config: dict[str, Any],
    x: Tensor,
    y: Tensor,
    subsets: Tensor,
    seeds: Sequence[int],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    device: str | torch.device = "cpu",
    batched: bool = True,
    on_epoch: Callable[[int], None] | None = None,
    precision: str = "fp32",
    compiled: bool = False,
) -> list[dict[str, Tensor]]:
    """Train K models of ``arch``: model ``k`` on ``x[subsets[k]]``, initialised from ``seeds[k]``.

    Cross-entropy, Adam(``lr``, ``weight_decay``), ``epochs`` passes in batches of ``batch_size`` (the
    last partial batch kept). ``batched=True`` trains all K at once with ``torch.func`` (no BatchNorm, no
    dropout); ``batched=False`` trains them one after another. ``on_epoch(e)`` is called after epoch
    ``e`` (1-based) of every model. ``precision="bf16"`` runs forward and backward under bfloat16
    autocast (weights, loss and Adam stay float32): faster convolutions on a GPU, other rounding.
    ``compiled=True`` runs the forward pass (vmapped or not) through ``torch.compile``: much faster
    batched training on a GPU once compiled (tens of seconds, once per batch shape), other rounding.
    Returns one CPU state dict per model, keys as the module's own.
    """
    dev = _check_device(device)
    _check_inputs(x, y, subsets, seeds, epochs, batch_size, lr, weight_decay, batched, on_epoch)
    if not isinstance(arch_config, Mapping):
        raise invalid(
            "arch_config", type(arch_config).__name__, "a dict of zoo keywords", cls=RampartsTypeError
        )
    if precision not in PRECISIONS:
        raise invalid("precision", precision, f"one of {', '.join(PRECISIONS)}")
    if not isinstance(compiled, bool):
        raise invalid("compiled", compiled, "True or False", cls=RampartsTypeError)
    seeds = [int(s) for s in seeds]
    with torch.random.fork_rng(devices=[]):
        models = []
        for seed in seeds:
            torch.manual_seed(seed)
            models.append(zoo.build(arch, **arch_config))
    _check_model(models[0], arch, x, y)
    if batched:
        _check_vmappable(models[0], arch)
    x, y, subsets = x.to(dev), y.to(dev), subsets.to(dev)
    run = _train_batched if batched else _train_sequential
    return run(
        models,
        x,
        y,
        subsets,
        seeds,
        dev,
        epochs=epochs,
        batch_size=batch_size,
        lr=float(lr),
        weight_decay=float(weight_decay),
        on_epoch=on_epoch,
        autocast=precision == "bf16",
        compile_key=json.dumps([arch, dict(arch_config)], sort_keys=True, default=repr) if compiled else None,
    )


Forward = Callable[[dict[str, Tensor], dict[str, Tensor], Tensor], Tensor]
_COMPILED: dict[tuple[str, bool], Forward] = {}


def _forward(template: nn.Module, batched: bool, compile_key: str | None) -> Forward:
    """Logits of ``template`` (a meta-device copy) under given parameters and buffers, vmapped over K or not.

    With a ``compile_key`` (the architecture and its config), the ``torch.compile``d function is kept
    for the process and shared by every call and model of that architecture, so it compiles once per
    batch shape (``dynamic=False``: the full batches and the last partial one), not per call or model.
    """
    entry = (compile_key or "", batched)
    if compile_key is not None and entry in _COMPILED:
        return _COMPILED[entry]

    def logits(p: dict[str, Tensor], b: dict[str, Tensor], xb: Tensor) -> Tensor:
        return functional_call(template, (p, b), (xb,))

    fn: Forward = vmap(logits) if batched else logits
    if compile_key is None:
        return fn
    _COMPILED[entry] = torch.compile(fn, dynamic=False)
    return _COMPILED[entry]


def _train_batched(
    models: list[nn.Module],
    x: Tensor,
    y: Tensor,
    subsets: Tensor,
    seeds: list[int],
    dev: torch.device,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    on_epoch: Callable[[int], None] | None,
    autocast: bool,
    compile_key: str | None,
) -> list[dict[str, Tensor]]:
    """All K models in one vmapped forward pass per step; one Adam over the stacked parameters."""
    template = copy.deepcopy(models[0]).to("meta").train()
    params, buffers = stack_module_state(models)
    params = {name: p.detach().to(dev).requires_grad_() for name, p in params.items()}
    buffers = {name: b.to(dev) for name, b in buffers.items()}
    optimizer = torch.optim.Adam(params.values(), lr=lr, weight_decay=weight_decay, fused=dev.type == "cuda")
    forward = _forward(template, True, compile_key)
    k, m = subsets.shape
    for epoch in range(1, epochs + 1):
        orders = torch.stack([epoch_order(seed, epoch, m) for seed in seeds]).to(dev)
        rows = torch.gather(subsets, 1, orders)  # [K, M] indices into x, in this epoch's order
        for i in range(0, m, batch_size):
            idx = rows[:, i : i + batch_size]
            with _autocast(dev, autocast):
                out = forward(params, buffers, x[idx])  # [K, B, classes]
            per_model = F.cross_entropy(out.flatten(0, 1).float(), y[idx].flatten(), reduction="none")
            loss = per_model.view(k, -1).mean(dim=1).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _check_finite(loss, lr)
        if on_epoch is not None:
            on_epoch(epoch)
    keys = models[0].state_dict().keys()
    stacked = {
        key: value.detach().cpu() for key, value in {**params, **buffers}.items()
    }  # one copy per tensor
    return [{key: stacked[key][j].contiguous() for key in keys} for j in range(k)]


def _train_sequential(
    models: list[nn.Module],
    x: Tensor,
    y: Tensor,
    subsets: Tensor,
    seeds: list[int],
    dev: torch.device,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    on_epoch: Callable[[int], None] | None,
    autocast: bool,
    compile_key: str | None,
) -> list[dict[str, Tensor]]:
    """The reference: each model in its own loop, with its own Adam, in training mode."""
    models = [model.to(dev).train() for model in models]
    forward = (
        None if compile_key is None else _forward(copy.deepcopy(models[0]).to("meta"), False, compile_key)
    )
    optimizers = [
        torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, fused=dev.type == "cuda")
        for model in models
    ]
    m = subsets.shape[1]
    forked = (
        [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    )
    with torch.random.fork_rng(devices=forked):
        for epoch in range(1, epochs + 1):
            for model, optimizer, seed, subset in zip(models, optimizers, seeds, subsets, strict=True):
                _seed_global(_mix(seed, epoch) ^ _DROPOUT_STREAM, dev)  # dropout, when the model has any
                rows = subset[epoch_order(seed, epoch, m).to(dev)]
                for i in range(0, m, batch_size):
                    idx = rows[i : i + batch_size]
                    with _autocast(dev, autocast):
                        if forward is None:
                            logits = model(x[idx])
                        else:
                            logits = forward(
                                dict(model.named_parameters()), dict(model.named_buffers()), x[idx]
                            )
                    loss = F.cross_entropy(logits.float(), y[idx])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                _check_finite(loss, lr)
            if on_epoch is not None:
                on_epoch(epoch)
    return [{key: v.detach().cpu().contiguous() for key, v in model.state_dict().items()} for model in models]


def _autocast(dev: torch.device, enabled: bool) -> torch.autocast:
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=enabled)


def _seed_global(seed: int, dev: torch.device) -> None:
    """Seed the global RNG of the CPU and of ``dev`` only (the ones forked), for dropout."""
    torch.default_generator.manual_seed(seed)
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            torch.cuda.manual_seed(seed)


def _check_finite(loss: Tensor, lr: float) -> None:
    """One host sync per epoch, on the epoch's last loss: a diverged run has non-finite weights by then."""
    if not bool(torch.isfinite(loss.detach())):
        raise invalid("lr", lr, "a learning rate at which the loss stays finite", "lower lr")


def _check_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise invalid("device", device, "'cpu', 'cuda' or 'cuda:N'") from exc


def _check_number(param: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid(param, value, "a finite number", cls=RampartsTypeError)
    return float(value)


def _check_tensor(param: str, value: object, dtype: torch.dtype, ndim: int, what: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise invalid(param, type(value).__name__, f"a torch.Tensor ({what})", cls=RampartsTypeError)
    if value.dtype != dtype or value.dim() != ndim:
        raise invalid(param, f"{value.dtype} of shape {tuple(value.shape)}", f"a {dtype} tensor: {what}")
    return value


def _check_inputs(
    x: object,
    y: object,
    subsets: object,
    seeds: object,
    epochs: object,
    batch_size: object,
    lr: object,
    weight_decay: object,
    batched: object,
    on_epoch: object,
) -> None:
    """Validate everything but the architecture."""
    x = _check_tensor("x", x, torch.float32, 4, "images [N, C, H, W] in [0, 1]")
    y = _check_tensor("y", y, torch.int64, 1, "labels [N]")
    subsets = _check_tensor("subsets", subsets, torch.int64, 2, "indices into x, one row of M per model")
    n = x.shape[0]
    if n == 0 or y.shape[0] != n:
        raise invalid("y", f"{y.shape[0]} labels for {n} images", "one label per image, at least one image")
    if not bool(torch.isfinite(x).all()) or bool((x < 0).any()) or bool((x > 1).any()):
        raise invalid(
            "x", "values outside [0, 1] or not finite", "images scaled to [0, 1]", "scale the data first"
        )
    if bool((y < 0).any()):
        raise invalid("y", int(y.min()), "labels >= 0")
    k, m = subsets.shape
    if k == 0 or m == 0:
        raise invalid(
            "subsets", tuple(subsets.shape), "a [K, M] tensor with K >= 1 models and M >= 1 indices"
        )
    if bool((subsets < 0).any()) or bool((subsets >= n).any()):
        lo, hi = int(subsets.min()), int(subsets.max())
        raise invalid("subsets", f"indices from {lo} to {hi}", f"indices into x, in [0, {n - 1}]")
    if isinstance(seeds, str | bytes) or not isinstance(seeds, Sequence):
        raise invalid("seeds", type(seeds).__name__, "a sequence of K integer seeds", cls=RampartsTypeError)
    if len(seeds) != k:
        raise invalid("seeds", f"{len(seeds)} seeds", f"one seed per row of subsets ({k})")
    for i, seed in enumerate(seeds):
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise invalid(f"seeds[{i}]", seed, "an integer in [0, 2**63)")
    check_int("epochs", epochs, 1)
    check_int("batch_size", batch_size, 1)
    if _check_number("lr", lr) <= 0:
        raise invalid("lr", lr, "a learning rate > 0", "try 1e-3")
    if _check_number("weight_decay", weight_decay) < 0:
        raise invalid("weight_decay", weight_decay, "a value >= 0")
    if not isinstance(batched, bool):
        raise invalid("batched", batched, "True or False", cls=RampartsTypeError)
    if on_epoch is not None and not callable(on_epoch):
        raise invalid(
            "on_epoch", type(on_epoch).__name__, "a callable taking the epoch, or None", cls=RampartsTypeError
        )


def _check_model(model: nn.Module, arch: str, x: Tensor, y: Tensor) -> None:
    """The model's logits (shape only, on the meta device) fit the images and the labels."""
    probe = copy.deepcopy(model).to("meta").eval()
    try:
        out = probe(torch.empty((1, *x.shape[1:]), device="meta"))
    except RuntimeError as exc:
        raise invalid(
            "x", tuple(x.shape), f"images that {arch!r} with this arch_config accepts ({exc})"
        ) from exc
    if out.dim() != 2 or out.shape[0] != 1:
        raise invalid("arch", arch, "a classifier returning logits [N, classes]")
    classes = out.shape[1]
    if int(y.max()) >= classes:
        raise invalid(
            "y", int(y.max()), f"labels below the model's {classes} classes", "set num_classes in arch_config"
        )


def _check_vmappable(model: nn.Module, arch: str) -> None:
    """Refuse what vmap cannot batch faithfully: BatchNorm's running statistics and active dropout."""
    for name, module in model.named_modules():
        norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
        drop = isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0
        if norm or drop:
            layer = "BatchNorm" if norm else "dropout"
            raise invalid(
                "arch",
                arch,
                f"an architecture without BatchNorm or dropout for batched training ({layer} at {name!r})",
                "pass batched=False, or pick an architecture (or arch_config) without BatchNorm/dropout",
            )
