"""The gateway's configuration: defaults < TOML file < `RAMPARTS_GATEWAY_*` variables < command-line flags.

Every key is declared once in `FIELDS` (type, check, default); a value from any source goes through the same
check, and an error names the key, where the value came from (the file, the variable or the flag) and the fix.
Unknown keys are errors in every source, so a typo never silently leaves a default in place.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ramparts.errors import ValidationError

ENV_PREFIX = "RAMPARTS_GATEWAY_"
POLICIES: tuple[str, ...] = ("off", "flag", "reform", "reject")
ON_ALARM: tuple[str, ...] = ("alert", "labels", "block")
OUTPUT_FORMS = "full, labels, topk:K, round:D, noise:SIGMA[,SEED] or reverse_sigmoid:BETA,GAMMA"


class ConfigError(ValidationError):
    """A configuration value that cannot be used; the message names the key, its source and the fix."""


@dataclass(frozen=True)
class _Field:
    kind: str  # str | int | float | bool | range
    default: Any
    expected: str
    check: Callable[[Any], bool] = lambda _: True
    fix: str = ""


def _output_form(value: str) -> bool:
    name, _, args = value.partition(":")
    if name in ("full", "labels"):
        return not args
    return name in ("topk", "round", "noise", "reverse_sigmoid") and bool(args)


FIELDS: dict[str, _Field] = {
    "model": _Field(
        "str", None, "a zoo model folder or a saved defence folder", fix="train one with `ramparts train`"
    ),
    "host": _Field("str", "127.0.0.1", "a host name or address", lambda v: bool(v)),
    "port": _Field("int", 8000, "an integer in [0, 65535]", lambda v: 0 <= v <= 65535),
    "db": _Field("str", "gateway.db", "a path for the SQLite file", lambda v: bool(v)),
    "max_batch": _Field("int", 256, "an integer in [1, 100000]", lambda v: 1 <= v <= 100_000),
    "max_body_bytes": _Field("int", 8_000_000, "an integer >= 1024", lambda v: v >= 1024),
    "max_encrypted_body_bytes": _Field("int", 64_000_000, "an integer >= 1024", lambda v: v >= 1024),
    "input_range": _Field(
        "range", (0.0, 1.0), "two finite numbers [low, high] with low < high", lambda v: v[0] < v[1]
    ),
    "log_inputs": _Field("bool", False, "true or false"),
    "detection.policy": _Field("str", "off", f"one of {', '.join(POLICIES)}", lambda v: v in POLICIES),
    "prada.enabled": _Field("bool", True, "true or false"),
    "prada.delta": _Field("float", 0.9, "a number in (0, 1)", lambda v: 0 < v < 1),
    "prada.min_samples": _Field("int", 100, "an integer in [3, 5000]", lambda v: 3 <= v <= 5000),
    "prada.on_alarm": _Field("str", "alert", f"one of {', '.join(ON_ALARM)}", lambda v: v in ON_ALARM),
    "defaults.output": _Field("str", "full", f"an output mode: {OUTPUT_FORMS}", _output_form),
    "defaults.rate_per_s": _Field("float", 50.0, "a positive number", lambda v: v > 0),
    "defaults.burst": _Field("int", 100, "an integer >= 1", lambda v: v >= 1),
    "defaults.budget": _Field("int", 0, "an integer >= 0 (0 = unlimited)", lambda v: v >= 0),
}
TABLES: tuple[str, ...] = ("detection", "prada", "defaults")


@dataclass(frozen=True)
class DetectionConfig:
    policy: str = "off"


@dataclass(frozen=True)
class PradaConfig:
    enabled: bool = True
    delta: float = 0.9
    min_samples: int = 100
    on_alarm: str = "alert"


@dataclass(frozen=True)
class KeyDefaults:
    output: str = "full"
    rate_per_s: float = 50.0
    burst: int = 100
    budget: int = 0


@dataclass(frozen=True)
class GatewayConfig:
    """A checked configuration; `sources` says where each key's value came from (for messages and logs)."""

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    db: str = "gateway.db"
    max_batch: int = 256
    max_body_bytes: int = 8_000_000
    max_encrypted_body_bytes: int = 64_000_000
    input_range: tuple[float, float] = (0.0, 1.0)
    log_inputs: bool = False
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    prada: PradaConfig = field(default_factory=PradaConfig)
    defaults: KeyDefaults = field(default_factory=KeyDefaults)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def source(self, key: str) -> str:
        return self.sources.get(key, "default")

    def error(self, key: str, given: Any, expected: str, fix: str) -> ConfigError:
        """An error about a value that passed its type check but cannot be used (e.g. a model that fails)."""
        return _error(key, self.source(key), given, expected, fix)

    def summary(self) -> dict[str, Any]:
        values = {key: _get(self, key) for key in FIELDS}
        return {key: list(v) if isinstance(v, tuple) else v for key, v in values.items()}


def _get(config: GatewayConfig, key: str) -> Any:
    table, _, name = key.partition(".")
    return getattr(getattr(config, table), name) if name else getattr(config, table)


def _error(key: str, source: str, given: Any, expected: str, fix: str) -> ConfigError:
    shown = repr(given) if not isinstance(given, str) or len(given) < 200 else repr(given[:200] + "...")
    return ConfigError(f"{key} (from {source}): expected {expected}, got {shown}. Fix: {fix}")


