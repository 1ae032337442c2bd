"""One training loop for every kind of training (plain, adversarial, distillation, DP), with checkpoints.

Later features extend :func:`train` through ``loss_hook(model, x, y) -> loss`` (how one batch's loss
is computed) instead of copying the loop. The whole dataset is moved to the device once; batches are
index slices, with no numpy in the loop.

Differential privacy: ``TrainConfig(dp=DPConfig(...))`` trains with DP-SGD (Abadi et al. 2016) through
Opacus (:mod:`ramparts.protection.dp`): Poisson-sampled batches of expected size ``batch_size``,
per-sample clipping and Gaussian noise; the report carries the spent epsilon.

Determinism: shuffling uses a ``torch.Generator`` seeded with ``config.seed``, and the global RNG
(dropout, random starts in a hook) is seeded with ``config.seed`` inside a forked RNG scope, so the
caller's RNG is untouched. Initialising the weights (``torch.manual_seed`` before building the model)
is the caller's job.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from ramparts.data import Dataset
from ramparts.errors import RampartsTypeError, invalid, unknown
from ramparts.protection.dp import DPConfig, PrivacySpent, PrivateRun, make_private, prepare_module
from ramparts.zoo import load_weights, save_weights

__all__ = [
    "OPTIMIZERS",
    "EpochCallback",
    "EpochStats",
    "LossHook",
    "TrainConfig",
    "TrainReport",
    "cross_entropy_loss",
    "evaluate",
    "make_optimizer",
    "predict_logits",
    "train",
]

logger = logging.getLogger(__name__)

LossHook = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(model, x, y) -> scalar loss`` for one training batch; the model is in training mode."""

