"""Output hardening: oracle wrappers that reveal less than the model knows, against model theft.

Every hardening is itself an `Oracle`, so every attack and theft runs against it unchanged. Score
hardenings offer at most `Knowledge.SCORE` (gradients of the raw model would bypass them); `LabelOnly`
offers `Knowledge.LABEL`. `labels` is the wrapped model's, except for `NoisyScores` with
`preserve_argmax=False`, whose labels are the argmax of the noisy scores.

`harden(oracle, spec)` builds one from a command-line spec: "labels", "topk:3", "round:2",
"noise:0.05" (or "noise:0.05,SEED"), "reverse_sigmoid:0.5,0.1". `HARDENINGS` maps the names to classes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar

import torch
from torch import Tensor

from ramparts.errors import AccessError, RampartsError, UnknownNameError, invalid, unknown
from ramparts.oracles.base import Knowledge, Oracle, log_probabilities
from ramparts.registry import Registry

_TINY = torch.finfo(torch.float32).tiny


class Hardening(Oracle):
    """Base of the wrappers: delegates shape, device, classes and mode to the wrapped oracle."""

    name: ClassVar[str]
    usage: ClassVar[str]  # the spec form, for `harden` and error messages
    needs_scores: ClassVar[bool] = True

    def __init__(self, oracle: Oracle) -> None:
        if not isinstance(oracle, Oracle):
            raise invalid(
                "oracle", oracle, "a ramparts Oracle", "wrap the model with ramparts.oracles.as_oracle."
            )
        if self.needs_scores and oracle.knowledge < Knowledge.SCORE:
            raise invalid(
                "oracle",
                type(oracle).__name__,
                f"an oracle with scores for {type(self).__name__}",
                "a label-only oracle needs no output hardening; use LabelOnly or the oracle itself.",
                cls=AccessError,
            )
        self.oracle = oracle
        self.num_classes = oracle.num_classes
        self.device = oracle.device
        self.input_shape = oracle.input_shape
        self.knowledge = min(oracle.knowledge, Knowledge.SCORE)

    @classmethod
    def from_args(cls, oracle: Oracle, args: Sequence[str]) -> Hardening:
        """Build from the spec's arguments (strings); the parser `harden` names the spec on errors."""
        raise NotImplementedError

    def probs(self, x: Tensor) -> Tensor:
        """The wrapped oracle's class probabilities."""
        return self.oracle.log_probs(x).exp()

    def labels(self, x: Tensor) -> Tensor:
        return self.oracle.labels(x)

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        with self.oracle.evaluating():
            yield

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.oracle!r})"


HARDENINGS: Registry[type[Hardening]] = Registry("hardening")


def _keep_top1(perturbed: Tensor, top: Tensor) -> Tensor:
    """Swap values so that column `top` holds each row's maximum (the top-1 label survives)."""
    out = perturbed.clone()
    rows = torch.arange(len(out), device=out.device)
    best = out.argmax(dim=1)
    hi = out[rows, best]
    out[rows, best] = out[rows, top]
    out[rows, top] = hi
    return out


def _nonempty(probs: Tensor, top: Tensor) -> Tensor:
    """Rows that lost all their mass (everything clipped to 0) become one-hot on `top`."""
    empty = probs.sum(dim=1) <= 0
    if bool(empty.any()):
        probs = probs.clone()
        rows = empty.nonzero().squeeze(1)
        probs[rows] = 0.0
        probs[rows, top[rows]] = 1.0
    return probs


@HARDENINGS.register("labels")
class LabelOnly(Hardening):
    """Answer with the predicted class only (knowledge LABEL): the strongest output hardening.

    Tramèr et al., "Stealing Machine Learning Models via Prediction APIs" (USENIX Security 2016), §7:
    omitting confidence values is the first countermeasure; extraction then needs many more queries.
    """

    usage = "labels"
    needs_scores = False

    def __init__(self, oracle: Oracle) -> None:
        super().__init__(oracle)
        self.knowledge = Knowledge.LABEL

    @classmethod
    def from_args(cls, oracle: Oracle, args: Sequence[str]) -> Hardening:
        _count(args, 0)
        return cls(oracle)

    def log_probs(self, x: Tensor) -> Tensor:
        raise AccessError(
            "oracle: LabelOnly answers labels only, no scores. Fix: use an attack or theft that needs "
            "label access, or another hardening."
        )


