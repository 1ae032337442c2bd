"""Differentially private training: DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy").

Each step samples a Poisson batch (every example independently, with rate ``q = 1 / steps_per_epoch``),
clips every per-sample gradient to L2 norm ``max_grad_norm``, adds Gaussian noise of standard deviation
``noise_multiplier * max_grad_norm`` to their sum, and an accountant composes the steps into the spent
``(epsilon, delta)``. Everything is Opacus' (``PrivacyEngine``, ``GradSampleModule``, ``DPOptimizer``,
``DPDataLoader``, its accountants and ``ModuleValidator``); this module only configures it, keeps its
state in plain types for checkpoints, and hands the caller back a plain ``nn.Module``.
:func:`ramparts.training.train` uses it when ``TrainConfig(dp=DPConfig(...))``.

Opacus is imported lazily (about 0.7 s), so training without DP does not pay for it.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ramparts.errors import RampartsTypeError, invalid, unknown

if TYPE_CHECKING:
    from opacus import PrivacyEngine
    from opacus.grad_sample import GradSampleModule
    from opacus.optimizers import DPOptimizer

__all__ = ["DPConfig", "PrivacySpent", "PrivateRun", "accountants", "make_private", "prepare_module"]

# Offsets the noise generator's seed from the sampler's (both derive from TrainConfig.seed).
_NOISE_SEED_OFFSET = 0x9E3779B97F4A7C15


def accountants() -> tuple[str, ...]:
    """The privacy accountants Opacus registers (``rdp``, ``prv``, ``gdp`` in Opacus 1.6)."""
    from opacus.accountants.registry import _ACCOUNTANTS

    return tuple(sorted(_ACCOUNTANTS))


@dataclass(frozen=True)
class DPConfig:
    """DP-SGD settings (Abadi et al. 2016) for :func:`ramparts.training.train`, run through Opacus.

    Give exactly one of ``epsilon`` (the target: Opacus calibrates the noise multiplier so that the
    planned epochs spend at most it) or ``noise_multiplier`` (fixed noise; the spent epsilon is reported).
    ``delta``: a probability well below 1/n (n = training examples), or ``"auto"`` for 1/(10 n); values
    >= 1/n are refused at training time. ``max_grad_norm``: the per-sample clipping norm C.
    ``poisson=False`` keeps shuffled fixed-size batches, which the accountant's analysis does not cover
    (the reported epsilon is then an approximation). ``secure_mode`` uses Opacus' cryptographically
    secure noise and sampling (needs ``torchcsprng``; runs are then not reproducible from the seed); off,
    the noise comes from a seeded PyTorch generator, fine for experiments, not for production guarantees.
    ``fix_modules`` lets Opacus' ``ModuleValidator.fix`` replace incompatible layers (BatchNorm becomes
    GroupNorm) in the caller's model, in place; off, such a model is refused.
    """

    epsilon: float | None = None
    noise_multiplier: float | None = None
    delta: float | str = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    poisson: bool = True
    secure_mode: bool = False
    fix_modules: bool = False

    def __post_init__(self) -> None:
        if (self.epsilon is None) == (self.noise_multiplier is None):
            raise invalid(
                "epsilon",
                (self.epsilon, self.noise_multiplier),
                "exactly one of epsilon and noise_multiplier",
                "give a target epsilon, e.g. DPConfig(epsilon=8.0), or DPConfig(noise_multiplier=1.0)",
            )
        for name in ("epsilon", "noise_multiplier", "max_grad_norm"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise invalid(name, value, "a number", cls=RampartsTypeError)
            if not (math.isfinite(value) and value > 0):
                raise invalid(name, value, "a finite number > 0")
        if self.delta != "auto":
            if isinstance(self.delta, bool) or not isinstance(self.delta, int | float):
                raise invalid("delta", self.delta, "a number in (0, 1) or 'auto'", cls=RampartsTypeError)
            if not 0 < self.delta < 1:
                raise invalid("delta", self.delta, "a number in (0, 1) or 'auto'", "try 1e-5 or 'auto'")
        if self.accountant not in accountants():
            raise unknown("accountant", self.accountant, accountants())
        for name in ("poisson", "secure_mode", "fix_modules"):
            if not isinstance(getattr(self, name), bool):
                raise invalid(name, getattr(self, name), "True or False", cls=RampartsTypeError)

    def resolve_delta(self, n: int) -> float:
        """The delta for ``n`` training examples: ``delta``, or 1/(10 n) for ``"auto"``; refuses delta >= 1/n."""
        delta = 1 / (10 * n) if self.delta == "auto" else float(self.delta)
        if delta >= 1 / n:
            raise invalid(
                "delta",
                delta,
                f"a value below 1/n = {1 / n:.3g} for n = {n} training examples (delta >= 1/n allows "
                "leaking a whole example)",
                "use delta='auto' (1/(10 n)) or a smaller delta",
            )
        return delta

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PrivacySpent:
    """The privacy a DP-SGD run spent, from Opacus' accountant, and the parameters that produced it."""

    epsilon: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    accountant: str
    poisson: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)