EpochCallback = Callable[["EpochStats", nn.Module], "bool | None"]
"""``(stats, model) -> stop?`` after each epoch of :func:`train`; True stops training early."""

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
_CHECKPOINT = re.compile(r"^epoch-(\d+)\.state\.pt$")
# Config fields that may change between a run and its resumption.
_RESUMABLE_CHANGES = frozenset({"epochs", "device"})
SCHEDULES = ("constant", "cyclic")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of :func:`train`; ``momentum`` is for SGD only; ``device="auto"`` prefers CUDA.

    ``schedule``: ``"constant"`` keeps ``lr``; ``"cyclic"`` moves it per batch linearly from 0 up to ``lr``
    at 40% of all steps and back to 0 at the end (Smith 2017's triangular cycle, as Wong et al. 2020 train
    fast adversarial training). The rate is a function of the step alone, so resuming needs no extra state.

    ``dp``: train with DP-SGD through Opacus (see :class:`~ramparts.protection.dp.DPConfig`, or its
    ``to_dict()``); None trains without privacy.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    seed: int = 0
    device: str = "auto"
    schedule: str = "constant"
    dp: DPConfig | None = None

    def __post_init__(self) -> None:
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise invalid(name, value, f"an integer >= {minimum}")
        for name in ("lr", "weight_decay", "momentum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise invalid(name, value, "a finite number", cls=RampartsTypeError)
        if self.lr <= 0:
            raise invalid("lr", self.lr, "a learning rate > 0", "try 1e-3 for adam or 0.05 for sgd")
        if self.weight_decay < 0:
            raise invalid("weight_decay", self.weight_decay, "a value >= 0")
        if not 0 <= self.momentum < 1:
            raise invalid("momentum", self.momentum, "a value in [0, 1)")
        if self.optimizer not in OPTIMIZERS:
            raise unknown("optimizer", self.optimizer, OPTIMIZERS)
        if self.schedule not in SCHEDULES:
            raise unknown("schedule", self.schedule, SCHEDULES)
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as exc:
                raise invalid("device", self.device, "'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
        if isinstance(self.dp, dict):  # as to_dict() writes it, so TrainConfig(**c.to_dict()) round-trips
            object.__setattr__(self, "dp", DPConfig(**self.dp))
        if self.dp is not None and not isinstance(self.dp, DPConfig):
            raise invalid("dp", self.dp, "None or a ramparts.protection.dp.DPConfig", cls=RampartsTypeError)

    def resolve_device(self) -> torch.device:
        """The device to train on: ``device``, or CUDA when available for ``"auto"``."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-ready dict."""
        return dataclasses.asdict(self)

    def lr_at(self, step: int, total: int) -> float:
        """The learning rate of batch ``step`` (0-based) of a run of ``total`` batches."""
        if self.schedule == "constant":
            return self.lr
        peak = 0.4 * total
        if step < peak:
            return self.lr * step / peak
        return self.lr * max(total - step, 0) / (total - peak)


@dataclass(frozen=True)
class EpochStats:
    """What one epoch measured; accuracies are in eval mode on clean inputs, ``val_acc`` None without val.

    ``epsilon``: the privacy spent up to the end of this epoch (DP runs), else None.
    """

    epoch: int
    train_loss: float
    train_acc: float
    val_acc: float | None
    seconds: float
    epsilon: float | None = None


@dataclass
class TrainReport:
    """Per-epoch history of a :func:`train` run; ``resumed_from``: the checkpoint epoch it resumed, or 0.

    ``privacy``: for DP runs, the spent epsilon (Opacus' accountant), delta, noise multiplier, clipping
    norm, sample rate and steps of the whole run (resumed epochs included); None otherwise.
    """

    config: TrainConfig
    history: list[EpochStats] = field(default_factory=list)
    resumed_from: int = 0
    privacy: PrivacySpent | None = None

    @property
    def train_loss(self) -> list[float]:
        """Mean training loss per epoch."""
        return [e.train_loss for e in self.history]

    @property
    def train_acc(self) -> list[float]:
        """Training accuracy per epoch."""
        return [e.train_acc for e in self.history]

    @property
    def val_acc(self) -> list[float | None]:
        """Validation accuracy per epoch (None without a validation set)."""
        return [e.val_acc for e in self.history]

    @property
    def seconds(self) -> list[float]:
        """Wall-clock seconds per epoch."""
        return [e.seconds for e in self.history]

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: config, final metrics, privacy spent (None without DP) and the history."""
        last = self.history[-1] if self.history else None
        return {
            "config": self.config.to_dict(),
            "epochs_done": len(self.history),
            "resumed_from": self.resumed_from,
            "final_train_loss": last.train_loss if last else None,
            "final_train_acc": last.train_acc if last else None,
            "final_val_acc": last.val_acc if last else None,
            "total_seconds": sum(self.seconds),
            "privacy": self.privacy.to_dict() if self.privacy is not None else None,
            "history": [dataclasses.asdict(e) for e in self.history],
        }


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The default :data:`LossHook`: mean cross-entropy of the model's logits."""
    return F.cross_entropy(model(x), y)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``config`` names, over the model's parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def train(
    model: nn.Module,
    train: Dataset,
    *,
    config: TrainConfig | None = None,
    val: Dataset | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    loss_hook: LossHook | None = None,
    soft_targets: torch.Tensor | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainReport:
    """Train ``model`` in place on ``train``; returns the per-epoch report, model left in eval mode.

    With ``checkpoint_dir``, each epoch's weights (safetensors) and optimizer/RNG state are saved
    there, and a later call with the same config resumes from the last one, giving the same final
    weights as an uninterrupted run. ``loss_hook(model, x, y)`` replaces the batch loss
    (default :func:`cross_entropy_loss`). ``soft_targets`` (N x K probabilities, one row per training
    input: a teacher's or an oracle's scores) are what the hook receives as ``y`` instead of the labels;
    the default cross-entropy accepts them as they are. Accuracy is still measured on ``train.y``.

    With ``config.dp`` the run is DP-SGD through Opacus (Abadi et al. 2016): the model is checked (and,
    with ``fix_modules``, fixed in place) by Opacus' ``ModuleValidator``, batches are Poisson-sampled,
    and ``report.privacy`` holds the spent epsilon. Checkpoints also keep the accountant's history and
    the noise generator, so a resumed run spends and reports exactly the same. ``soft_targets`` work
    with DP; a custom ``loss_hook`` is refused (its loss need not be a per-sample mean of one forward
    pass, which per-sample clipping assumes). The model is a plain ``nn.Module`` again on return.

    ``on_epoch(stats, model)`` runs after each epoch is measured and checkpointed; returning True stops
    training there (early stopping, e.g. :class:`~ramparts.defenses.adversarial_training.FastATMonitor`).
    A callback's own state is not checkpointed: a resumed run calls it from the resumed epoch on.
    """
    config = config or TrainConfig()
    device = config.resolve_device()
    _check_inputs(model, train, val)
    model.to(device)
    _check_output(model, train, device)
    if config.dp is not None:
        _check_dp_hook(loss_hook)
        replaced = prepare_module(model, config.dp)
        if replaced:
            logger.info("fix_modules: Opacus replaced %s for DP-SGD", ", ".join(replaced))
    hook = loss_hook or cross_entropy_loss
    x, y = train.x.to(device), train.y.to(device)
    targets = y if soft_targets is None else _check_soft_targets(soft_targets, train).to(device)
    optimizer = make_optimizer(model, config)
    shuffle = torch.Generator().manual_seed(config.seed)
    report = TrainReport(config=config)
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    forked = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    private: PrivateRun | None = None
    with torch.random.fork_rng(devices=forked):
        _seed_global(config.seed, device)
        if config.dp is not None:
            private = make_private(
                model,
                optimizer,
                (x, targets, y),
                dp=config.dp,
                batch_size=config.batch_size,
                epochs=config.epochs,
                sampler=shuffle,
                seed=config.seed,
            )
        try:
            _run_epochs(
                model,
                x,
                y,
                targets,
                val,
                optimizer,
                shuffle,
                hook,
                private,
                folder,
                device,
                report,
                progress,
                on_epoch,
            )
        finally:
            if private is not None:
                private.close()
                report.privacy = private.spent()
    model.eval()
    return report


def _run_epochs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    targets: torch.Tensor,
    val: Dataset | None,
    optimizer: torch.optim.Optimizer,
    shuffle: torch.Generator,
    hook: LossHook,
    private: PrivateRun | None,
    folder: Path | None,
    device: torch.device,
    report: TrainReport,
    progress: bool,
    on_epoch: EpochCallback | None = None,
) -> None:
    """The epochs of :func:`train` after its setup: resume, train, measure, checkpoint, ask ``on_epoch``."""
    config = report.config
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        report.resumed_from = _resume(folder, model, optimizer, shuffle, device, report, private)
    steps_per_epoch = (
        len(private.loader) if private is not None else math.ceil(x.shape[0] / config.batch_size)
    )
    with _progress_bar(progress) as bar:
        task = bar.add_task(
            "training",
            total=steps_per_epoch * config.epochs,
            completed=steps_per_epoch * report.resumed_from,
        )
        for epoch in range(report.resumed_from + 1, config.epochs + 1):
            bar.update(task, description=f"epoch {epoch}/{config.epochs}")
            start = time.perf_counter()
            first = (epoch - 1) * steps_per_epoch
            opt = optimizer if private is None else private.optimizer

            def set_lr(b: int, first: int = first, opt: torch.optim.Optimizer = opt) -> None:
                for group in opt.param_groups:
                    group["lr"] = config.lr_at(first + b, steps_per_epoch * config.epochs)

            if private is None:
                loss = _train_epoch(
                    model,
                    x,
                    targets,
                    optimizer,
                    shuffle,
                    config.batch_size,
                    hook,
                    lambda: bar.advance(task),
                    set_lr,
                )
            else:
                loss = _train_epoch_private(private, hook, lambda: bar.advance(task), set_lr)
            stats = EpochStats(
                epoch=epoch,
                train_loss=loss,
                train_acc=_accuracy(model, x, y, 512),
                val_acc=evaluate(model, val, device=device) if val is not None else None,
                seconds=time.perf_counter() - start,
                epsilon=private.spent().epsilon if private is not None else None,
            )
            report.history.append(stats)
            logger.info(
                "epoch %d/%d loss=%.4f train_acc=%.4f val_acc=%s epsilon=%s (%.1fs)",
                epoch,
                config.epochs,
                stats.train_loss,
                stats.train_acc,
                "-" if stats.val_acc is None else f"{stats.val_acc:.4f}",
                "-" if stats.epsilon is None else f"{stats.epsilon:.3f}",
                stats.seconds,
            )
            if folder is not None:
                _save_checkpoint(folder, epoch, model, optimizer, shuffle, device, report, private)
            if on_epoch is not None and on_epoch(stats, model) is True:
                logger.info("on_epoch stopped training after epoch %d/%d", epoch, config.epochs)
                break


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    x: torch.Tensor | Dataset,
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Logits for ``x`` (a tensor or a Dataset) in eval mode, in batches, on ``device``.

    ``device`` defaults to the model's device; when given, the model is moved there.
    """
    inputs = x.x if isinstance(x, Dataset) else x
    if not isinstance(inputs, torch.Tensor):
        raise invalid("x", type(inputs).__name__, "a torch.Tensor or a Dataset", cls=RampartsTypeError)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise invalid("batch_size", batch_size, "an integer >= 1")
    dev = _model_device(model) if device is None else torch.device(device)
    model.to(dev)
    was_training = model.training
    model.eval()
    try:
        outputs = [model(inputs[i : i + batch_size].to(dev)) for i in range(0, inputs.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0, device=dev)


def evaluate(
    model: nn.Module, ds: Dataset, *, batch_size: int = 512, device: str | torch.device | None = None
) -> float:
    """Accuracy of ``model`` on ``ds`` (eval mode, batched)."""
    if not isinstance(ds, Dataset):
        raise invalid("ds", type(ds).__name__, "a ramparts.data.Dataset", cls=RampartsTypeError)
    logits = predict_logits(model, ds.x, batch_size=batch_size, device=device)
    return float((logits.argmax(dim=1) == ds.y.to(logits.device)).float().mean())


def _check_soft_targets(soft: torch.Tensor, train: Dataset) -> torch.Tensor:
    """Probability rows, one per training input, over the dataset's classes."""
    expected = (len(train), train.num_classes)
    if not isinstance(soft, torch.Tensor) or soft.dim() != 2 or tuple(soft.shape) != expected:
        shape = tuple(soft.shape) if isinstance(soft, torch.Tensor) else type(soft).__name__
        raise invalid("soft_targets", shape, f"a tensor of shape {expected}: one probability row per input")
    soft = soft.float()
    sums = soft.sum(dim=1)
    if (
        not bool(torch.isfinite(soft).all())
        or bool((soft < 0).any())
        or not torch.allclose(sums, torch.ones_like(sums), atol=1e-3)
    ):
        raise invalid("soft_targets", "rows that are not probabilities", "non-negative rows summing to 1")
    return soft


def _train_epoch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    shuffle: torch.Generator,
    batch_size: int,
    hook: LossHook,
    on_step: Callable[[], None],
    set_lr: Callable[[int], None],
) -> float:
    """One pass over (x, y) in a fresh shuffled order; returns the mean batch loss weighted by batch size.

    ``set_lr(b)`` runs before batch ``b`` of the epoch (the learning-rate schedule).
    """
    model.train()
    n = x.shape[0]
    order = torch.randperm(n, generator=shuffle).to(x.device)
    total = torch.zeros((), device=x.device)
    for b, i in enumerate(range(0, n, batch_size)):
        idx = order[i : i + batch_size]
        set_lr(b)
        optimizer.zero_grad(set_to_none=True)
        loss = _checked_loss(hook(model, x[idx], y[idx]))
        loss.backward()
        optimizer.step()
        total += loss.detach() * idx.numel()
        on_step()
    return _finite_mean(float(total) / n, optimizer)


