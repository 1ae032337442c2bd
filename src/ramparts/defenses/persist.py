"""A file format for wrapped defences: a :class:`DefendedModel` saved to one folder and loaded back.

A defended model is a model (issue 7), so it must be servable and auditable from a file like any zoo model.
The folder holds the classifier as the zoo writes it, a JSON description of the defence, and one safetensors
file with the defence's learned tensors::

    model.json              {"format": "ramparts-defended", "version": 1,
                             "autoencoders": [{"class": "Autoencoder", "config": {...}}, ...],
                             "transforms": [{"class": "Reformer", "config": {"ae": 0}}, ...],
                             "detectors": [{"class": "ReconstructionDetector", "config": {"ae": 0, "p": 2},
                                            "threshold": 0.21}, ...]}
    defense.safetensors     "autoencoders.<i>.<tensor>": the autoencoders' weights
    classifier.json         the classifier (``zoo.save_model``: arch, config, extra)
    classifier.safetensors

Classes are named from a fixed table (MagNet, Meng & Chen 2017; feature squeezing, Xu et al. 2018; the input
transformations of Guo et al. 2018) and rebuilt from their constructor config: nothing is imported by name or
unpickled. Autoencoders are referred to by index, so one shared by the reformer and the detectors stays one
module after loading; detectors that read the classifier get the loaded classifier itself. Randomised parts
(``RandomReformer``, ``RandomNoise``) are saved with their seed and restart their draws from it on loading.
``zoo.load_model`` hands a folder in this format to :func:`load_defended`, so ``ramparts attack --model``,
``ramparts audit --model`` and ``load_oracle`` accept it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import save_file
from torch import nn

from ramparts.defenses.base import DefendedModel, Detector, Transform
from ramparts.defenses.magnet import (
    Autoencoder,
    DivergenceDetector,
    RandomReformer,
    ReconstructionDetector,
    Reformer,
)
from ramparts.defenses.squeezing import BitDepth, MedianFilter, SqueezeDetector
from ramparts.defenses.transforms import GaussianSmoothing, Quantize, RandomNoise
from ramparts.errors import RampartsError, RampartsTypeError, ValidationError, invalid
from ramparts.zoo import DEFENDED_FORMAT, _read_safetensors, load_model, save_model

__all__ = [
    "DEFENDED_FORMAT",
    "DEFENDED_FORMAT_VERSION",
    "DETECTOR_CLASSES",
    "TRANSFORM_CLASSES",
    "DefenseFileError",
    "load_defended",
    "save_defended",
]

logger = logging.getLogger(__name__)

DEFENDED_FORMAT_VERSION = 1
DESCRIPTION_FILE = "model.json"
TENSORS_FILE = "defense.safetensors"
CLASSIFIER_PREFIX = "classifier"
_RESAVE = "undo the edit, or re-save the model with ramparts.defenses.persist.save_defended"

_Json = dict[str, Any]


class DefenseFileError(ValidationError):
    """A defence file that does not hold what it should; the message already names the file and the place."""


class _Saver:
    """Describes a defence for the JSON: collects its autoencoders by identity and checks classifier references."""

    def __init__(self, classifier: nn.Module) -> None:
        self.classifier = classifier
        self.autoencoders: list[Autoencoder] = []
        self.configs: list[_Json] = []

    def ae(self, module: nn.Module, where: str) -> int:
        """The index of ``module`` in the autoencoder table, added on first sight."""
        for i, known in enumerate(self.autoencoders):
            if known is module:
                return i
        if type(module) is not Autoencoder:
            raise invalid(
                where,
                type(module).__name__,
                "a ramparts.defenses.magnet.Autoencoder (the only autoencoder the file format rebuilds)",
                "build the defence's autoencoders with Autoencoder(in_channels, width=, depth=, pool=)",
                cls=RampartsTypeError,
            )
        self.configs.append(_autoencoder_config(module, where))
        self.autoencoders.append(module)
        return len(self.autoencoders) - 1

    def same_classifier(self, module: nn.Module, where: str) -> None:
        """Refuse a detector built on another classifier than the defended model's: the file has only one."""
        if module is not self.classifier:
            raise invalid(
                where,
                type(module).__name__,
                "the defended model's own classifier module",
                "build the detector on DefendedModel.classifier",
            )

    def describe(self, module: nn.Module, table: Mapping[str, _Kind], where: str) -> _Json:
        """``{"class": name, "config": {...}}`` for a module of ``table`` (exact classes only)."""
        kind = next((k for k in table.values() if type(module) is k.cls), None)
        if kind is None:
            raise invalid(
                where,
                type(module).__name__,
                f"one of the savable classes {', '.join(table)}",
                "compose the defence from these classes (subclasses are not saved: their behaviour may differ)",
                cls=RampartsTypeError,
            )
        return {"class": kind.cls.__name__, "config": kind.describe(module, self, where)}


