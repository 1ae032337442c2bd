"""Pieces shared by the benchmark scripts: the cached MNIST model, the machine, timing, RESULTS.md sections.

Imported by the scripts in this folder (`python benchmarks/<script>.py` puts the folder on `sys.path`);
importing it also puts `src/` on the path, so a checkout runs without installing (the GPU machine).
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # run from a checkout without installing (the GPU machine)
    sys.path.insert(0, str(ROOT / "src"))

from ramparts import data as rdata  # noqa: E402
from ramparts import training, zoo  # noqa: E402

ARCH = "carlini_cnn"
ARCH_CONFIG = {"in_channels": 1, "input_size": 28, "num_classes": 10}
INPUT_SHAPE = (1, 28, 28)
RESULTS_HEADER = "# Benchmark results\n\nSee docs/benchmarks.md for how to run them.\n"
PEER_MODULES = ("torchattacks", "foolbox", "eagerpy", "art")


# --------------------------------------------------------------------------------------- machine


def art_classifier(model: nn.Module, device: torch.device, input_shape: tuple[int, ...] = INPUT_SHAPE) -> Any:
    """ART's PyTorchClassifier around `model` (10 classes, inputs in [0, 1]) on `device`'s kind."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=input_shape,
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="gpu" if device.type == "cuda" else "cpu",
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reseed(seed: int) -> None:
    """Reseed every RNG a peer may draw from (torch, numpy, CUDA, Python's `random`)."""
    import random

    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def machine_info(device: torch.device, peers: tuple[str, ...] = PEER_MODULES) -> dict[str, Any]:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "device": str(device),
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        info["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    for name in peers:
        try:
            mod = __import__(name)
            info[name] = getattr(mod, "__version__", "?")
        except Exception as exc:
            info[name] = f"missing ({type(exc).__name__})"
    return info


def machine_label(info: dict[str, Any]) -> str:
    if "gpu" in info:
        return f"{info['gpu']} (CUDA {info['cuda']}), host CPU {info['cpu']} x{info['cpu_cores']}"
    return f"{info['cpu']}, {info['cpu_cores']} cores ({info['torch_threads']} torch threads), no GPU"


def section_key(info: dict[str, Any], suffix: str) -> str:
    """A machine's key in RESULTS.md markers: its GPU (or CPU) name and `suffix`, slugged."""
    dev = info.get("gpu") or info["cpu"]
    return re.sub(r"[^A-Za-z0-9]+", "-", f"{dev} {suffix}").strip("-").lower()


# ----------------------------------------------------------------------------------------- model


def get_model(
    model_dir: str | Path, epochs: int, seed: int, device: torch.device, retrain: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """The cached carlini_cnn, or train one (deterministic: seed `seed`) and cache it in `model_dir`."""
    prefix = Path(model_dir) / f"{ARCH}_mnist_e{epochs}_s{seed}"
    info: dict[str, Any] = {"path": str(prefix) + ".safetensors"}
    if (prefix.with_suffix(".json")).is_file() and not retrain:
        model, meta = zoo.load_model(prefix)
        info.update(cached=True, **meta.get("extra", {}))
    else:
        train = rdata.load_shared("mnist", split="train")
        reseed(seed)
        model = zoo.build(ARCH, **ARCH_CONFIG)
        cfg = training.TrainConfig(epochs=epochs, batch_size=128, lr=1e-3, seed=seed, device=str(device))
        t0 = time.perf_counter()
        report = training.train(model, train, config=cfg, progress=sys.stderr.isatty())
        extra = {
            "train_seconds": round(time.perf_counter() - t0, 1),
            "train_device": str(device),
            "train_acc": report.train_acc[-1],
            "train_config": cfg.to_dict(),
        }
        zoo.save_model(model, prefix, arch=ARCH, config=ARCH_CONFIG, extra=extra)
        info.update(cached=False, **extra)
    model = model.to(device).eval()
    return model, info


def load_mnist_test(device: torch.device, n: int) -> tuple[Any, Tensor, Tensor]:
    """The MNIST test split and its first `n` images and labels on `device`."""
    test = rdata.load_shared("mnist", split="test")
    return test, test.x[:n].to(device).contiguous(), test.y[:n].to(device)


def test_accuracy(model: nn.Module, test: Any, device: torch.device) -> float:
    return training.evaluate(model, test, device=device)


# ---------------------------------------------------------------------------------------- timing


@contextlib.contextmanager
def timed(device: torch.device) -> Iterator[dict[str, float]]:
    """`with timed(dev) as t: ...` leaves the wall time, CUDA-synchronised at both ends, in `t["s"]`."""
    out: dict[str, float] = {}
    sync(device)
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        sync(device)
        out["s"] = time.perf_counter() - t0


def run_timed(fn: Callable[[], Any], device: torch.device, seed: int) -> tuple[Any, float]:
    """Reseed, then run `fn()` once; returns its value and the wall time (CUDA-synchronised)."""
    reseed(seed)
    with timed(device) as t:
        value = fn()
    return value, t["s"]


# ------------------------------------------------------------------------------------- reporting


def fmt(v: Any, spec: str, none: str = "") -> str:
    return none if v is None else format(v, spec)


def md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_section(
    path: Path, tag: str, key: str, section: str, heading: str, heading_marker: str | None = None
) -> None:
    """Replace the `<!-- tag:key -->` ... `<!-- /tag:key -->` block of `path` with `section`, or append it.

    `section` must start and end with those markers. An appended section goes under `heading` (a `## `
    line), which is added at the end of the file when `heading_marker` (default: `heading`) is missing.
    """
    text = path.read_text(encoding="utf-8") if path.is_file() else RESULTS_HEADER
    pattern = re.compile(rf"<!-- {tag}:{re.escape(key)} -->.*?<!-- /{tag}:{re.escape(key)} -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        if (heading_marker or heading) not in text:
            text = text.rstrip() + "\n\n" + heading + "\n"
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")
