"""Shared fixtures: a tiny CNN trained on the embedded digits in about a second."""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning made torch ~10x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from ramparts.data import load_digits
from ramparts.oracles import TorchOracle


@dataclass(frozen=True)
class Trained:
    oracle: TorchOracle
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor


def _tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 16, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and do not fight other jobs for the cores.

    Session-scoped so that it is set before any module-scoped fixture runs: results that train a model
    (the audit's theft section) differ in the last float bits between thread counts, and a fixture
    computed on two threads would not equal the same run repeated on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits_model() -> Trained:
    """A small CNN trained on 1400 digits; the other 397 are the held-out batch attacks use."""
    ds = load_digits()
    torch.manual_seed(0)
    model = _tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x_train, y_train = ds.x[:1400], ds.y[:1400]
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        perm = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(x_train), 64):
            b = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x_train[b]), y_train[b]).backward()
            opt.step()
    model.eval()
    oracle = TorchOracle(model, input_shape=(1, 8, 8))
    x, y = ds.x[1400:], ds.y[1400:]
    keep = oracle.labels(x) == y
    return Trained(oracle, model, x[keep][:64].contiguous(), y[keep][:64].contiguous())
