"""Plain input transformations as :class:`Transform` s, to be evaluated like any other defence.

Guo, Rana, Cisse & van der Maaten, "Countering Adversarial Images using Input Transformations",
ICLR 2018, proposed JPEG compression, smoothing and randomised transformations; Athalye, Carlini &
Wagner 2018 ("Obfuscated Gradients Give a False Sense of Security") broke them with BPDA and EOT,
which is what the ``differentiable`` and ``randomized`` flags tell an adaptive attack to use.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ramparts.defenses.base import Transform
from ramparts.errors import RampartsTypeError, check_int, invalid

__all__ = ["GaussianSmoothing", "Quantize", "RandomNoise"]


def _positive(param: str, value: object, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise invalid(param, value, "a finite number > 0", hint)
    return float(value)


class Quantize(Transform):
    """Uniform quantisation of [0, 1] inputs to ``levels`` values: a stand-in for JPEG compression.

    Not JPEG itself (no DCT blocks or chroma subsampling): like JPEG it discards fine detail by
    rounding, and like JPEG it is non-differentiable (Guo et al. 2018; broken by BPDA, Athalye et al. 2018).
    """

    differentiable = False

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = check_int("levels", levels, 2)

    def forward(self, x: Tensor) -> Tensor:
        top = self.levels - 1
        return torch.round(x.clamp(0.0, 1.0) * top) / top


class GaussianSmoothing(Transform):
    """Per-channel Gaussian blur (std ``sigma`` pixels, odd ``kernel_size``, edges replicated); differentiable.

    Smoothing as an input transformation (Guo et al. 2018; Xu et al. 2018 used the median instead).
    ``kernel_size`` defaults to ``2 * ceil(2 sigma) + 1``.
    """

    def __init__(self, *, sigma: float, kernel_size: int | None = None) -> None:
        super().__init__()
        self.sigma = _positive("sigma", sigma, "a blur of 0.5 to 1 pixel is typical")
        size = (
            2 * math.ceil(2 * self.sigma) + 1
            if kernel_size is None
            else check_int("kernel_size", kernel_size, 1)
        )
        if size % 2 == 0:
            raise invalid("kernel_size", size, "an odd kernel size", f"use {size + 1}")
        self.kernel_size = size
        offsets = torch.arange(size, dtype=torch.float32) - size // 2
        g = torch.exp(-(offsets**2) / (2 * self.sigma**2))
        g = g / g.sum()
        self.register_buffer("kernel", (g[:, None] * g[None, :])[None, None])

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        r = self.kernel_size // 2
        padded = F.pad(x.reshape(n * c, 1, h, w), (r, r, r, r), mode="replicate")
        kernel = self.get_buffer("kernel").to(dtype=x.dtype, device=x.device)
        return F.conv2d(padded, kernel).reshape(n, c, h, w)


class RandomNoise(Transform):
    """Add Gaussian noise N(0, ``sigma``^2) and clip to [0, 1], fresh per call from a seeded generator.

    A randomised input transformation (Guo et al. 2018; Xie et al. 2018), ``randomized = True`` so an
    adaptive attack averages its gradient over draws (EOT, Athalye et al. 2018). :meth:`reseed` restarts
    the draws: the same seed gives the same noise.
    """

    randomized = True

    def __init__(self, *, sigma: float, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(sigma, int | float) or isinstance(sigma, bool):
            raise invalid("sigma", sigma, "a number > 0", cls=RampartsTypeError)
        self.sigma = _positive("sigma", sigma, "e.g. 0.1 for inputs in [0, 1]")
        self.generator = torch.Generator()
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the noise stream from ``seed``."""
        self.seed = check_int("seed", seed, 0)
        self.generator.manual_seed(self.seed)

    def forward(self, x: Tensor) -> Tensor:
        noise = torch.randn(x.shape, generator=self.generator, dtype=x.dtype).to(x.device)
        return (x + self.sigma * noise).clamp(0.0, 1.0)
