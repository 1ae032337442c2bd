"""The model behind the gateway: loaded once, answered in batches, with its detectors applied per policy.

A zoo model, a saved defence (`ramparts harden --out`: a `DefendedModel` with transforms and detectors) or a
polynomial model (`ramparts encrypt train`) loads from its folder. Policies:

- `off`: the model as saved (a defence's transforms included), no detectors run;
- `flag`: the same answers, plus each row's detector verdict;
- `reject`: flagged rows get no answer (label -1, null scores);
- `reform`: unflagged rows skip the MagNet reformer, flagged rows go through it (Meng & Chen 2017 reform every
  input; reforming only what the detectors flag keeps clean accuracy where the reformer costs some).

A row's detector score is the largest `score - threshold` over the detectors: > 0 exactly when
`DefendedModel.rejects` flags it. The model is encryptable when `ramparts.protection.he_model` compiles it;
the encrypted route then evaluates CKKS ciphertexts with the client's public context only.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from ramparts.defenses.base import DefendedModel, Detector
from ramparts.defenses.magnet import RandomReformer, Reformer
from ramparts.errors import RampartsError
from ramparts.gateway.errors import invalid_input

if TYPE_CHECKING:
    from ramparts.gateway.config import GatewayConfig
    from ramparts.protection.he_model import HEProgram

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """The model's own answer to a batch, before any output mode: probabilities [N, K] and detector results."""

    probs: Tensor
    flagged: Tensor | None  # bool [N]; None when the policy is off
    scores: Tensor | None  # float [N]
    reformed: int = 0


