"""Model back-ends behind the access-level views: torch, scikit-learn, ONNX and remote HTTP APIs."""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from torch import jit, nn

from ramparts.errors import RampartsTypeError, invalid
from ramparts.oracles.base import Knowledge, Oracle
from ramparts.oracles.http import HttpConfig, HttpOracle, OracleResponseError, OracleUnavailableError
from ramparts.oracles.onnx import OnnxOracle
from ramparts.oracles.sklearn import SklearnOracle
from ramparts.oracles.torch import TorchOracle

__all__ = [
    "HttpConfig",
    "HttpOracle",
    "Knowledge",
    "OnnxOracle",
    "Oracle",
    "OracleResponseError",
    "OracleUnavailableError",
    "SklearnOracle",
    "TorchOracle",
    "as_oracle",
    "load_oracle",
    "load_torchscript",
    "model_file_kind",
    "torch_file_kind",
]

_FORMS = (
    "a model saved by `ramparts train` (folder, .json or .safetensors), a TorchScript file, an .onnx file "
    "or an http(s):// URL"
)
# How to turn a pickled torch.save file into a format Ramparts reads (shown when one is refused).
SAVE_AS = (
    "save the model as TorchScript (torch.jit.script(model).save('model.pt')), as ONNX (torch.onnx.export), "
    "or as a zoo folder (ramparts.zoo.save_model); Ramparts never unpickles model files"
)
TorchFileKind = Literal["torchscript", "pickle"]


def as_oracle(
    target: Any, input_shape: tuple[int, ...] | None = None, *, num_classes: int | None = None
) -> Oracle:
    """An Oracle as is; an `nn.Module` wrapped in `TorchOracle` (no normalisation); a path to an `.onnx`
    file in `OnnxOracle`; an `http(s)://` URL in `HttpOracle` with the default `HttpConfig`; an estimator
    in `SklearnOracle`. `input_shape` lets the number of classes be probed."""
    if isinstance(target, Oracle):
        return target
    if isinstance(target, nn.Module):
        return TorchOracle(target, input_shape=input_shape, num_classes=num_classes)
    if isinstance(target, str) and _is_url(target):
        return HttpOracle(HttpConfig(url=target, input_shape=input_shape, num_classes=num_classes))
    if isinstance(target, str | os.PathLike) and str(target).lower().endswith(".onnx"):
        return OnnxOracle(target, input_shape=input_shape, num_classes=num_classes)
    if hasattr(target, "predict"):
        return SklearnOracle(target, input_shape=input_shape, num_classes=num_classes)
    raise invalid(
        "target",
        target,
        "an Oracle, an nn.Module, an estimator with predict(), a path to an .onnx file or an http(s):// URL",
        "for a model saved by `ramparts train`, use ramparts.oracles.load_oracle(path).",
        cls=RampartsTypeError,
    )


