"""What every command shares: the error boundary, consoles, and loading data and models."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import typer
from rich.console import Console
from rich.markup import escape
from torch import Tensor

from ramparts.data import DATASET_FORMS
from ramparts.errors import AccessError, RampartsError, invalid, unknown
from ramparts.oracles.base import Knowledge, Oracle
from ramparts.params import HasParams

# Options shared by the commands that take a model and a dataset.
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model saved by `ramparts train` or `ramparts harden` (folder, .json or .safetensors). "
        "Default: train small_cnn on the data first (a few seconds on digits).",
    ),
]
DataOption = Annotated[
    str | None,
    typer.Option(
        "--data", "-d", help=f"Dataset: {'; '.join(DATASET_FORMS)}. Default: the model's, else digits."
    ),
]
# `ramparts audit`'s model options: every kind of model it takes (`load_audit_target`).
AuditModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="The model to audit: a zoo folder (.json/.safetensors, from `ramparts train` or `harden`) or a "
        "TorchScript file (white-box), an .onnx file or an http(s):// prediction API (black-box sections only; "
        "report.json says which sections did not run and why). A pickled torch.save file is refused. "
        "Default: train small_cnn on the data first.",
    ),
]
OracleConfigOption = Annotated[
    str | None,
    typer.Option(
        "--oracle-config",
        help="JSON file of the HTTP API's settings (HttpConfig: headers, fields, output kind, batch size...), "
        "with an http(s):// --model.",
    ),
]
RecipeOption = Annotated[
    str,
    typer.Option(
        "--recipe",
        help="What membership and poisoning retrain: 'auto' (the model's own zoo architecture, else skip them), "
        "'default' (the audit's small_cnn recipe as a stated proxy) or a zoo architecture.",
    ),
]

F = TypeVar("F", bound=Callable[..., Any])

# Exit codes: 0 ok, 1 a gate failed (audit --fail-under), 2 a user error (bad option or input).
EXIT_GATE = 1
EXIT_USAGE = 2

# Rich resolves sys.stdout/sys.stderr on every write, so test runners that swap them still capture.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print one red line on stderr; return the Exit to raise."""
    err.print(f"[bold red]Error:[/] [red]{escape(message)}[/]", soft_wrap=True)
    return typer.Exit(code)


def user_errors(fn: F) -> F:
    """The CLI's error boundary: a RampartsError or a bad parameter is one red line and exit 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.BadParameter as exc:
            name = exc.param_hint or (exc.param.name if exc.param is not None else None)
            raise fail(f"{name}: {exc.message}" if name else exc.message) from None
        except RampartsError as exc:
            raise fail(_as_option(str(exc), kwargs)) from None

    return cast(F, wrapper)


def _as_option(message: str, options: dict[str, Any]) -> str:
    """`eps: expected...` -> `--eps: expected...` when the error names one of the command's options."""
    head, sep, rest = message.partition(":")
    if sep and head in options:
        return f"--{head.replace('_', '-')}{sep}{rest}"
    return message