@HARDENINGS.register("topk")
class TopK(Hardening):
    """Reveal the probabilities of the top `k` classes only, the rest zeroed, renormalised.

    Orekondy et al., "Knockoff Nets" (CVPR 2019), §6 and Tramèr et al. 2016, §7 (truncation of the
    returned vector). `k=1` is a one-hot answer: scores that say no more than the label.
    """

    usage = "topk:K"

    def __init__(self, oracle: Oracle, k: int) -> None:
        super().__init__(oracle)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.num_classes:
            raise invalid("k", k, f"an integer in [1, {self.num_classes}] (the number of classes)")
        self.k = k

    @classmethod
    def from_args(cls, oracle: Oracle, args: Sequence[str]) -> Hardening:
        _count(args, 1)
        return cls(oracle, _int("k", args[0]))

    @torch.no_grad()
    def log_probs(self, x: Tensor) -> Tensor:
        probs = self.probs(x)
        top = probs.topk(self.k, dim=1).indices
        kept = torch.zeros_like(probs).scatter_(1, top, probs.gather(1, top))
        return log_probabilities(kept)

    def __repr__(self) -> str:
        return f"TopK({self.oracle!r}, k={self.k})"


@HARDENINGS.register("round")
class Rounded(Hardening):
    """Round every probability to `decimals` decimals, as many prediction APIs do.

    Tramèr et al. 2016, §7 ("rounding confidences"): equation-solving attacks then need more queries.
    The rounded values are returned as they are (not renormalised): `exp(log_probs)` has `decimals`
    decimals, and a class rounded to 0 has log-probability float32's smallest normal (-87.3). A row
    rounded to all zeros (only with fewer decimals than log10 of the number of classes) is one-hot.
    """

    usage = "round:DECIMALS"

    def __init__(self, oracle: Oracle, decimals: int) -> None:
        super().__init__(oracle)
        if isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= 6:
            raise invalid("decimals", decimals, "an integer in [0, 6] (float32 keeps about 7 digits)")
        self.decimals = decimals

    @classmethod
    def from_args(cls, oracle: Oracle, args: Sequence[str]) -> Hardening:
        _count(args, 1)
        return cls(oracle, _int("decimals", args[0]))

    @torch.no_grad()
    def log_probs(self, x: Tensor) -> Tensor:
        probs = self.probs(x)
        rounded = _nonempty(torch.round(probs, decimals=self.decimals), probs.argmax(dim=1))
        return rounded.clamp_min(_TINY).log()

    def __repr__(self) -> str:
        return f"Rounded({self.oracle!r}, decimals={self.decimals})"


@HARDENINGS.register("noise")
class NoisyScores(Hardening):
    """Add Gaussian noise of standard deviation `scale` to the probabilities, clip at 0, renormalise.

    The perturbation idea of Lee et al. 2019 and Orekondy et al., "Prediction Poisoning" (ICLR 2020),
    in its simplest, untargeted form. With `preserve_argmax=True` (default) the top-1 class keeps the
    largest score (its value is swapped with the noisy maximum), so honest users lose no accuracy and
    `labels` is the model's; with `False`, `labels` is the argmax of the noisy scores. Every query draws
    fresh noise from one generator seeded with `seed` (the same query sequence gives the same answers);
    an attacker who repeats a query can average the noise out.
    """

    usage = "noise:SCALE[,SEED]"

    def __init__(self, oracle: Oracle, scale: float, seed: int = 0, *, preserve_argmax: bool = True) -> None:
        super().__init__(oracle)
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale <= 1:
            raise invalid("scale", scale, "a number in (0, 1] (a standard deviation on probabilities)")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise invalid("seed", seed, "an integer")
        self.scale = float(scale)
        self.seed = seed
        self.preserve_argmax = bool(preserve_argmax)
        self._generator = torch.Generator(device=self.device).manual_seed(seed)

    @classmethod
    def from_args(cls, oracle: Oracle, args: Sequence[str]) -> Hardening:
        _count(args, 1, 2)
        seed = _int("seed", args[1]) if len(args) > 1 else 0
        return cls(oracle, _float("scale", args[0]), seed)

    @torch.no_grad()
    def _noisy(self, x: Tensor) -> Tensor:
        probs = self.probs(x)
        top = probs.argmax(dim=1)
        noise = torch.randn(probs.shape, generator=self._generator, device=probs.device, dtype=probs.dtype)
        noisy = (probs + self.scale * noise).clamp_min(0.0)
        if self.preserve_argmax:
            noisy = _keep_top1(noisy, top)
        else:
            top = noisy.argmax(dim=1)
        return _nonempty(noisy, top)

    def log_probs(self, x: Tensor) -> Tensor:
        return log_probabilities(self._noisy(x))

    def labels(self, x: Tensor) -> Tensor:
        if self.preserve_argmax:
            return self.oracle.labels(x)
        return self._noisy(x).argmax(dim=1)

    def __repr__(self) -> str:
        return (
            f"NoisyScores({self.oracle!r}, scale={self.scale}, seed={self.seed}, "
            f"preserve_argmax={self.preserve_argmax})"
        )