def _coerce(key: str, value: Any, source: str, *, from_text: bool) -> Any:
    """The value as the field's type; `from_text` values are strings (environment) parsed by type."""
    spec = FIELDS[key]
    fix = spec.fix or f"set {key} to {spec.expected}"
    bad = _error(key, source, value, spec.expected, fix)
    if from_text:
        value = _parse_text(spec.kind, value, bad)
    if spec.kind == "str":
        if not isinstance(value, str):
            raise bad
        value = value.strip()
    elif spec.kind == "bool":
        if not isinstance(value, bool):
            raise bad
    elif spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
    elif spec.kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise bad
        value = float(value)
    elif spec.kind == "range":
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise bad
        if any(isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) for v in value):
            raise bad
        value = (float(value[0]), float(value[1]))
    if not spec.check(value):
        raise bad
    return value


def _parse_text(kind: str, text: str, bad: ConfigError) -> Any:
    text = text.strip()
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "bool":
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise bad
        if kind == "range":
            return json.loads(text) if text.startswith("[") else [float(v) for v in text.split(",")]
    except (ValueError, json.JSONDecodeError):
        raise bad from None
    return text


def _flatten_file(data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in data.items():
        if name in TABLES:
            if not isinstance(value, dict):
                raise _error(name, str(path), value, f"a [{name}] table", f"write it as a [{name}] table")
            for sub, item in value.items():
                key = f"{name}.{sub}"
                if key not in FIELDS:
                    raise _unknown(key, str(path))
                flat[key] = item
        elif name in FIELDS:
            flat[name] = value
        else:
            raise _unknown(name, str(path))
    return flat


def _unknown(key: str, source: str) -> ConfigError:
    known = ", ".join(FIELDS)
    return ConfigError(f"{key} (from {source}): unknown key. Fix: remove it, or use one of: {known}.")


def env_name(key: str) -> str:
    """`prada.on_alarm` -> `RAMPARTS_GATEWAY_PRADA__ON_ALARM`."""
    return ENV_PREFIX + key.replace(".", "__").upper()


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    check_model: bool = True,
) -> GatewayConfig:
    """Read the configuration: defaults, then the TOML file at `path`, then `env` (default `os.environ`),
    then `overrides` (flag name -> value; None means not given). Raises `ConfigError` naming key and source."""
    values: dict[str, Any] = {key: spec.default for key, spec in FIELDS.items()}
    sources: dict[str, str] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(
                f"config: expected a TOML file, got {str(file)!r} (no such file). Fix: check the path."
            )
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config ({file}): not valid TOML ({exc}). Fix: correct the file.") from None
        for key, value in _flatten_file(data, file).items():
            values[key] = _coerce(key, value, str(file), from_text=False)
            sources[key] = str(file)
    environ = os.environ if env is None else env
    by_env = {env_name(key): key for key in FIELDS}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        if name not in by_env:
            known = ", ".join(sorted(by_env))
            raise ConfigError(
                f"{name} (environment): unknown setting. Fix: unset it, or use one of: {known}."
            )
        key = by_env[name]
        source = f"environment variable {name}"
        values[key] = _coerce(key, environ[name], source, from_text=True)
        sources[key] = source
    for flag, value in (overrides or {}).items():
        if value is None:
            continue
        if flag not in FIELDS:
            raise _unknown(flag, "command line")
        source = f"--{flag.replace('_', '-')}"
        values[flag] = _coerce(flag, value, source, from_text=False)
        sources[flag] = source
    if values["model"] is None:
        raise ConfigError(
            'model (from default): required, not set. Fix: pass --model PATH, set model = "PATH" in the '
            f"config file, or export {env_name('model')}=PATH."
        )
    if check_model and not _model_exists(values["model"]):
        raise _error(
            "model",
            sources.get("model", "default"),
            values["model"],
            "an existing model folder or file (model.json + model.safetensors)",
            "check the path, or save a model with `ramparts train` / `ramparts harden --out`",
        )
    return GatewayConfig(
        model=values["model"],
        host=values["host"],
        port=values["port"],
        db=values["db"],
        max_batch=values["max_batch"],
        max_body_bytes=values["max_body_bytes"],
        max_encrypted_body_bytes=values["max_encrypted_body_bytes"],
        input_range=values["input_range"],
        log_inputs=values["log_inputs"],
        detection=DetectionConfig(policy=values["detection.policy"]),
        prada=PradaConfig(
            enabled=values["prada.enabled"],
            delta=values["prada.delta"],
            min_samples=values["prada.min_samples"],
            on_alarm=values["prada.on_alarm"],
        ),
        defaults=KeyDefaults(
            output=values["defaults.output"],
            rate_per_s=values["defaults.rate_per_s"],
            burst=values["defaults.burst"],
            budget=values["defaults.budget"],
        ),
        sources=sources,
    )


def _model_exists(model: str) -> bool:
    p = Path(model)
    if p.is_dir():
        return (p / "model.json").is_file()
    if p.is_file():
        return True
    return p.with_name(p.name + ".json").is_file()


__all__ = [
    "ENV_PREFIX",
    "FIELDS",
    "ON_ALARM",
    "POLICIES",
    "ConfigError",
    "DetectionConfig",
    "GatewayConfig",
    "KeyDefaults",
    "PradaConfig",
    "env_name",
    "load_config",
]
