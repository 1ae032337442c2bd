"""What the code ran on: versions and hardware, for bug reports (`ramparts env`) and for report.json."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

# Distribution names as pip knows them; the report shows them under these names.
PACKAGES: tuple[str, ...] = (
    "ramparts",
    "torch",
    "numpy",
    "scikit-learn",
    "safetensors",
    "typer",
    "rich",
    "matplotlib",
    "jinja2",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution, None where it is not installed."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_info() -> dict[str, Any]:
    """Logical CPUs of the machine, those this process may use, and torch's intra-op threads."""
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
    }


def accelerator_info() -> dict[str, Any]:
    """CUDA devices (name, memory, compute capability), the CUDA/cuDNN builds, and Apple MPS."""
    import torch

    devices = []
    available = torch.cuda.is_available()
    if available:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append(
                {
                    "index": i,
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 2),
                    "capability": f"{props.major}.{props.minor}",
                }
            )
    cudnn = torch.backends.cudnn.version() if available else None
    mps = getattr(torch.backends, "mps", None)
    return {
        "cuda_available": available,
        "cuda_build": torch.version.cuda,
        "cudnn": cudnn,
        "cuda_devices": devices,
        "mps_available": bool(mps is not None and mps.is_available()),
    }


def collect_environment() -> dict[str, Any]:
    """Everything above in one JSON-ready dict."""
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "cpu": cpu_info(),
        "accelerators": accelerator_info(),
    }