def _train_epoch_private(
    private: PrivateRun, hook: LossHook, on_step: Callable[[], None], set_lr: Callable[[int], None]
) -> float:
    """One DP-SGD epoch over Opacus' Poisson-sampled batches; returns the mean loss over the examples seen.

    A Poisson batch may be empty: it still takes its (pure-noise) step, which the accountant counts.
    """
    private.module.train()
    device = next(iter(private.optimizer.params)).device
    total = torch.zeros((), device=device)
    seen = 0
    for b, (xb, tb, _) in enumerate(private.loader):
        set_lr(b)
        private.optimizer.zero_grad(set_to_none=True)
        loss = _checked_loss(hook(private.module, xb, tb))
        with warnings.catch_warnings():  # Opacus' hook on the first layer, whose input needs no gradient
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.backward()
        private.optimizer.step()
        if xb.shape[0]:
            total += loss.detach() * xb.shape[0]
            seen += xb.shape[0]
        on_step()
    return _finite_mean(float(total) / max(seen, 1), private.optimizer)


def _checked_loss(loss: object) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        raise invalid("loss_hook", loss, "a scalar loss tensor", "return loss.mean()", cls=RampartsTypeError)
    return loss


def _finite_mean(mean: float, optimizer: torch.optim.Optimizer) -> float:
    if not math.isfinite(mean):
        raise invalid("lr", optimizer.param_groups[0]["lr"], "a learning rate at which the loss stays finite")
    return mean