def parse_params(items: list[str], cls: type[HasParams], name: str) -> dict[str, Any]:
    """`-p steps=20 -p loss=dlr` -> {"steps": 20, "loss": "dlr"} (values read as JSON when they parse),
    checked against the keyword parameters of `cls` (an attack or a theft called `name`)."""
    allowed = cls.param_names()
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            keys = ", ".join(allowed) or "none"
            raise invalid(
                "--param", item, "KEY=VALUE", f"e.g. -p {(allowed or ['key'])[0]}=... ; keys: {keys}."
            )
        if key not in allowed:
            raise invalid("--param", key, f"a hyperparameter of {name!r}: {', '.join(allowed)}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def parse_shares(spec: str, option: str, what: str) -> list[float]:
    """ "0.01,0.05" -> [0.01, 0.05]: a sorted, de-duplicated comma list of shares in (0, 1) for `option`."""
    expected = f"a comma list of {what} in (0, 1), e.g. 0.01,0.05"
    try:
        values = sorted({float(v) for v in spec.split(",") if v.strip()})
    except ValueError as exc:
        raise invalid(option, spec, expected) from exc
    if not values or any(not 0 < v < 1 for v in values):
        raise invalid(option, spec, expected)
    return values


def print_json(value: Any) -> None:
    """Machine output: strict JSON on stdout and nothing else."""
    from ramparts.report.json import to_jsonable

    sys.stdout.write(json.dumps(to_jsonable(value), indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


def load_splits(spec: str, *, seed: int = 0) -> tuple[Any, Any]:
    """(train, test) for a dataset spec: MNIST's own split; any other dataset split 75/25 by `seed`."""
    from ramparts.audit import default_split
    from ramparts.data import load_dataset

    base = spec.strip().partition(":")[0]
    if base == "mnist" and not Path(spec).exists():
        return load_dataset("mnist:train"), load_dataset("mnist")
    return default_split(load_dataset(spec), seed=seed)


def load_target(
    model_path: str | None, data: str | None, *, seed: int, epochs: int, quiet: bool
) -> dict[str, Any]:
    """The model (loaded from a zoo file, or the default trained on the spot) and the data it is judged on."""
    from ramparts.audit import DEFAULT_ARCH, train_default_model
    from ramparts.zoo import load_model

    meta: dict[str, Any] = {}
    if model_path is not None:
        model, meta = load_model(model_path)
        extra = meta.get("extra", {}) if isinstance(meta.get("extra"), dict) else {}
        spec = data or str(extra.get("dataset", "digits"))
        train_ds, test_ds = load_splits(spec)
        shape = extra.get("input_shape")
        if shape is not None and tuple(shape) != tuple(test_ds.input_shape):
            raise invalid(
                "--data",
                spec,
                f"images of the shape the model was trained on, {tuple(shape)}; got {test_ds.input_shape}",
                "pass the dataset the model was trained on.",
            )
        info = {
            "arch": meta["arch"],
            "config": meta.get("config", {}),
            "source": str(model_path),
            "trained_here": False,
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        if "test_accuracy" in extra:
            info["test_accuracy_at_training"] = extra["test_accuracy"]
        if isinstance(meta.get("defense"), dict):
            info["defense"] = {
                part: [entry["class"] for entry in meta["defense"][part]]
                for part in ("transforms", "detectors")
            }
    else:
        spec = data or "digits"
        train_ds, test_ds = load_splits(spec)
        if not quiet:
            err.print(
                f"[dim]No --model given: training {DEFAULT_ARCH} on {escape(spec)} for {epochs} epochs "
                "(save one with `ramparts train` to skip this).[/]"
            )
        model, info = train_default_model(train_ds, test_ds, epochs=epochs, seed=seed, progress=not quiet)
    return {"model": model, "info": info, "train": train_ds, "test": test_ds, "data": spec}


def load_audit_target(
    model_spec: str | None,
    data: str | None,
    *,
    epochs: int,
    quiet: bool,
    oracle_config: str | None = None,
    recipe: str = "auto",
) -> dict[str, Any]:
    """What `ramparts audit --model M --data D [--oracle-config C] [--recipe R]` audits, ready for `run_audit`.

    `model_spec`: a zoo folder / .json / .safetensors (white-box; its data by default is the one it was saved
    with), a TorchScript file (white-box), an .onnx file or an http(s):// API (black-box sections only;
    `oracle_config`: the API's `HttpConfig` JSON); None: `run_audit` trains the default model itself, for
    `epochs`, so that a resumed run reuses it. `data` (default: the model's dataset, else digits) is split
    75/25 (MNIST: its own split); the 75% is taken as the model's training data by the sections that need it.
    Returns {"model": the oracle or None, "info": its description (report.json's `model`) or None, "train",
    "test", "data": the dataset spec, "kind": a key of `ramparts.audit.model.MODEL_KINDS`, "skipped": the
    sections this model cannot allow and why (`unavailable_sections`; report.json's `config.skipped` will say
    the same)}. Unless `quiet`, says on stderr what is trained and what will not run.
    """
    from ramparts import zoo
    from ramparts.audit import DEFAULT_ARCH
    from ramparts.audit.model import load_audit_model, model_kind
    from ramparts.audit.run import unavailable_sections

    kind = "trained_here" if model_spec is None else model_kind(model_spec)
    if oracle_config is not None and kind != "http":
        raise invalid(
            "--oracle-config",
            oracle_config,
            "a config only with an http(s):// --model",
            "drop --oracle-config.",
        )
    loaded = None
    spec = data or "digits"
    if model_spec is not None and kind == "zoo":
        loaded = zoo.load_model(model_spec)
        extra = loaded[1].get("extra")
        spec = data or str((extra if isinstance(extra, dict) else {}).get("dataset", "digits"))
    train_ds, test_ds = load_splits(spec)
    oracle, info = (
        (None, None)
        if model_spec is None
        else load_audit_model(model_spec, test_ds, oracle_config=oracle_config, zoo_model=loaded)
    )
    skipped = unavailable_sections(oracle, test_ds, train_ds=train_ds, model_info=info, recipe=recipe)
    if not quiet:
        if model_spec is None:
            err.print(
                f"[dim]No --model given: the audit trains {DEFAULT_ARCH} on {escape(spec)} for {epochs} epochs "
                "(save one with `ramparts train` to skip this).[/]"
            )
        for section, reason in skipped.items():
            err.print(f"[yellow]Will not run[/] {escape(section)}: {escape(reason)}")
    return {
        "model": oracle,
        "info": info,
        "train": train_ds,
        "test": test_ds,
        "data": spec,
        "kind": kind,
        "skipped": skipped,
    }


def make_oracle(model: Any, test_ds: Any) -> Any:
    """Wrap a module for attacks; a shape mismatch is a user error, not a traceback."""
    from ramparts.oracles import TorchOracle

    try:
        return TorchOracle(model, input_shape=test_ds.input_shape)
    except RuntimeError as exc:
        raise invalid(
            "--data",
            test_ds.name,
            f"images the model accepts (input shape {test_ds.input_shape} failed)",
            str(exc),
        ) from None


KNOWLEDGE_NAMES: tuple[str, ...] = tuple(k.name.lower() for k in sorted(Knowledge, reverse=True))


class LimitedOracle(Oracle):
    """An oracle adaptor answering at most `knowledge`: labels always, scores and gradients only if allowed.

    The attack's view is built from `knowledge`, so an attack that needs more fails with an AccessError.
    """

    def __init__(self, inner: Oracle, knowledge: Knowledge) -> None:
        self._inner = inner
        self.knowledge = min(knowledge, inner.knowledge)
        self.num_classes = inner.num_classes
        self.device = inner.device
        self.input_shape = inner.input_shape

    def labels(self, x: Tensor) -> Tensor:
        return self._inner.labels(x)

    def log_probs(self, x: Tensor) -> Tensor:
        if self.knowledge < Knowledge.SCORE:
            raise NotImplementedError("this target answers labels only")
        return self._inner.log_probs(x)

    def logits(self, x: Tensor) -> Tensor:
        if self.knowledge < Knowledge.GRADIENT:
            raise NotImplementedError("this target has no gradients")
        return self._inner.logits(x)

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        with self._inner.evaluating():
            yield


def parse_knowledge(value: str | None) -> Knowledge | None:
    """`--knowledge gradient|score|label` (None: all the model offers)."""
    if value is None:
        return None
    try:
        return Knowledge.parse(value.strip())
    except KeyError:
        raise unknown("--knowledge", value, KNOWLEDGE_NAMES) from None


def limit_knowledge(oracle: Oracle, level: Knowledge | None) -> Oracle:
    """`oracle` offering at most `level`; more than the model has is a user error (a label-only API has no
    scores to give)."""
    if level is None or level == oracle.knowledge:
        return oracle
    if level > oracle.knowledge:
        have = oracle.knowledge.name.lower()
        raise AccessError(
            f"--knowledge: the model offers only {have} access, got {level.name.lower()}. "
            f"Fix: pass --knowledge {have} or a lower level."
        )
    return LimitedOracle(oracle, level)
