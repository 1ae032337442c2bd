"""The model under audit: the default split and model, wrapping, fingerprints, and its files in the run folder."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ramparts import zoo
from ramparts.data import Dataset, load_digits, train_test_split
from ramparts.defenses.base import DefendedModel
from ramparts.defenses.persist import save_defended
from ramparts.errors import RampartsError, RampartsTypeError, invalid
from ramparts.oracles import Oracle, TorchOracle
from ramparts.training import TrainConfig, train

DEFAULT_ARCH = "small_cnn"
DEFAULT_EPOCHS = 10
# The default model's training hyperparameters (besides epochs and seed).
TRAIN_LR = 2e-3
TRAIN_BATCH = 64


def default_split(ds: Dataset | None = None, *, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(train, test) of the embedded digits (or `ds`): 75% / 25%, stratified, fixed by `seed`."""
    return train_test_split(ds if ds is not None else load_digits(), test_fraction=0.25, seed=seed)


def train_default_model(
    train_ds: Dataset,
    test_ds: Dataset | None = None,
    *,
    arch: str = DEFAULT_ARCH,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    progress: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train `arch` from the zoo on `train_ds`; returns the model (eval mode) and its description."""
    c, h, w = train_ds.input_shape
    if h != w:
        raise invalid("data", train_ds.input_shape, "square images for the zoo's architectures")
    config = {"in_channels": c, "input_size": h, "num_classes": train_ds.num_classes}
    torch.manual_seed(seed)
    model = zoo.build(arch, **config)
    train_config = TrainConfig(epochs=epochs, lr=TRAIN_LR, batch_size=TRAIN_BATCH, seed=seed)
    t0 = time.perf_counter()
    report = train(model, train_ds, config=train_config, val=test_ds, progress=progress)
    info: dict[str, Any] = {
        "arch": arch,
        "config": config,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trained_here": True,
        "training": report.summary(),
        "train_seconds": time.perf_counter() - t0,
        "train_accuracy": report.train_acc[-1],
        "test_accuracy": report.val_acc[-1],
    }
    return model, info


def wrap(model: Any, ds: Dataset) -> Oracle:
    """`model` as an oracle: an Oracle as is, an nn.Module in a TorchOracle checked against the data's shape."""
    if isinstance(model, Oracle):
        return model
    if not isinstance(model, nn.Module):
        raise invalid(
            "model", type(model).__name__, "a torch nn.Module or a ramparts Oracle", cls=RampartsTypeError
        )
    try:
        return TorchOracle(model, input_shape=ds.input_shape)
    except RuntimeError as exc:
        raise invalid(
            "model",
            type(model).__name__,
            f"a model accepting the data's input shape {ds.input_shape}",
            str(exc),
        ) from exc


def tensor_digest(*tensors: torch.Tensor) -> str:
    """sha256 of the tensors' dtypes, shapes and bytes: equal digests, equal tensors."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_identity(oracle: Oracle) -> dict[str, Any]:
    """What makes two given models the same for the audit: class, weights and normalisation.

    Oracles other than TorchOracle cannot be fingerprinted (`weights_sha256` None): never resumed.
    """
    if not isinstance(oracle, TorchOracle):
        return {"oracle": type(oracle).__name__, "weights_sha256": None}
    # The device too: the same seed gives the same result on the same device only.
    state = oracle.model.state_dict()
    stats = [t for t in (oracle._mean, oracle._std) if t is not None]  # the normalisation is the model's too
    return {
        "oracle": type(oracle).__name__,
        "module": type(oracle.model).__name__,
        "weights_sha256": tensor_digest(*(state[k] for k in sorted(state)), *stats),
        "parameter_names_sha256": hashlib.sha256("\n".join(sorted(state)).encode()).hexdigest(),
        "normalised": [oracle._mean is not None, oracle._std is not None],
        **_compute(oracle.device),
    }


def training_identity(train_ds: Dataset, *, epochs: int, seed: int) -> dict[str, Any]:
    """What makes two default models the same: architecture, hyperparameters, seed and training data."""
    return {
        "trained_here": True,
        "arch": DEFAULT_ARCH,
        "epochs": epochs,
        "seed": seed,
        "lr": TRAIN_LR,
        "batch_size": TRAIN_BATCH,
        "train_data_sha256": tensor_digest(train_ds.x, train_ds.y),
        **_compute(TrainConfig().resolve_device()),
    }


def _compute(device: torch.device) -> dict[str, Any]:
    """Where the numbers are computed: the device type, and on a CPU the thread count, since training and
    reductions give other float bits on another count (a resumed run must not mix them)."""
    return {"device": device.type, "cpu_threads": torch.get_num_threads() if device.type == "cpu" else None}


def save_model(
    model: Any, info: Mapping[str, Any], data: Mapping[str, Any], bounds: tuple[float, float], out: Path
) -> None:
    """The audited model into the run folder: zoo format (safetensors + JSON) when its architecture is known,
    a defended model's folder format (``ramparts.defenses.persist``) for a defended one; else the weights."""
    module = model.model if isinstance(model, TorchOracle) else model
    if not isinstance(module, nn.Module):
        return
    known = isinstance(info.get("arch"), str) and isinstance(info.get("config"), dict)
    extra = {
        "classes": data["classes"],
        "dataset": data["name"],
        "input_shape": data["input_shape"],
        "bounds": list(bounds),
    }
    if isinstance(module, DefendedModel):
        if known:
            save_defended(module, out, arch=info["arch"], config=info["config"], extra=extra)
        else:
            save_shared_weights(module, out / "model.safetensors")
    elif known:
        zoo.save_model(module, out / "model", arch=info["arch"], config=info["config"], extra=extra)
    else:
        zoo.save_weights(module, out / "model.safetensors")


def save_shared_weights(module: nn.Module, path: Path) -> None:
    """The state dict of a module whose parts share tensors (a defended model's detectors hold its classifier)
    as safetensors: each shared tensor once, under its first name; the metadata key `aliases` (JSON) maps every
    other name to it (a defended model whose classifier's architecture is not known to the zoo)."""
    state: dict[str, torch.Tensor] = {}
    first: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], str] = {}
    aliases: dict[str, str] = {}
    for name, t in module.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if t.numel() and key in first:
            aliases[name] = first[key]
            continue
        first.setdefault(key, name)
        state[name] = t.detach().cpu().contiguous().clone()
    save_file(state, str(path), metadata={"aliases": json.dumps(aliases, sort_keys=True)})


def load_trained_model(out: Path, info: Mapping[str, Any]) -> nn.Module | None:
    """The default model an earlier run of this configuration trained and saved in `out` (safetensors, no
    unpickling), on the device training would use; None when it is not there (then train again)."""
    if not ((out / "model.json").is_file() and (out / "model.safetensors").is_file()):
        return None
    try:
        model, meta = zoo.load_model(out / "model")
    except RampartsError:  # a file cut short by the interruption: train again
        return None
    if meta.get("arch") != info.get("arch") or meta.get("config") != info.get("config"):
        return None
    return model.to(TrainConfig().resolve_device())