def _check_dp_hook(loss_hook: LossHook | None) -> None:
    """DP-SGD clips per-sample gradients, so the loss must be a per-sample mean from one forward pass."""
    if loss_hook is not None and loss_hook is not cross_entropy_loss:
        raise invalid(
            "loss_hook",
            getattr(loss_hook, "__name__", type(loss_hook).__name__),
            "None (the default cross-entropy) with dp: DP-SGD's per-sample clipping needs the mean of "
            "per-sample losses from one forward pass, which a custom hook need not be",
            "drop loss_hook (soft_targets work with dp), or train without dp",
        )


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    logits = predict_logits(model, x, batch_size=batch_size, device=x.device)
    return float((logits.argmax(dim=1) == y).float().mean())


def _check_inputs(model: nn.Module, train: Dataset, val: Dataset | None) -> None:
    if not isinstance(model, nn.Module):
        raise invalid("model", type(model).__name__, "a torch.nn.Module", cls=RampartsTypeError)
    for name, ds in (("train", train), ("val", val)):
        if ds is not None and not isinstance(ds, Dataset):
            raise invalid(name, type(ds).__name__, "a ramparts.data.Dataset", cls=RampartsTypeError)
    if val is not None and (val.input_shape != train.input_shape or val.num_classes != train.num_classes):
        raise invalid(
            "val",
            (val.input_shape, val.num_classes),
            f"the train set's input shape {train.input_shape} and {train.num_classes} classes",
        )