class ServedModel:
    """A loaded model with its input shape, classes, detection policy and (optional) HE program."""

    def __init__(
        self,
        module: nn.Module,
        meta: dict[str, Any],
        *,
        name: str,
        policy: str = "off",
        program: HEProgram | None = None,
    ) -> None:
        self.module = module.eval()
        self.meta = meta
        self.name = name
        self.policy = policy
        self.program = program
        self.input_shape = _input_shape(meta)
        with torch.no_grad():
            self.num_classes = int(self.module(torch.zeros(1, *self.input_shape)).shape[1])
        self.detectors: list[Detector] = (
            [cast(Detector, d) for d in module.detectors] if isinstance(module, DefendedModel) else []
        )

    @classmethod
    def load(cls, config: GatewayConfig) -> ServedModel:
        """Load `config.model` and check that the detection policy fits it; errors name the config key."""
        from ramparts.protection.poly import is_encryptable_file, load_encryptable
        from ramparts.zoo import load_model

        path = config.model
        try:
            module, meta = load_encryptable(path) if is_encryptable_file(path) else load_model(path)
        except RampartsError as exc:
            raise config.error(
                "model", path, "a model Ramparts can load", f"check the folder ({exc})"
            ) from None
        if not _input_shape(meta):
            raise config.error(
                "model",
                path,
                "a model whose JSON records its input shape",
                "save it with extra={'input_shape': [C, H, W]}",
            )
        served = cls(module, meta, name=Path(path).name or path, policy=config.detection.policy)
        served._check_policy(config)
        served.program = _compile(module, served.input_shape)
        logger.info(
            "model %s: input %s, %d classes, %d detector(s), policy %s, encryptable %s",
            path,
            served.input_shape,
            served.num_classes,
            len(served.detectors),
            served.policy,
            served.program is not None,
        )
        return served

    def _check_policy(self, config: GatewayConfig) -> None:
        policy = self.policy
        if policy == "off":
            return
        if not self.detectors:
            raise config.error(
                "detection.policy",
                policy,
                "'off' for a model without detectors",
                "serve a saved defence with detectors (`ramparts harden --defense magnet|squeeze --out DIR`), "
                'or set detection.policy = "off"',
            )
        if any(d.threshold is None for d in self.detectors):
            raise config.error(
                "detection.policy", policy, "calibrated detectors", "calibrate the defence before saving it"
            )
        if policy == "reform" and not self._reformers():
            raise config.error(
                "detection.policy",
                policy,
                "a defence with a MagNet reformer for 'reform'",
                "serve a MagNet defence (`ramparts harden --defense magnet`), or use flag or reject",
            )

    def _reformers(self) -> list[nn.Module]:
        if not isinstance(self.module, DefendedModel):
            return []
        return [t for t in self.module.transforms if isinstance(t, Reformer | RandomReformer)]

    @torch.no_grad()
    def answer(self, x: Tensor) -> Answer:
        """The model's probabilities for `x` under the detection policy."""
        if self.policy == "off":
            return Answer(torch.softmax(self.module(x).float(), dim=1), None, None)
        margins = torch.stack([d.score(x).float() - float(cast(float, d.threshold)) for d in self.detectors])
        scores = margins.amax(dim=0)
        flagged = scores > 0
        if self.policy != "reform":
            return Answer(torch.softmax(self.module(x).float(), dim=1), flagged, scores)
        model = cast(DefendedModel, self.module)
        reformers = set(map(id, self._reformers()))
        plain = x
        for t in model.transforms:
            if id(t) not in reformers:
                plain = t(plain)
        logits = model.classifier(plain).float()
        if bool(flagged.any()):
            logits[flagged] = model(x[flagged]).float()
        return Answer(torch.softmax(logits, dim=1), flagged, scores, reformed=int(flagged.sum()))

    def evaluate_encrypted(self, public_context: bytes, inputs: bytes) -> tuple[bytes, int]:
        """HE evaluation of a ciphertext file (bytes) under a public context file; returns (outputs file, n).

        Files that cannot be used (wrong kind, key, checksum, shape) are a 422 naming the field."""
        from ramparts.protection.he_eval import evaluate
        from ramparts.protection.he_files import load_ciphertexts, load_public_context, save_ciphertexts

        if self.program is None:
            raise RuntimeError("the model is not encryptable")
        with tempfile.TemporaryDirectory(prefix="ramparts-he-") as folder:
            work = Path(folder)
            (work / "public.ctx").write_bytes(public_context)
            (work / "inputs.ct").write_bytes(inputs)
            try:
                context = load_public_context(work / "public.ctx", n_threads=1)
            except RampartsError as exc:
                raise invalid_input("public_context_b64", _without(str(exc), folder)) from None
            try:
                batch = load_ciphertexts(work / "inputs.ct", context, role="inputs")
                result = evaluate(self.program, batch)
            except (ValueError, RuntimeError, TypeError) as exc:  # RampartsError or SEAL's own
                raise invalid_input("inputs_b64", _without(str(exc), folder)) from None
            save_ciphertexts(result, work / "outputs.ct", context=context, role="outputs")
            return (work / "outputs.ct").read_bytes(), batch.n


def _without(message: str, folder: str) -> str:
    """A file error's message without the server's temporary folder."""
    return message.replace(folder + "/", "").replace(folder, "")


def _config_shape(meta: dict[str, Any]) -> list[int] | None:
    config = meta.get("config", {})
    if isinstance(config, dict) and "in_channels" in config and "input_size" in config:
        return [int(config["in_channels"]), int(config["input_size"]), int(config["input_size"])]
    return None


def _input_shape(meta: dict[str, Any]) -> tuple[int, ...]:
    """(C, H, W) from the model JSON's `extra.input_shape`, else its zoo config; () when neither says."""
    extra = meta.get("extra")
    shape = extra.get("input_shape") if isinstance(extra, dict) else None
    if not isinstance(shape, list) or not all(isinstance(s, int) and s > 0 for s in shape):
        shape = _config_shape(meta)
    return tuple(shape or ())


def _compile(module: nn.Module, input_shape: tuple[int, ...]) -> HEProgram | None:
    """The HE program of an encryptable model, else None (ReLU and defended models are not encryptable)."""
    from ramparts.protection.he_model import compile_model

    if isinstance(module, DefendedModel):
        return None
    try:
        return compile_model(module, input_shape)
    except (RampartsError, ValueError, TypeError, RuntimeError) as exc:
        logger.info("model is not encryptable (%s); /v1/encrypted/predict is off", str(exc).splitlines()[0])
        return None


__all__ = ["Answer", "ServedModel"]
