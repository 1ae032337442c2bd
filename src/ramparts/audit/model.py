"""The model under audit: the default split and model, loading a given one (zoo folder, TorchScript, ONNX, HTTP
API), wrapping, the retraining recipe, fingerprints, and its files in the run folder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ramparts import zoo
from ramparts.data import Dataset, load_digits, train_test_split
from ramparts.defenses.base import DefendedModel
from ramparts.defenses.persist import save_defended
from ramparts.errors import RampartsError, RampartsTypeError, invalid, unknown
from ramparts.oracles import (
    HttpConfig,
    HttpOracle,
    Knowledge,
    OnnxOracle,
    Oracle,
    TorchOracle,
    load_torchscript,
    model_file_kind,
)
from ramparts.oracles.base import log_probabilities
from ramparts.training import TrainConfig, train

DEFAULT_ARCH = "small_cnn"
DEFAULT_EPOCHS = 10
# The default model's training hyperparameters (besides epochs and seed).
TRAIN_LR = 2e-3
TRAIN_BATCH = 64
# The model kinds the audit takes, as the report names them.
MODEL_KINDS: dict[str, str] = {
    "trained_here": "the default model, trained here",
    "zoo": "a zoo model (safetensors + JSON)",
    "torchscript": "a TorchScript file",
    "onnx": "an ONNX file",
    "http": "an HTTP prediction API",
    "module": "a torch module",
}
# `run_audit(recipe=...)`: how the retraining sections (membership shadows, poisoning) choose what to train,
# besides a zoo architecture named directly.
RECIPE_MODES: tuple[str, ...] = ("auto", "default")
# The zoo config keys the retraining sections fill from the data; a saved config with others cannot be rebuilt.
_IO_KEYS = frozenset({"in_channels", "input_size", "num_classes"})


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


def model_kind(spec: str) -> str:
    """The kind of model a command-line spec names (a key of `MODEL_KINDS`): `http(s)://` -> http, `*.onnx` ->
    onnx, else `model_file_kind` (torchscript or zoo; a pickled torch.save file is refused when loaded)."""
    if spec.lower().startswith(("http://", "https://")):
        return "http"
    if spec.lower().endswith(".onnx"):
        return "onnx"
    return model_file_kind(Path(spec).expanduser())


def load_audit_model(
    spec: str,
    test_ds: Dataset,
    *,
    oracle_config: str | os.PathLike[str] | None = None,
    param: str = "model",
    zoo_model: tuple[nn.Module, dict[str, Any]] | None = None,
) -> tuple[Oracle, dict[str, Any]]:
    """The model `spec` names, as an oracle judged on `test_ds`, and its description for report.json.

    - a zoo folder / .json / .safetensors: `TorchOracle` (white-box) with its saved normalisation;
    - a TorchScript archive (any other file name): `TorchOracle` over `load_torchscript` (white-box);
      a pickled `torch.save` file is refused, since unpickling can run arbitrary code;
    - `*.onnx`: `OnnxOracle` (scores: black-box sections only);
    - `http(s)://...`: `HttpOracle` (scores or labels, as `oracle_config`, an `HttpConfig` JSON file, says;
      black-box sections only). The data's input shape and class count fill what the config leaves out.
    The model must answer the data's classes. Errors name `param` (the CLI's option). `zoo_model`: what
    `zoo.load_model(spec)` returned, when the caller read it already (to find the model's dataset).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise invalid(param, spec, "a zoo folder, a TorchScript or ONNX file, or an http(s):// URL")
    kind = model_kind(spec)
    if oracle_config is not None and kind != "http":
        raise invalid(
            "oracle_config",
            str(oracle_config),
            "an HTTP config only with an http(s):// model",
            "drop --oracle-config, or give the API's URL as the model.",
        )
    shape = tuple(test_ds.input_shape)
    info: dict[str, Any] = {"kind": kind, "trained_here": False}
    oracle: Oracle
    if kind == "http":
        base = (
            HttpConfig.from_json(oracle_config, url=spec)
            if oracle_config is not None
            else HttpConfig(url=spec)
        )
        config = dataclasses.replace(
            base, input_shape=base.input_shape or shape, num_classes=base.num_classes or test_ds.num_classes
        )
        _same_shape(param, config.input_shape, shape, "the API's input_shape (its config)")
        oracle = HttpOracle(config)
        info.update(
            source=oracle.url, description=f"HTTP prediction API at {oracle.url}", api=config.to_dict()
        )
    elif kind == "onnx":
        try:
            oracle = OnnxOracle(spec, input_shape=shape)
        except RampartsError as exc:
            if not str(exc).startswith("input_shape:"):
                raise
            raise invalid(
                "data",
                f"images of shape {shape}",
                "images of the ONNX model's input shape",
                f"pass the dataset the {param} was made for ({exc})",
            ) from None
        info.update(source=spec, description=f"ONNX file {Path(spec).name}", file_sha256=_file_digest(spec))
    elif kind == "torchscript":
        module = load_torchscript(spec, param=param)
        oracle = _torch_oracle(param, module, shape)
        name = getattr(module, "original_name", type(module).__name__)
        info.update(
            source=spec,
            description=f"TorchScript file {Path(spec).name} ({name})",
            file_sha256=_file_digest(spec),
            parameters=sum(p.numel() for p in module.parameters()),
        )
    else:
        module, meta = zoo_model if zoo_model is not None else zoo.load_model(spec)
        extra: dict[str, Any] = meta["extra"] if isinstance(meta.get("extra"), dict) else {}
        saved = extra.get("input_shape")
        if isinstance(saved, list):
            _same_shape(param, tuple(saved), shape, "the shape the model was trained on")
        oracle = _torch_oracle(param, module, shape, mean=extra.get("mean"), std=extra.get("std"))
        info.update(
            arch=meta["arch"],
            config=meta.get("config", {}),
            source=spec,
            parameters=sum(p.numel() for p in module.parameters()),
        )
        if "test_accuracy" in extra:
            info["test_accuracy_at_training"] = extra["test_accuracy"]
        if isinstance(meta.get("defense"), dict):
            info["defense"] = {
                part: [entry["class"] for entry in meta["defense"][part]]
                for part in ("transforms", "detectors")
            }
    if oracle.num_classes != test_ds.num_classes:
        raise invalid(
            "data",
            test_ds.name,
            f"a dataset of the model's {oracle.num_classes} classes (it has {test_ds.num_classes})",
            "pass the dataset the model was trained for.",
        )
    info["knowledge"] = oracle.knowledge.name.lower()
    return oracle, info


def _same_shape(param: str, got: tuple[int, ...] | None, shape: tuple[int, ...], what: str) -> None:
    if got is not None and tuple(got) != shape:
        raise invalid(
            "data",
            f"images of shape {shape}",
            f"images of {what}, {tuple(got)}",
            f"pass the dataset the {param} was made for (or resize an image folder: FOLDER@HxW).",
        )


def _torch_oracle(param: str, module: nn.Module, shape: tuple[int, ...], **norm: Any) -> TorchOracle:
    try:
        return TorchOracle(module, input_shape=shape, **norm)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise invalid(
            param, type(module).__name__, f"a model accepting the data's input shape {shape}", first
        ) from None


def _file_digest(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def kind_of(oracle: Oracle | None, info: Mapping[str, Any] | None = None) -> str:
    """The key of `MODEL_KINDS` for the audited model (`info["kind"]` when the loader recorded it)."""
    if info is not None and isinstance(info.get("kind"), str):
        return str(info["kind"])
    inner = oracle.inner if isinstance(oracle, LabelScores) else oracle
    if inner is None:
        return "trained_here"
    if isinstance(inner, TorchOracle):
        return "torchscript" if isinstance(inner.model, torch.jit.ScriptModule) else "module"
    return {OnnxOracle: "onnx", HttpOracle: "http"}.get(type(inner), type(inner).__name__)


def describe_kind(kind: str) -> str:
    """`onnx` -> 'an ONNX file' (an unknown oracle class: 'a <Class> oracle')."""
    return MODEL_KINDS.get(kind, f"a {kind} oracle")


def resolve_recipe(
    recipe: str, info: Mapping[str, Any] | None, *, trained_here: bool, kind: str
) -> tuple[str | None, str]:
    """What the retraining sections (membership's shadow models, poisoning) train: (zoo architecture, where it
    comes from), or (None, why nothing can stand for the model's recipe).

    `recipe`: "auto" (the model trained here: its own recipe; a model whose description names a zoo
    architecture the sections can rebuild from the data alone: that architecture with the audit's default
    hyperparameters; any other model: none), "default" (the audit's default recipe, a stated proxy), or a zoo
    architecture. Hyperparameters are always the audit's own (`TRAIN_LR`, `TRAIN_BATCH`, `epochs`).
    """
    allowed = (*RECIPE_MODES, *zoo.ARCHITECTURES)
    if not isinstance(recipe, str) or recipe not in allowed:
        raise unknown("recipe", recipe, allowed)
    if trained_here:
        return DEFAULT_ARCH, "the recipe that trained the audited model here"
    if recipe == "default":
        return DEFAULT_ARCH, (
            f"the audit's default recipe ({DEFAULT_ARCH}), chosen with recipe='default': a proxy, "
            "not the model's own training"
        )
    if recipe != "auto":
        return (
            recipe,
            f"{recipe} from the zoo, chosen with recipe={recipe!r}; the model's own training is not known",
        )
    arch = (info or {}).get("arch")
    config = (info or {}).get("config")
    if (
        isinstance(arch, str)
        and arch in zoo.ARCHITECTURES
        and isinstance(config, dict)
        and set(config) <= _IO_KEYS
    ):
        return arch, (
            f"the model's own architecture ({arch}, from its model file) with the audit's default "
            "hyperparameters; its training hyperparameters are not known"
        )
    what = (
        f"{arch} with the config keys {sorted(set(config) - _IO_KEYS)}, which the sections cannot rebuild"
        if isinstance(arch, str) and isinstance(config, dict)
        else f"the architecture of {describe_kind(kind)}, unknown to the zoo"
    )
    return None, (
        f"needs retraining the model's recipe: {what} (recipe='default' retrains the audit's {DEFAULT_ARCH} "
        "as a stated proxy)"
    )


class LabelScores(Oracle):
    """A label-only oracle whose `log_probs` answers its labels as one-hot (confidence 1), knowledge unchanged.

    The audit reads the clean predictions of the audited images as log-probabilities; a label-only model (an
    API answering classes) gives them this way. Attacks never see these scores: the views are built from
    `knowledge`, which stays LABEL, so a score-based attack still fails with an AccessError.
    """

    def __init__(self, inner: Oracle) -> None:
        self.inner = inner
        self.knowledge = inner.knowledge
        self.num_classes = inner.num_classes
        self.device = inner.device
        self.input_shape = inner.input_shape

    def labels(self, x: Tensor) -> Tensor:
        return self.inner.labels(x)

    def log_probs(self, x: Tensor) -> Tensor:
        labels = self.inner.labels(x)
        one_hot = nn.functional.one_hot(labels.long(), self.num_classes).to(torch.float32)
        return log_probabilities(one_hot)

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        with self.inner.evaluating():
            yield


def wrap(model: Any, ds: Dataset) -> Oracle:
    """`model` as an oracle: an Oracle as is, an nn.Module in a TorchOracle checked against the data's shape."""
    if isinstance(model, Oracle):
        return LabelScores(model) if model.knowledge < Knowledge.SCORE else model
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

    An ONNX file is fingerprinted by its bytes; other oracles (an HTTP API may change behind its address)
    cannot be (`weights_sha256` None): never resumed. A TorchScript module's code counts too (its inlined graph).
    """
    if isinstance(oracle, LabelScores):
        return model_identity(oracle.inner)
    if isinstance(oracle, OnnxOracle):
        return {
            "oracle": "OnnxOracle",
            "weights_sha256": _file_digest(oracle.path),
            "knowledge": oracle.knowledge.name.lower(),
            "input_shape": list(oracle.input_shape or ()),
        }
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
        **(
            {"code_sha256": hashlib.sha256(str(oracle.model.inlined_graph).encode()).hexdigest()}
            if isinstance(oracle.model, torch.jit.ScriptModule)
            else {}
        ),
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
