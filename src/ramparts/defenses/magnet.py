"""MagNet: detector autoencoders, a reformer autoencoder, and the randomised pool of autoencoders.

Meng & Chen, "MagNet: a Two-Pronged Defense against Adversarial Examples", CCS 2017. Detectors flag
inputs far from the manifold of clean data (large reconstruction error, or a classifier that changes
its temperature-softened output after reconstruction); the reformer moves the remaining inputs onto
the manifold before the classifier sees them. Every score is differentiable so an adaptive attack
(Carlini & Wagner 2017, "MagNet and 'Efficient Defenses...' Are Not Robust") can go through them.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ramparts.data import Dataset
from ramparts.defenses.base import DefendedModel, Detector, Transform
from ramparts.errors import RampartsTypeError, check_int, invalid
from ramparts.training import TrainConfig, TrainReport, train

__all__ = [
    "Autoencoder",
    "DivergenceDetector",
    "RandomReformer",
    "ReconstructionDetector",
    "Reformer",
    "jensen_shannon",
    "magnet",
    "train_autoencoder",
]

logger = logging.getLogger(__name__)


class Autoencoder(nn.Module):
    """A small convolutional autoencoder with sigmoid activations, as in MagNet (Meng & Chen 2017).

    ``depth`` 3x3 convolutions of ``width`` channels encode, the mirror decodes, and a last 3x3
    convolution with a sigmoid returns an image in [0, 1]. With ``pool`` the encoder average-pools 2x2
    after its first convolution and the decoder upsamples to match: ``depth=2, pool=True`` is the
    paper's MNIST "Detector I" / reformer, ``depth=1, pool=False`` its "Detector II".
    """

    def __init__(self, in_channels: int, *, width: int = 3, depth: int = 2, pool: bool = True) -> None:
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("width", width, 1)
        check_int("depth", depth, 1)
        if not isinstance(pool, bool):
            raise invalid("pool", pool, "True or False", cls=RampartsTypeError)
        self.pool = pool
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(depth):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.Sigmoid()]
            if pool and i == 0:
                layers.append(nn.AvgPool2d(2))
            channels = width
        for i in range(depth):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.Sigmoid()]
            if pool and i == 0:
                layers.append(nn.Upsample(scale_factor=2))
        layers += [nn.Conv2d(width, in_channels, 3, padding=1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.pool and (x.shape[-1] % 2 or x.shape[-2] % 2):
            raise invalid(
                "x", tuple(x.shape), "even height and width for a pooling autoencoder", "use pool=False"
            )
        return cast(Tensor, self.net(x))


class _Flat(nn.Module):
    """The autoencoder's output flattened, so :func:`ramparts.training.train` sees one "logit" per pixel."""

    def __init__(self, ae: nn.Module) -> None:
        super().__init__()
        self.ae = ae

    def forward(self, x: Tensor) -> Tensor:
        return cast(Tensor, self.ae(x)).flatten(1)