def prepare_module(model: nn.Module, dp: DPConfig) -> list[str]:
    """Check ``model`` with Opacus' ``ModuleValidator``; returns the names of the layers it replaced.

    With ``dp.fix_modules`` the incompatible layers are replaced in place by ``ModuleValidator.fix``'s
    choices (BatchNorm -> GroupNorm); otherwise a model with any is refused, naming them.
    """
    from opacus.utils.module_utils import trainable_modules
    from opacus.validators import ModuleValidator

    was_training = model.training
    model.train()  # the validator also insists on training mode, which is not the caller's concern
    try:
        if not ModuleValidator.validate(model, strict=False):
            return []
        bad = [
            (name, type(sub).__name__)
            for name, sub in trainable_modules(model)
            if type(sub) in ModuleValidator.VALIDATORS and ModuleValidator.VALIDATORS[type(sub)](sub)
        ]
        if not dp.fix_modules:
            listed = ", ".join(f"{name or '<root>'} ({kind})" for name, kind in bad)
            raise invalid(
                "model",
                f"{len(bad)} layer(s) incompatible with DP-SGD",
                f"layers whose gradients are per-sample (Opacus' ModuleValidator refuses: {listed}; "
                "BatchNorm mixes the examples of a batch)",
                "pass DPConfig(fix_modules=True) to replace them (BatchNorm -> GroupNorm, in place), "
                "or build the model without them",
            )
        fixed = ModuleValidator.fix(model)
        if fixed is not model and type(fixed) is not type(model):
            raise invalid("model", type(model).__name__, "a model whose root layer is DP-compatible")
        for name, child in fixed.named_children():
            setattr(model, name, child)
        ModuleValidator.validate(model, strict=True)
        return [name for name, _ in bad]
    finally:
        model.train(was_training)