class _Loader:
    """Rebuilds modules from the JSON: resolves autoencoder indices and the classifier; names the file in errors."""

    def __init__(self, file: Path, classifier: nn.Module, autoencoders: list[Autoencoder]) -> None:
        self.file = file
        self.classifier = classifier
        self.autoencoders = autoencoders

    def error(self, where: str, given: Any, expected: str) -> DefenseFileError:
        return DefenseFileError(str(invalid(f"{self.file}: {where}", given, expected, _RESAVE)))

    def ae(self, index: Any, where: str) -> Autoencoder:
        count = len(self.autoencoders)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
            raise self.error(where, index, f"an index into the {count} autoencoders of the file")
        return self.autoencoders[index]

    def ae_list(self, indices: Any, where: str) -> list[Autoencoder]:
        if not isinstance(indices, list) or not indices:
            raise self.error(where, indices, "a non-empty list of autoencoder indices")
        return [self.ae(index, f"{where}[{i}]") for i, index in enumerate(indices)]

    def items(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.error(where, value, "a JSON list")
        return value

    def build(
        self, entry: Any, table: Mapping[str, _Kind], where: str, extra: tuple[str, ...] = ()
    ) -> nn.Module:
        """The module an entry ``{"class", "config", *extra}`` describes; every key and value checked."""
        keys = ("class", "config", *extra)
        if not isinstance(entry, dict) or set(entry) != set(keys):
            shown = sorted(entry) if isinstance(entry, dict) else entry
            raise self.error(where, shown, f"an object with exactly the keys {', '.join(keys)}")
        name = entry["class"]
        if not isinstance(name, str) or name not in table:
            raise self.error(f"{where}.class", name, f"one of {', '.join(table)}")
        kind, config = table[name], entry["config"]
        if not isinstance(config, dict) or set(config) != set(kind.keys):
            shown = sorted(config) if isinstance(config, dict) else config
            raise self.error(
                f"{where}.config", shown, f"an object with exactly the keys {', '.join(kind.keys)}"
            )
        try:
            return kind.build(config, self, f"{where}.config")
        except DefenseFileError:
            raise
        except RampartsError as exc:
            raise self.error(f"{where}.config", config, f"a valid {name} config ({exc})") from exc


@dataclass(frozen=True)
class _Kind:
    """One savable class: its constructor config keys, how to read them off a module, how to rebuild it."""

    cls: type[nn.Module]
    keys: tuple[str, ...]
    describe: Callable[[Any, _Saver, str], _Json]
    build: Callable[[_Json, _Loader, str], nn.Module]


def _ae_indices(module: RandomReformer, saver: _Saver, where: str) -> list[int]:
    return [saver.ae(ae, f"{where}.autoencoders[{i}]") for i, ae in enumerate(module.autoencoders)]


def _divergence(module: DivergenceDetector, saver: _Saver, where: str) -> _Json:
    saver.same_classifier(module.classifier, f"{where}.classifier")
    return {"ae": saver.ae(module.ae, f"{where}.ae"), "temperature": module.temperature}


def _squeeze(module: SqueezeDetector, saver: _Saver, where: str) -> _Json:
    saver.same_classifier(module.classifier, f"{where}.classifier")
    squeezers = [
        saver.describe(s, TRANSFORM_CLASSES, f"{where}.squeezers[{i}]")
        for i, s in enumerate(module.squeezers)
    ]
    return {"squeezers": squeezers}


def _build_squeeze(config: _Json, loader: _Loader, where: str) -> SqueezeDetector:
    entries = loader.items(config["squeezers"], f"{where}.squeezers")
    squeezers = [
        cast(Transform, loader.build(e, TRANSFORM_CLASSES, f"{where}.squeezers[{i}]"))
        for i, e in enumerate(entries)
    ]
    return SqueezeDetector(loader.classifier, squeezers)


TRANSFORM_CLASSES: dict[str, _Kind] = {
    k.cls.__name__: k
    for k in (
        _Kind(BitDepth, ("bits",), lambda m, s, w: {"bits": m.bits}, lambda c, r, w: BitDepth(c["bits"])),
        _Kind(
            MedianFilter, ("size",), lambda m, s, w: {"size": m.size}, lambda c, r, w: MedianFilter(c["size"])
        ),
        _Kind(
            Quantize, ("levels",), lambda m, s, w: {"levels": m.levels}, lambda c, r, w: Quantize(c["levels"])
        ),
        _Kind(
            GaussianSmoothing,
            ("sigma", "kernel_size"),
            lambda m, s, w: {"sigma": m.sigma, "kernel_size": m.kernel_size},
            lambda c, r, w: GaussianSmoothing(sigma=c["sigma"], kernel_size=c["kernel_size"]),
        ),
        _Kind(
            RandomNoise,
            ("sigma", "seed"),
            lambda m, s, w: {"sigma": m.sigma, "seed": m.seed},
            lambda c, r, w: RandomNoise(sigma=c["sigma"], seed=c["seed"]),
        ),
        _Kind(
            Reformer,
            ("ae",),
            lambda m, s, w: {"ae": s.ae(m.ae, f"{w}.ae")},
            lambda c, r, w: Reformer(r.ae(c["ae"], f"{w}.ae")),
        ),
        _Kind(
            RandomReformer,
            ("autoencoders", "seed"),
            lambda m, s, w: {"autoencoders": _ae_indices(m, s, w), "seed": m.seed},
            lambda c, r, w: RandomReformer(r.ae_list(c["autoencoders"], f"{w}.autoencoders"), seed=c["seed"]),
        ),
    )
}
"""The transforms a defence file may name: class name -> how to describe and rebuild it."""

DETECTOR_CLASSES: dict[str, _Kind] = {
    k.cls.__name__: k
    for k in (
        _Kind(
            ReconstructionDetector,
            ("ae", "p"),
            lambda m, s, w: {"ae": s.ae(m.ae, f"{w}.ae"), "p": m.p},
            lambda c, r, w: ReconstructionDetector(r.ae(c["ae"], f"{w}.ae"), p=c["p"]),
        ),
        _Kind(
            DivergenceDetector,
            ("ae", "temperature"),
            _divergence,
            lambda c, r, w: DivergenceDetector(
                r.ae(c["ae"], f"{w}.ae"), r.classifier, temperature=c["temperature"]
            ),
        ),
        _Kind(SqueezeDetector, ("squeezers",), _squeeze, _build_squeeze),
    )
}
"""The detectors a defence file may name; those reading a classifier get the defended model's own."""

_AUTOENCODER_KEYS = ("in_channels", "width", "depth", "pool")


def _autoencoder_config(ae: Autoencoder, where: str) -> _Json:
    """The constructor config of ``ae``, read off its layers (it keeps only ``pool``) and checked by rebuilding."""
    convs = [m for m in ae.net if isinstance(m, nn.Conv2d)]
    config: _Json = {
        "in_channels": convs[0].in_channels,
        "width": convs[0].out_channels,
        "depth": (len(convs) - 1) // 2,
        "pool": ae.pool,
    }
    if repr(_new_autoencoder(config)) != repr(ae):
        raise invalid(
            where,
            "a modified Autoencoder",
            "an Autoencoder as its constructor builds it",
            "save autoencoders built by Autoencoder(in_channels, width=, depth=, pool=) without changing their layers",
        )
    return config


def _new_autoencoder(config: _Json) -> Autoencoder:
    """An autoencoder of ``config``; its random initialisation does not touch the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        return Autoencoder(
            config["in_channels"], width=config["width"], depth=config["depth"], pool=config["pool"]
        )


def _threshold(detector: Detector, where: str) -> float | None:
    value = detector.threshold
    if value is not None and not math.isfinite(value):
        raise invalid(where, value, "a finite threshold or None", "calibrate the detector on clean data")
    return None if value is None else float(value)


def save_defended(
    model: DefendedModel,
    path: str | os.PathLike[str],
    *,
    arch: str,
    config: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` into the folder ``path`` (created if missing); return the path of its ``model.json``.

    ``arch`` and ``config`` rebuild the classifier through :func:`ramparts.zoo.build` and ``extra`` is its JSON
    metadata (input shape, classes, dataset...), as for :func:`ramparts.zoo.save_model`. Every transform and
    detector must be one of :data:`TRANSFORM_CLASSES` / :data:`DETECTOR_CLASSES`; the whole defence is checked
    before anything is written, and ``model.json`` is written last.
    """
    if not isinstance(model, DefendedModel):
        raise invalid(
            "model", type(model).__name__, "a ramparts.defenses.DefendedModel", cls=RampartsTypeError
        )
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise invalid("path", str(path), "a folder (created if missing)", "give a folder name, not a file")
    saver = _Saver(model.classifier)
    transforms = [
        saver.describe(t, TRANSFORM_CLASSES, f"transforms[{i}]") for i, t in enumerate(model.transforms)
    ]
    detectors = [
        {
            **saver.describe(d, DETECTOR_CLASSES, f"detectors[{i}]"),
            "threshold": _threshold(cast(Detector, d), f"detectors[{i}].threshold"),
        }
        for i, d in enumerate(model.detectors)
    ]
    description = {
        "format": DEFENDED_FORMAT,
        "version": DEFENDED_FORMAT_VERSION,
        "autoencoders": [{"class": "Autoencoder", "config": c} for c in saver.configs],
        "transforms": transforms,
        "detectors": detectors,
    }
    text = json.dumps(description, indent=2, allow_nan=False)
    tensors = {
        f"autoencoders.{i}.{name}": value.detach().cpu().contiguous()
        for i, ae in enumerate(saver.autoencoders)
        for name, value in ae.state_dict().items()
    }
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):  # the zoo builds a reference model; keep the caller's RNG
        save_model(model.classifier, folder / CLASSIFIER_PREFIX, arch=arch, config=config, extra=extra)
    save_file(tensors, str(folder / TENSORS_FILE), metadata={"format": DEFENDED_FORMAT})
    description_file = folder / DESCRIPTION_FILE
    description_file.write_text(text + "\n", encoding="utf-8")
    logger.info(
        "saved a defended %s (%d transforms, %d detectors) to %s",
        arch,
        len(transforms),
        len(detectors),
        folder,
    )
    return description_file