def train_autoencoder(
    ae: nn.Module,
    data: Dataset,
    *,
    config: TrainConfig | None = None,
    noise: float = 0.1,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> TrainReport:
    """Train ``ae`` in place to reconstruct ``data.x`` from ``x + N(0, noise^2)`` (clipped), by MSE.

    The noise makes the autoencoder robust to small perturbations, as in MagNet (Meng & Chen 2017);
    ``config.weight_decay`` is the paper's L2 weight penalty. Runs through
    :func:`ramparts.training.train`, so checkpoints and resumption work; its accuracy columns are
    meaningless here (the labels are placeholders), the loss is the reconstruction MSE.
    """
    if not isinstance(ae, nn.Module):
        raise invalid("ae", type(ae).__name__, "an nn.Module", cls=RampartsTypeError)
    if not isinstance(data, Dataset):
        raise invalid("data", type(data).__name__, "a ramparts.data.Dataset", cls=RampartsTypeError)
    if isinstance(noise, bool) or not isinstance(noise, int | float) or not 0 <= noise < math.inf:
        raise invalid("noise", noise, "a noise standard deviation >= 0", "the paper uses 0.1")
    pixels = math.prod(data.input_shape)
    targets = Dataset(
        data.x, torch.zeros(len(data), dtype=torch.int64), tuple(str(i) for i in range(pixels)), data.name
    )
    sigma = float(noise)

    def reconstruction_loss(model: nn.Module, x: Tensor, _: Tensor) -> Tensor:
        noisy = (x + sigma * torch.randn_like(x)).clamp(0.0, 1.0)
        return F.mse_loss(model(noisy), x.flatten(1))

    return train(
        _Flat(ae),
        targets,
        config=config or TrainConfig(epochs=30, batch_size=128, lr=1e-3, weight_decay=1e-9),
        checkpoint_dir=checkpoint_dir,
        progress=progress,
        loss_hook=reconstruction_loss,
    )


class ReconstructionDetector(Detector):
    """Score = ``||x - ae(x)||_p`` per input (MagNet's reconstruction-error detector, Meng & Chen 2017)."""

    def __init__(self, ae: nn.Module, *, p: int = 2) -> None:
        super().__init__()
        if not isinstance(ae, nn.Module):
            raise invalid("ae", type(ae).__name__, "an nn.Module", cls=RampartsTypeError)
        if isinstance(p, bool) or p not in (1, 2):
            raise invalid("p", p, "1 or 2", "MagNet uses p=2 for Detector I and p=1 for Detector II")
        self.ae = ae
        self.p = p

    def score(self, x: Tensor) -> Tensor:
        return torch.linalg.vector_norm((x - self.ae(x)).flatten(1), ord=self.p, dim=1)


def jensen_shannon(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """Jensen-Shannon divergence (nats) between ``softmax(logits_p)`` and ``softmax(logits_q)``, per row."""
    log_p = F.log_softmax(logits_p, dim=1)
    log_q = F.log_softmax(logits_q, dim=1)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(dim=1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(dim=1)
    return (0.5 * (kl_pm + kl_qm)).clamp_min(0.0)


class DivergenceDetector(Detector):
    """Score = JSD(softmax(f(x)/T), softmax(f(ae(x))/T)) (MagNet's probability-divergence detector).

    Meng & Chen 2017: a high temperature ``T`` softens the outputs so that small moves of the
    classifier's belief under reconstruction become measurable.
    """

    def __init__(self, ae: nn.Module, classifier: nn.Module, *, temperature: float) -> None:
        super().__init__()
        for name, module in (("ae", ae), ("classifier", classifier)):
            if not isinstance(module, nn.Module):
                raise invalid(name, type(module).__name__, "an nn.Module", cls=RampartsTypeError)
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not 0 < temperature < math.inf
        ):
            raise invalid("temperature", temperature, "a finite temperature > 0", "MagNet uses 10 and 40")
        self.ae = ae
        self.classifier = classifier
        self.temperature = float(temperature)

    def score(self, x: Tensor) -> Tensor:
        t = self.temperature
        return jensen_shannon(self.classifier(x) / t, self.classifier(self.ae(x)) / t)


class Reformer(Transform):
    """MagNet's reformer, ``x -> ae(x)``: moves inputs towards the manifold of clean data (Meng & Chen 2017)."""

    def __init__(self, ae: nn.Module) -> None:
        super().__init__()
        if not isinstance(ae, nn.Module):
            raise invalid("ae", type(ae).__name__, "an nn.Module", cls=RampartsTypeError)
        self.ae = ae

    def forward(self, x: Tensor) -> Tensor:
        return cast(Tensor, self.ae(x))


class RandomReformer(Transform):
    """A reformer that draws one autoencoder of a pool per input, from a seeded generator.

    MagNet's defence against gray-box attacks (Meng & Chen 2017, section 5.4): the attacker knows the
    pool but not which member will answer. Draws continue the generator's stream across calls;
    :meth:`reseed` restarts it.
    """

    randomized = True

    def __init__(self, autoencoders: Sequence[nn.Module], *, seed: int = 0) -> None:
        super().__init__()
        if isinstance(autoencoders, nn.Module) or not isinstance(autoencoders, Sequence) or not autoencoders:
            raise invalid(
                "autoencoders", autoencoders, "a non-empty sequence of nn.Modules", cls=RampartsTypeError
            )
        for i, ae in enumerate(autoencoders):
            if not isinstance(ae, nn.Module):
                raise invalid(f"autoencoders[{i}]", type(ae).__name__, "an nn.Module", cls=RampartsTypeError)
        self.autoencoders = nn.ModuleList(autoencoders)
        self.generator = torch.Generator()
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the draws from ``seed``: the same seed gives the same sequence of autoencoders."""
        self.seed = check_int("seed", seed, 0)
        self.generator.manual_seed(self.seed)

    def draw(self, n: int) -> Tensor:
        """The pool indices of the next ``n`` inputs (int64 [n], on the CPU)."""
        return torch.randint(len(self.autoencoders), (check_int("n", n, 0),), generator=self.generator)

    def forward(self, x: Tensor) -> Tensor:
        choice = self.draw(x.shape[0]).to(x.device)
        out = torch.empty_like(x)
        for k, ae in enumerate(self.autoencoders):
            mask = choice == k
            if bool(mask.any()):
                out[mask] = ae(x[mask])
        return out


def _pool_autoencoders(in_channels: int, seed: int) -> list[Autoencoder]:
    """The paper's two MNIST autoencoders (Detector I / reformer, Detector II), initialised from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [
            Autoencoder(in_channels, width=3, depth=2, pool=True),
            Autoencoder(in_channels, width=3, depth=1, pool=False),
        ]


def magnet(
    classifier: nn.Module,
    train_data: Dataset,
    val_data: Dataset,
    *,
    fpr: float = 0.05,
    autoencoders: Sequence[nn.Module] | None = None,
    norms: Sequence[int] = (2, 1),
    temperatures: Sequence[float] = (10.0, 40.0),
    config: TrainConfig | None = None,
    noise: float = 0.1,
    reformer: int = 0,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike[str] | None = None,
) -> DefendedModel:
    """MagNet around ``classifier`` (Meng & Chen 2017): detectors + reformer, as one :class:`DefendedModel`.

    With ``autoencoders=None`` the paper's two MNIST autoencoders are built (from ``seed``) and trained
    on ``train_data`` (``config``, ``noise``; resumable under ``checkpoint_dir``); given autoencoders
    are used as they are (already trained). Detectors: a reconstruction detector per autoencoder with
    ``norms[i]``, and a divergence detector on the first autoencoder per temperature (``()`` for none).
    The total false-positive rate ``fpr`` is split evenly across the detectors, each calibrated on
    ``val_data``, so at most ``fpr`` of clean inputs is rejected. ``autoencoders[reformer]`` reforms
    (the paper's MNIST choice is Detector I's, index 0; on 8x8 inputs its 4x4 bottleneck costs accuracy,
    index 1 keeps the full resolution).
    """
    if not isinstance(classifier, nn.Module):
        raise invalid("classifier", type(classifier).__name__, "an nn.Module", cls=RampartsTypeError)
    for name, ds in (("train_data", train_data), ("val_data", val_data)):
        if not isinstance(ds, Dataset):
            raise invalid(name, type(ds).__name__, "a ramparts.data.Dataset", cls=RampartsTypeError)
    if isinstance(fpr, bool) or not isinstance(fpr, int | float) or not 0 <= fpr < 1:
        raise invalid("fpr", fpr, "a false-positive rate in [0, 1)", "e.g. 0.05")
    check_int("seed", seed, 0)
    if autoencoders is not None and (
        isinstance(autoencoders, nn.Module) or not isinstance(autoencoders, Sequence) or not autoencoders
    ):
        raise invalid("autoencoders", autoencoders, "None or a non-empty sequence of trained autoencoders")
    count = 2 if autoencoders is None else len(autoencoders)
    if isinstance(reformer, bool) or not isinstance(reformer, int) or not 0 <= reformer < count:
        raise invalid("reformer", reformer, f"an index into the {count} autoencoders", "0 for the first")
    if isinstance(norms, str | bytes) or not isinstance(norms, Sequence) or len(norms) != count:
        raise invalid("norms", norms, f"one norm (1 or 2) per autoencoder ({count})")
    if isinstance(temperatures, str | bytes) or not isinstance(temperatures, Sequence):
        raise invalid("temperatures", temperatures, "a sequence of temperatures > 0", "e.g. (10, 40)")
    if autoencoders is None:
        aes: list[nn.Module] = list(_pool_autoencoders(train_data.input_shape[0], seed))
        cfg = config or TrainConfig(epochs=30, batch_size=128, lr=1e-3, weight_decay=1e-9, seed=seed)
        for i, ae in enumerate(aes):
            folder = Path(checkpoint_dir) / f"autoencoder-{i}" if checkpoint_dir is not None else None
            report = train_autoencoder(ae, train_data, config=cfg, noise=noise, checkpoint_dir=folder)
            logger.info("magnet: autoencoder %d trained, final MSE %.5f", i, report.train_loss[-1])
    else:
        aes = list(autoencoders)
    detectors: list[Detector] = [ReconstructionDetector(ae, p=p) for ae, p in zip(aes, norms, strict=True)]
    detectors += [DivergenceDetector(aes[0], classifier, temperature=t) for t in temperatures]
    device = next(classifier.parameters(), torch.empty(0)).device
    for ae in aes:
        ae.to(device).eval()
    classifier.eval()
    clean = val_data.x.to(device)
    for d in detectors:
        d.calibrate(clean, fpr / len(detectors))
    return DefendedModel(classifier, transforms=[Reformer(aes[reformer])], detectors=detectors)