def _check_output(model: nn.Module, train: Dataset, device: torch.device) -> None:
    logits = predict_logits(model, train.x[:1], device=device)
    if logits.shape != (1, train.num_classes):
        raise invalid(
            "model",
            f"output shape {tuple(logits.shape)} for one input",
            f"logits of shape (1, {train.num_classes}) for {train.num_classes} classes",
            "build the model with num_classes matching the dataset",
        )


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _seed_global(seed: int, device: torch.device) -> None:
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Progress]:
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not (enabled and console.is_terminal),
    ) as bar:
        yield bar


def _checkpoint_paths(folder: Path, epoch: int) -> tuple[Path, Path]:
    stem = f"epoch-{epoch:04d}"
    return folder / f"{stem}.safetensors", folder / f"{stem}.state.pt"


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _save_checkpoint(
    folder: Path,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    shuffle: torch.Generator,
    device: torch.device,
    report: TrainReport,
    private: PrivateRun | None,
) -> None:
    """Write this epoch's weights, then its state (the state file marks the checkpoint complete).

    DP runs add the accountant's history and the noise generator's state (plain types and tensors).
    """
    weights, state_file = _checkpoint_paths(folder, epoch)
    tmp = weights.with_name(weights.name + ".tmp")
    save_weights(model, tmp, {"epoch": str(epoch)})
    os.replace(tmp, weights)
    state = {
        "epoch": epoch,
        "optimizer": optimizer.state_dict(),
        "shuffle_rng": shuffle.get_state(),
        "global_rng": _rng_state(device),
        "config": report.config.to_dict(),
        "history": [dataclasses.asdict(e) for e in report.history],
        "dp": private.state_dict() if private is not None else None,
    }
    tmp = state_file.with_name(state_file.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, state_file)
    for old in range(1, epoch):
        for path in _checkpoint_paths(folder, old):
            path.unlink(missing_ok=True)
    logger.debug("checkpoint for epoch %d written to %s", epoch, folder)


def _resume(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    shuffle: torch.Generator,
    device: torch.device,
    report: TrainReport,
    private: PrivateRun | None,
) -> int:
    """Restore the latest complete checkpoint in ``folder``; returns its epoch (0 when there is none)."""
    done = sorted(
        int(m.group(1)) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_file()
    )
    done = [e for e in done if _checkpoint_paths(folder, e)[0].is_file()]
    if not done:
        return 0
    epoch = done[-1]
    weights, state_file = _checkpoint_paths(folder, epoch)
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    config = report.config
    saved = state["config"]
    current = config.to_dict()
    changed = sorted(k for k, v in current.items() if k not in _RESUMABLE_CHANGES and saved.get(k) != v)
    if changed:
        was = {k: saved.get(k) for k in changed}
        raise invalid(
            "config",
            {k: current[k] for k in changed},
            f"the values the checkpoint in {folder} was trained with: {was}",
            "use the original config, or a fresh checkpoint_dir",
        )
    if config.schedule != "constant" and saved.get("epochs") != config.epochs:
        raise invalid(
            "epochs",
            config.epochs,
            f"{saved.get('epochs')}, the epochs of the checkpoint in {folder}: a {config.schedule} "
            "learning rate is laid over all epochs, so changing them would break the schedule",
            "keep the original epochs, or use a fresh checkpoint_dir",
        )
    if epoch > config.epochs:
        raise invalid(
            "epochs",
            config.epochs,
            f"at least {epoch}, the epochs already done by the checkpoint in {folder}",
            "raise epochs, or use a fresh checkpoint_dir",
        )
    load_weights(model, weights)
    optimizer.load_state_dict(state["optimizer"])
    shuffle.set_state(state["shuffle_rng"])
    torch.set_rng_state(state["global_rng"]["cpu"])
    if device.type == "cuda" and "cuda" in state["global_rng"]:
        torch.cuda.set_rng_state(state["global_rng"]["cuda"], device)
    if private is not None:
        private.load_state_dict(state["dp"])
    report.history = [EpochStats(**e) for e in state["history"]]
    logger.info("resumed from epoch %d checkpoint in %s", epoch, folder)
    return epoch