@HARDENINGS.register("reverse_sigmoid")
class ReverseSigmoid(Hardening):
    """The reverse-sigmoid perturbation of Lee et al., "Defending Against NN Model Stealing Attacks Using
    Deceptive Perturbations" (IEEE S&P Workshops 2019).

    `r(y) = beta * (sigmoid(gamma * logit(y)) - 1/2)`; the answer is `y - r(y)`, clipped to [0, 1] and
    renormalised (as in ART's `ReverseSigmoid` postprocessor, `beta` the magnitude, `gamma` the
    slope). The perturbation flattens the scores where the attacker's cross-entropy needs them, and
    makes the substitute's inverse-sigmoid of the scores ambiguous. Probabilities are clipped to
    [1e-9, 1 - 1e-9] before the logit. The top-1 class keeps the largest score (values swapped where
    the perturbation would change it), so `labels` is the model's.
    """

    usage = "reverse_sigmoid:BETA,GAMMA"

    def __init__(self, oracle: Oracle, beta: float = 1.0, gamma: float = 0.1) -> None:
        super().__init__(oracle)
        for param, value in (("beta", beta), ("gamma", gamma)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
                raise invalid(
                    param, value, "a positive finite number", "Lee et al. use e.g. beta=0.5, gamma=0.1."
                )
        self.beta = float(beta)
        self.gamma = float(gamma)

    @classmethod
    def from_args(cls, oracle: Oracle, args: Sequence[str]) -> Hardening:
        _count(args, 2)
        return cls(oracle, _float("beta", args[0]), _float("gamma", args[1]))

    @torch.no_grad()
    def log_probs(self, x: Tensor) -> Tensor:
        probs = self.probs(x)
        top = probs.argmax(dim=1)
        p = probs.clamp(1e-9, 1.0 - 1e-9)
        r = self.beta * (torch.sigmoid(self.gamma * torch.logit(p)) - 0.5)
        perturbed = _keep_top1((probs - r).clamp(0.0, 1.0), top)
        return log_probabilities(_nonempty(perturbed, top))

    def __repr__(self) -> str:
        return f"ReverseSigmoid({self.oracle!r}, beta={self.beta}, gamma={self.gamma})"


def harden(oracle: Oracle, spec: str) -> Oracle:
    """The hardening a spec names, around `oracle`: "labels", "topk:3", "round:2", "noise:0.05[,SEED]",
    "reverse_sigmoid:0.5,0.1". Errors name the spec and its expected form."""
    if not isinstance(spec, str) or not spec.strip():
        raise invalid("hardening", spec, "a spec such as " + _forms())
    name, _, rest = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in HARDENINGS:
        err = unknown(f"hardening {spec!r}", name, HARDENINGS.names())
        raise UnknownNameError(f"{err} Forms: {_forms()}.")
    cls = HARDENINGS.get(name)
    args = [a.strip() for a in rest.split(",")] if rest.strip() else []
    try:
        return cls.from_args(oracle, args)
    except _ArgError as exc:
        raise invalid(f"hardening {spec!r}", spec, f"the form {cls.usage} ({exc})") from None
    except RampartsError as exc:
        raise type(exc)(f"hardening {spec!r}: {exc}") from None


class _ArgError(Exception):
    pass


def _forms() -> str:
    return ", ".join(HARDENINGS.get(n).usage for n in HARDENINGS.names())


def _count(args: Sequence[str], low: int, high: int | None = None) -> None:
    high = low if high is None else high
    if not low <= len(args) <= high:
        want = str(low) if low == high else f"{low} to {high}"
        raise _ArgError(f"{want} argument{'s' if high != 1 else ''}, got {len(args)}")


def _int(param: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _ArgError(f"{param} must be an integer, got {text!r}") from None


def _float(param: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _ArgError(f"{param} must be a number, got {text!r}") from None