@dataclass
class PrivateRun:
    """One DP-SGD run's Opacus objects: wrapped module, DP optimizer, Poisson loader, engine, noise RNG."""

    engine: PrivacyEngine
    module: GradSampleModule
    optimizer: DPOptimizer
    loader: DataLoader[tuple[torch.Tensor, ...]]
    noise: torch.Generator | None
    config: DPConfig
    delta: float

    @property
    def sample_rate(self) -> float:
        """Poisson sampling rate q: each example joins a batch with this probability."""
        return 1 / len(self.loader)

    def spent(self) -> PrivacySpent:
        """The privacy spent so far: the accountant's epsilon (an upper bound) at ``delta`` over its history."""
        history = self.engine.accountant.history
        steps = sum(int(s) for _, _, s in history)
        with warnings.catch_warnings():  # a short alpha grid makes RDP's bound loose, never too small
            warnings.filterwarnings("ignore", message="Optimal order is the")
            epsilon = float(self.engine.get_epsilon(self.delta)) if steps else 0.0
        return PrivacySpent(
            epsilon=epsilon,
            delta=self.delta,
            noise_multiplier=float(self.optimizer.noise_multiplier),
            max_grad_norm=float(self.config.max_grad_norm),
            sample_rate=self.sample_rate,
            steps=steps,
            accountant=self.config.accountant,
            poisson=self.config.poisson,
        )

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint state in plain types: the accountant's history, the noise multiplier and noise RNG."""
        return {
            "history": [[float(m), float(q), int(s)] for m, q, s in self.engine.accountant.history],
            "noise_multiplier": float(self.optimizer.noise_multiplier),
            "noise_rng": self.noise.get_state() if self.noise is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; refuses a checkpoint trained with another noise multiplier."""
        if state["noise_multiplier"] != float(self.optimizer.noise_multiplier):
            raise invalid(
                "epochs",
                f"noise multiplier {float(self.optimizer.noise_multiplier):.6g}",
                f"the noise multiplier {state['noise_multiplier']:.6g} the checkpoint was trained with "
                "(a target epsilon calibrates the noise to the planned number of epochs)",
                "resume with the original epochs, or use a fresh checkpoint_dir",
            )
        self.engine.accountant.history = [(float(m), float(q), int(s)) for m, q, s in state["history"]]
        if self.noise is not None and state["noise_rng"] is not None:
            self.noise.set_state(state["noise_rng"])

    def close(self) -> nn.Module:
        """Remove Opacus' hooks and per-parameter attributes; returns the plain module it wrapped."""
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.optimizer.params:
            if hasattr(p, "summed_grad"):
                del p.summed_grad
        return self.module.to_standard_module()


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    tensors: tuple[torch.Tensor, ...],
    *,
    dp: DPConfig,
    batch_size: int,
    epochs: int,
    sampler: torch.Generator,
    seed: int,
) -> PrivateRun:
    """Wrap a training run with Opacus' ``PrivacyEngine`` (DP-SGD, Abadi et al. 2016).

    ``tensors`` (inputs first, one row per training example) become the dataset of a loader with
    expected batch size ``batch_size``; Opacus turns it into a Poisson-sampled loader drawing from
    ``sampler``. The noise generator is seeded from ``seed`` (unless ``dp.secure_mode``). The
    noise multiplier is ``dp.noise_multiplier``, or calibrated by Opacus to spend ``dp.epsilon`` over
    ``epochs``.
    """
    from opacus import PrivacyEngine

    n = tensors[0].shape[0]
    delta = dp.resolve_delta(n)
    device = tensors[0].device
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        try:
            engine = PrivacyEngine(accountant=dp.accountant, secure_mode=dp.secure_mode)
        except ImportError as exc:
            raise invalid(
                "secure_mode",
                True,
                "torchcsprng installed (Opacus needs it for secure noise)",
                "install torchcsprng, or use secure_mode=False for experiments",
            ) from exc
    loader: DataLoader[tuple[torch.Tensor, ...]] = DataLoader(
        TensorDataset(*tensors), batch_size=batch_size, shuffle=not dp.poisson, generator=sampler
    )
    noise = None
    if not dp.secure_mode:
        noise = torch.Generator(device=device).manual_seed((seed + _NOISE_SEED_OFFSET) % 2**64)
    model.train()  # Opacus validates in training mode; the run trains anyway
    common: dict[str, Any] = {
        "module": model,
        "optimizer": optimizer,
        "data_loader": loader,
        "max_grad_norm": dp.max_grad_norm,
        "poisson_sampling": dp.poisson,
        "noise_generator": noise,
    }
    if dp.epsilon is not None:
        with warnings.catch_warnings():  # the calibration's search visits loose noise levels; harmless
            warnings.filterwarnings("ignore", message="Optimal order is the")
            module, dp_optimizer, dp_loader = engine.make_private_with_epsilon(
                **common, target_epsilon=dp.epsilon, target_delta=delta, epochs=epochs
            )
    else:
        module, dp_optimizer, dp_loader = engine.make_private(**common, noise_multiplier=dp.noise_multiplier)
    return PrivateRun(engine, module, dp_optimizer, dp_loader, noise, dp, delta)