def load_oracle(
    spec: str,
    *,
    config_path: str | os.PathLike[str] | None = None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
) -> Oracle:
    """The oracle a user names on the command line (errors name it `oracle`, the CLI's option).

    - `http(s)://...`: `HttpOracle`; `config_path` is an `HttpConfig` JSON file whose `url` the given
      URL replaces; `input_shape`/`num_classes`, when given, replace the file's.
    - `*.onnx`: `OnnxOracle` (logits output).
    - a TorchScript archive (`torch.jit.save`, any name): `TorchOracle` over `load_torchscript`; a pickled
      `torch.save` file is refused.
    - anything else: a model saved by `ramparts train` (zoo JSON + safetensors), wrapped in `TorchOracle`
      with the input shape of its metadata (`extra.input_shape`) and its normalisation (`extra.mean`,
      `extra.std`) where recorded.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise invalid("oracle", spec, _FORMS)
    shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
    if _is_url(spec):
        if config_path is not None:
            config = HttpConfig.from_json(config_path, url=spec, input_shape=shape, num_classes=num_classes)
        else:
            config = HttpConfig(url=spec, input_shape=shape, num_classes=num_classes)
        return HttpOracle(config)
    if config_path is not None:
        raise invalid(
            "config_path",
            str(config_path),
            "a config only with an http(s):// URL",
            "drop the config, or give the API's URL as the oracle.",
        )
    if spec.lower().endswith(".onnx"):
        return OnnxOracle(spec, input_shape=shape, num_classes=num_classes)
    if model_file_kind(Path(spec)) == "torchscript":
        return TorchOracle(load_torchscript(spec, param="oracle"), input_shape=shape, num_classes=num_classes)
    return _load_zoo_model(spec, shape, num_classes)


def model_file_kind(path: Path) -> Literal["torchscript", "zoo"]:
    """Which loader a local model path goes to: "zoo" for a folder, a .json or .safetensors file, or a .pt/.pth
    state dict beside its .json (read with `torch.load(weights_only=True)`) unless it is a TorchScript
    archive; "torchscript" for any other file (`load_torchscript` refuses a pickled torch.save file)."""
    if not path.is_file() or path.suffix.lower() in (".json", ".safetensors"):
        return "zoo"
    if path.suffix.lower() in (".pt", ".pth") and path.with_suffix(".json").is_file():
        return "torchscript" if torch_file_kind(path) == "torchscript" else "zoo"
    return "torchscript"


def torch_file_kind(path: str | os.PathLike[str]) -> TorchFileKind | None:
    """What a PyTorch file is, read from its zip directory and first byte only (nothing is unpickled):
    `"torchscript"` (a `torch.jit.save` archive: its `code/` folder and `constants.pkl`), `"pickle"` (a
    `torch.save` file of a whole model or a state dict, zip or legacy format), None (neither)."""
    file = Path(path)
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        with file.open("rb") as f:
            return "pickle" if f.read(1) == b"\x80" else None  # the pickle PROTO opcode
    prefixes = {name.split("/", 1)[0] for name in names}
    if len(prefixes) != 1:
        return None
    prefix = prefixes.pop()
    if f"{prefix}/constants.pkl" in names and any(n.startswith(f"{prefix}/code/") for n in names):
        return "torchscript"
    return "pickle" if f"{prefix}/data.pkl" in names else None


def load_torchscript(path: str | os.PathLike[str], *, param: str = "path") -> nn.Module:
    """A TorchScript archive (`torch.jit.save`) as a module on the CPU, in eval mode; errors name `param`.

    A TorchScript archive holds the model's code as TorchScript source, which TorchScript's own
    interpreter compiles and runs, and its tensors; its small `.pkl` records are read by TorchScript's
    restricted unpickler, which builds only TorchScript values and tensors and imports no Python object.
    A plain `torch.save(model)` file is a Python pickle, which can run any code when loaded: it is refused
    (see `torch_file_kind`), as is a state dict saved the same way. PyTorch now deprecates TorchScript
    in favour of `torch.export`; its warning is silenced here, since such files are what users have.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise invalid(param, str(path), "an existing TorchScript file", "check the path.")
    try:
        kind = torch_file_kind(file)
    except OSError as exc:
        raise invalid(param, str(file), "a readable TorchScript file", f"check the file ({exc}).") from None
    if kind == "pickle":
        raise invalid(
            param,
            str(file),
            "a TorchScript archive (torch.jit.save), an ONNX file or a zoo folder, not a pickled torch.save file",
            SAVE_AS + ".",
        )
    if kind != "torchscript":
        raise invalid(param, str(file), _FORMS, "check the file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.9+ steers users to torch.export
            module = jit.load(str(file), map_location="cpu")
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise invalid(
            param, str(file), "a TorchScript archive this torch can load", f"re-export it ({first})."
        ) from None
    return module.eval()


def _load_zoo_model(spec: str, shape: tuple[int, ...] | None, num_classes: int | None) -> TorchOracle:
    from ramparts.zoo import load_model

    path = Path(spec)
    if not path.exists() and not path.with_name(path.name + ".json").exists():
        raise invalid("oracle", spec, _FORMS, "check the path.")
    model, meta = load_model(path)
    extra: dict[str, Any] = meta["extra"] if isinstance(meta.get("extra"), dict) else {}
    recorded = extra.get("input_shape")
    saved_shape = tuple(int(d) for d in recorded) if isinstance(recorded, list) else None
    if shape is not None and saved_shape is not None and shape != saved_shape:
        raise invalid(
            "input_shape",
            shape,
            f"the shape {spec} was trained on, {saved_shape}",
            "leave input_shape out, or pass data of the model's shape.",
        )
    config: dict[str, Any] = meta["config"] if isinstance(meta.get("config"), dict) else {}
    saved_classes = config.get("num_classes") if isinstance(config.get("num_classes"), int) else None
    if num_classes is not None and saved_classes is not None and num_classes != saved_classes:
        raise invalid(
            "num_classes", num_classes, f"the {saved_classes} classes of {spec}", "leave num_classes out."
        )
    return TorchOracle(
        model,
        input_shape=saved_shape or shape,
        num_classes=num_classes or saved_classes,
        mean=extra.get("mean"),
        std=extra.get("std"),
    )


def _is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))
