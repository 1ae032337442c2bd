"""Model back-ends behind the access-level views: torch, scikit-learn, ONNX and remote HTTP APIs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

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
]

_FORMS = (
    "a model saved by `ramparts train` (folder, .json or .safetensors), an .onnx file or an http(s):// URL"
)


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
    return _load_zoo_model(spec, shape, num_classes)


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