def load_defended(path: str | os.PathLike[str]) -> tuple[DefendedModel, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_defended`; returns (the model on the CPU in eval mode, its meta).

    ``path`` is the folder or its ``model.json``. The meta holds the classifier's ``arch``, ``config`` and
    ``extra`` (as :func:`ramparts.zoo.load_model` returns them) and the defence's description under
    ``"defense"``. Every class, key, index, threshold and tensor is checked; errors name the file and the fix.
    """
    given = Path(path)
    file = given / DESCRIPTION_FILE if given.is_dir() else given
    if file.suffix != ".json" or not file.is_file():
        raise invalid(
            "path", str(path), f"a folder written by save_defended, holding {DESCRIPTION_FILE}", _RESAVE
        )
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid("path", str(file), "a JSON defence description", f"fix the file ({exc})") from exc
    _check_header(doc, file)
    with torch.random.fork_rng(devices=[]):  # building the classifier draws initial weights
        classifier, meta = load_model(file.parent / CLASSIFIER_PREFIX)
    if isinstance(classifier, DefendedModel):
        raise invalid(
            "path",
            str(file.parent / f"{CLASSIFIER_PREFIX}.json"),
            "a plain zoo classifier (a defended model's classifier is not itself defended)",
            _RESAVE,
        )
    autoencoders = _load_autoencoders(doc["autoencoders"], file)
    loader = _Loader(file, classifier, autoencoders)
    transforms = [
        cast(Transform, loader.build(e, TRANSFORM_CLASSES, f"transforms[{i}]"))
        for i, e in enumerate(loader.items(doc["transforms"], "transforms"))
    ]
    detectors: list[Detector] = []
    for i, entry in enumerate(loader.items(doc["detectors"], "detectors")):
        detector = cast(Detector, loader.build(entry, DETECTOR_CLASSES, f"detectors[{i}]", ("threshold",)))
        detector.threshold = _read_threshold(entry["threshold"], loader, f"detectors[{i}].threshold")
        detectors.append(detector)
    model = DefendedModel(classifier, transforms=transforms, detectors=detectors).eval()
    info = {key: doc[key] for key in ("autoencoders", "transforms", "detectors")}
    return model, {**meta, "format": DEFENDED_FORMAT, "version": doc["version"], "defense": info}


def _check_header(doc: Any, file: Path) -> None:
    keys = {"format", "version", "autoencoders", "transforms", "detectors"}
    if not isinstance(doc, dict) or doc.get("format") != DEFENDED_FORMAT:
        given = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise invalid(f"{file}: format", given, f"{DEFENDED_FORMAT!r}", _RESAVE)
    version = doc.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > DEFENDED_FORMAT_VERSION:
        raise invalid(
            f"{file}: version",
            version,
            f"a format version up to {DEFENDED_FORMAT_VERSION} (this Ramparts)",
            "upgrade Ramparts to read files written by a newer one",
        )
    if version != DEFENDED_FORMAT_VERSION or isinstance(version, bool):
        raise invalid(f"{file}: version", version, f"format version {DEFENDED_FORMAT_VERSION}", _RESAVE)
    if set(doc) != keys:
        raise invalid(f"{file}: keys", sorted(doc), f"exactly the keys {', '.join(sorted(keys))}", _RESAVE)


def _load_autoencoders(entries: Any, file: Path) -> list[Autoencoder]:
    """The autoencoder table, built from its configs and filled from ``defense.safetensors`` (checked strictly)."""
    where = f"{file}: autoencoders"
    if not isinstance(entries, list):
        raise invalid(where, entries, "a JSON list", _RESAVE)
    autoencoders: list[Autoencoder] = []
    for i, entry in enumerate(entries):
        if (
            not isinstance(entry, dict)
            or set(entry) != {"class", "config"}
            or entry["class"] != "Autoencoder"
        ):
            raise invalid(f"{where}[{i}]", entry, '{"class": "Autoencoder", "config": {...}}', _RESAVE)
        config = entry["config"]
        if not isinstance(config, dict) or set(config) != set(_AUTOENCODER_KEYS):
            raise invalid(
                f"{where}[{i}].config", config, f"exactly the keys {', '.join(_AUTOENCODER_KEYS)}", _RESAVE
            )
        try:
            autoencoders.append(_new_autoencoder(config))
        except RampartsError as exc:
            raise invalid(
                f"{where}[{i}].config", config, f"a valid Autoencoder config ({exc})", _RESAVE
            ) from exc
    tensors_file = file.parent / TENSORS_FILE
    if not tensors_file.is_file():
        raise invalid(
            str(tensors_file), "no such file", "the defence's tensors next to its model.json", _RESAVE
        )
    try:
        state = _read_safetensors(tensors_file)
    except ValidationError as exc:
        raise invalid(str(tensors_file), "an unreadable file", "a safetensors file", _RESAVE) from exc
    expected = {
        f"autoencoders.{i}.{name}": value
        for i, ae in enumerate(autoencoders)
        for name, value in ae.state_dict().items()
    }
    problems = [f"missing {k}" for k in sorted(set(expected) - set(state))]
    problems += [f"unexpected {k}" for k in sorted(set(state) - set(expected))]
    problems += [
        f"{k} of shape {tuple(state[k].shape)} instead of {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if problems:
        shown = "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
        raise invalid(
            f"{tensors_file}: tensors",
            shown,
            f"exactly the tensors of the autoencoders described in {file.name}",
            _RESAVE,
        )
    for i, ae in enumerate(autoencoders):
        prefix = f"autoencoders.{i}."
        ae.load_state_dict(
            {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, strict=True
        )
        ae.eval()
    return autoencoders


def _read_threshold(value: Any, loader: _Loader, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise loader.error(where, value, "a finite number, or null for an uncalibrated detector")
    return float(value)
