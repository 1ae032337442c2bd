"""Executors for embarrassingly parallel work: in this process by default, on local devices or a Ray
cluster on request.

``executor_for(None)`` runs tasks one after the other here; ``executor_for("gpus")`` (or ``"gpus:N"``,
``"cpus:N"``) runs them in one worker process per local device (:class:`DeviceExecutor`);
``executor_for("auto")`` or ``executor_for("HOST:PORT")`` (the CLI's ``--ray``) runs them as Ray tasks on
a running cluster. All yield ``(index, result)`` pairs as each task finishes, so a caller can record
results one by one.

Rules for the task function and its data on Ray:

- ``fn`` must be a module-level function of an installed module: Ray pickles it by reference, and each
  worker imports it by name. Every node therefore needs the same ramparts version (and the module
  holding ``fn``) installed, or ships it with ``runtime_env={"py_modules": [...]}`` or
  ``{"working_dir": ...}``.
- Items and results travel through Ray's object store, serialised by Ray (pickle) between the
  processes of the user's own cluster. This is not loading untrusted files: only run it on a cluster
  you control, as with any Ray job.

The same holds for :class:`DeviceExecutor`: ``fn`` must be importable by name (its workers are spawned,
not forked), and items and results are pickled between this process and its own workers, their tensors
passed through shared memory.
"""

from __future__ import annotations

import re

from ramparts.errors import invalid
from ramparts.parallel.base import ClusterError, Executor, InProcessExecutor, RayUnavailableError, TaskError
from ramparts.parallel.cluster import RayExecutor
from ramparts.parallel.devices import DeviceExecutor, deterministic, worker_device

__all__ = [
    "ClusterError",
    "DeviceExecutor",
    "Executor",
    "InProcessExecutor",
    "RayExecutor",
    "RayUnavailableError",
    "TaskError",
    "deterministic",
    "executor_for",
    "worker_device",
]

_DEVICE_SPEC = re.compile(r"^(?P<kind>gpus|cpus)(?::(?P<count>\d+))?$")


def executor_for(ray: str | None) -> Executor:
    """The executor for the CLI's ``--ray`` value: ``None`` runs in this process; ``"gpus"`` (every
    visible GPU), ``"gpus:N"`` (the first N) or ``"cpus:N"`` (N CPU workers) in a :class:`DeviceExecutor`;
    an address on Ray."""
    if ray is None:
        return InProcessExecutor()
    match = _DEVICE_SPEC.match(ray) if isinstance(ray, str) else None
    if match is None:
        return RayExecutor(ray)
    count = match["count"]
    if match["kind"] == "gpus" and count is None:
        return DeviceExecutor("all", param="--ray")
    if count is None or int(count) < 1:
        raise invalid("--ray", ray, "'gpus', 'gpus:N' or 'cpus:N' with N >= 1", "pass e.g. --ray cpus:4.")
    kind = "cpu" if match["kind"] == "cpus" else "cuda"
    return DeviceExecutor([kind if kind == "cpu" else f"cuda:{i}" for i in range(int(count))], param="--ray")
