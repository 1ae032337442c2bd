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

import atexit
import contextlib
import copy
import dataclasses
import logging
import os
import pickle
import re
import socket
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor

from ramparts.errors import RampartsError, RampartsTypeError, invalid

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

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_INSTALL_FIX = "install Ray with `pip install 'ramparts[ray]'`, or leave out --ray to run in this process."
_ADDRESS_FORMS = (
    "'auto', 'HOST:PORT' (the head's GCS port, 6379 by default) or 'ray://HOST:PORT' (Ray Client)"
)
_ADDRESS = re.compile(r"^(?:ray://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")
_PROBE_TIMEOUT_S = 5.0
_DEVICE_SPEC = re.compile(r"^(?P<kind>gpus|cpus)(?::(?P<count>\d+))?$")
_DEVICE = re.compile(r"^(?:cpu|cuda(?::(?P<index>\d+))?)$")
_JOIN_TIMEOUT_S = 10.0


class ClusterError(RampartsError, ConnectionError):
    """The Ray cluster named by ``--ray`` cannot be reached."""


class RayUnavailableError(RampartsError, ImportError):
    """``--ray`` was given but Ray is not installed."""


class TaskError(RampartsError, RuntimeError):
    """A task failed in a :class:`DeviceExecutor` worker, or its worker died; names the task and device.

    The worker's traceback is in the message; ``__cause__`` is the original exception where it could be
    sent back.
    """


class Executor(Protocol):
    """Runs ``fn`` over items; yields ``(index, result)`` as each task finishes."""

    name: str

    def map(
        self, fn: Callable[[T], R], items: Sequence[T], *, num_cpus: float = 1, num_gpus: float = 0
    ) -> Iterator[tuple[int, R]]:
        """Yield ``(index into items, fn(item))`` in completion order; a failed task re-raises its error."""
        ...

    def close(self) -> None:
        """Release the executor's resources."""
        ...


class InProcessExecutor:
    """Runs the tasks in order in this process; ``num_cpus`` and ``num_gpus`` are only checked."""

    name = "in-process"

    def map(
        self, fn: Callable[[T], R], items: Sequence[T], *, num_cpus: float = 1, num_gpus: float = 0
    ) -> Iterator[tuple[int, R]]:
        """Yield ``(i, fn(items[i]))`` for each item in order; an exception gets a note naming the item."""
        _check_resources(num_cpus, num_gpus)
        return self._run(fn, list(items))

    def _run(self, fn: Callable[[T], R], items: list[T]) -> Iterator[tuple[int, R]]:
        for index, item in enumerate(items):
            try:
                result = fn(item)
            except Exception as exc:
                exc.add_note(_failed_note(index, item))
                raise
            yield index, result

    def close(self) -> None:
        """Nothing to release."""


class RayExecutor:
    """Runs each item as one Ray task on a running cluster; yields results as tasks finish.

    ``address`` is ``"auto"`` (the cluster started on this machine with ``ray start``), ``"HOST:PORT"``
    (the head's GCS address) or ``"ray://HOST:PORT"`` (Ray Client). The executor only connects: it never
    starts a cluster, and :meth:`close` disconnects this driver without stopping the cluster.
    ``runtime_env`` is passed to ``ray.init`` (e.g. ``{"py_modules": [...]}`` to ship code to nodes).
    """

    name = "ray"

    def __init__(self, address: str, *, runtime_env: dict[str, Any] | None = None) -> None:
        host_port = _parse_address(address)
        ray = _import_ray(address)
        if ray.is_initialized():
            raise invalid(
                "--ray",
                address,
                "a process not yet connected to Ray",
                "close the other RayExecutor (or call ray.shutdown()) before creating a new one.",
                cls=ClusterError,
            )
        if host_port is not None:
            _probe(address, *host_port)
        try:
            ray.init(address=address, runtime_env=runtime_env, configure_logging=False)
        except ConnectionError as exc:
            raise _unreachable(address, str(exc)) from exc
        self.address = address
        self._ray = ray
        self._remote = ray.remote(_call)

    def map(
        self, fn: Callable[[T], R], items: Sequence[T], *, num_cpus: float = 1, num_gpus: float = 0
    ) -> Iterator[tuple[int, R]]:
        """Submit one task per item (``num_cpus``/``num_gpus`` each); yield ``(i, result)`` as each ends.

        Tasks are submitted at once. On a task's failure, or when the caller stops iterating, the tasks
        still pending are cancelled.
        """
        _check_module_level(fn)
        _check_resources(num_cpus, num_gpus)
        items = list(items)
        fn_ref = self._ray.put(fn)
        name = getattr(fn, "__qualname__", "task")
        remote = self._remote.options(num_cpus=num_cpus, num_gpus=num_gpus, name=f"ramparts:{name}")
        refs = [remote.remote(fn_ref, _map_tensors(item, _outbound)) for item in items]
        return self._stream(refs, items)

    def _stream(self, refs: list[Any], items: list[Any]) -> Iterator[tuple[int, Any]]:
        ray = self._ray
        index_of = {ref: i for i, ref in enumerate(refs)}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                index = index_of[done[0]]
                try:
                    result = ray.get(done[0])
                except Exception as exc:
                    exc.add_note(_failed_note(index, items[index]))
                    raise
                yield index, result
        finally:
            if pending and ray.is_initialized():
                for ref in pending:
                    ray.cancel(ref)

    def close(self) -> None:
        """Disconnect this driver from the cluster; the cluster keeps running."""
        self._ray.shutdown()


class DeviceExecutor:
    """One worker process per device; each task goes to the next free worker; yields results as they end.

    ``devices``: ``"all"`` (one worker per visible GPU) or a list of ``"cpu"`` / ``"cuda:N"`` (``"cuda"`` is
    ``"cuda:0"``; a device may repeat, giving it several workers). Workers are spawned through
    ``torch.multiprocessing`` and a GPU worker sees only its GPU (``CUDA_VISIBLE_DEVICES`` is set for it
    before CUDA starts), so inside a task ``"cuda"`` and ``"cuda:0"`` mean the worker's GPU and
    :func:`worker_device` tells it which device is its own; a CPU worker sees no GPU. ``threads``: torch
    threads per worker (default: the cores shared out evenly). ``initializer``: a module-level function each
    worker calls once after start-up (e.g. :func:`deterministic`). ``prefetch``: tasks sent to a worker ahead
    of the one it runs, so that it never waits for this process to pickle the next (1 by default; 0 deals
    each task to whichever worker is free first, best for tasks of very different lengths).

    Workers start at construction; :meth:`wait_ready` waits for them (``map`` does so itself), so start-up can
    be timed apart. As with any spawned process, a script that creates one must guard its entry point with
    ``if __name__ == "__main__":`` (the workers import the main module). Tensors in results come back as CPU tensors owned by this process. A task that raises,
    or whose worker dies, raises :class:`TaskError` naming the task and the device. :meth:`close` (or the
    ``with`` block, or garbage collection) stops the workers.
    """

    name = "devices"

    def __init__(
        self,
        devices: Sequence[str] | str = "all",
        *,
        threads: int | None = None,
        initializer: Callable[[], None] | None = None,
        prefetch: int = 1,
        start_timeout_s: float = 600.0,
        param: str = "devices",
    ) -> None:
        labels = _resolve_devices(devices, param)
        if threads is None:
            threads = max(1, (os.cpu_count() or 1) // len(labels))
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise invalid("threads", threads, "an integer >= 1 (torch threads per worker) or None")
        if initializer is not None:
            _check_module_level(initializer, "initializer", "workers import")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise invalid("prefetch", prefetch, "an integer >= 0 (tasks sent ahead to each worker)")
        if not start_timeout_s > 0:
            raise invalid("start_timeout_s", start_timeout_s, "a number of seconds > 0")
        self.devices = labels
        self.threads = threads
        self.prefetch = prefetch
        self.workers: list[dict[str, Any]] = [{"device": label} for label in labels]
        self._timeout_s = float(start_timeout_s)
        self._started = time.monotonic()
        self._ready = [False] * len(labels)
        self._busy: list[deque[tuple[int, int]]] = [deque() for _ in labels]  # (call, index) sent
        self._alive = [True] * len(labels)
        self._calls = 0
        context = torch.multiprocessing.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        self._finalizer = weakref.finalize(self, _shut_down, self._procs, self._conns)
        # At exit, before multiprocessing's own hook, which would wait for the (non-daemon) workers forever.
        atexit.register(self._finalizer)
        for label in labels:
            mine, theirs = context.Pipe()
            proc = context.Process(
                target=_serve,
                args=(label, threads, initializer, theirs),
                name=f"ramparts-worker-{label}",
                daemon=False,
            )
            with _environ(_worker_environ(label, threads)):
                proc.start()
            theirs.close()
            self._conns.append(mine)
            self._procs.append(proc)

    def __enter__(self) -> DeviceExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self) -> DeviceExecutor:
        """Block until every worker has started (spawned, torch imported, CUDA context made, initializer run)."""
        self._check_open()
        deadline = self._started + self._timeout_s
        while not all(r or not a for r, a in zip(self._ready, self._alive, strict=True)):
            waiting = [i for i in range(len(self._conns)) if self._alive[i] and not self._ready[i]]
            left = deadline - time.monotonic()
            slot = self._next_message(waiting, timeout=max(left, 0.0))
            if slot is None:
                names = ", ".join(self.devices[i] for i in waiting)
                self.close()
                raise TaskError(
                    f"workers for {names} did not start within {self._timeout_s:g} s (start_timeout_s)"
                )
            message = self._receive(slot)
            if message is None or message[0] != "ready":
                detail = self._death(slot) if message is None else message[1]
                self.close()
                raise TaskError(f"the worker for {self.devices[slot]} failed to start: {detail}")
            self._ready[slot] = True
            self.workers[slot].update(message[1])
        return self

    def map(
        self, fn: Callable[[T], R], items: Sequence[T], *, num_cpus: float = 1, num_gpus: float = 0
    ) -> Iterator[tuple[int, R]]:
        """Deal the items to free workers one at a time; yield ``(i, fn(items[i]))`` as each task ends.

        ``num_cpus`` is only checked; ``num_gpus > 0`` needs GPU workers (one task per worker at a time).
        When the caller stops iterating, the tasks still running finish and their results are dropped.
        """
        _check_module_level(fn, "fn", "workers import")
        _check_resources(num_cpus, num_gpus)
        if num_gpus > 0 and "cpu" in self.devices:
            raise invalid(
                "num_gpus",
                num_gpus,
                "0 for a DeviceExecutor with CPU workers",
                "create it with GPUs (DeviceExecutor('all')), or run the tasks on the CPU.",
            )
        self._check_open()
        return self._stream(fn, list(items))

    def _stream(self, fn: Callable[[Any], Any], items: list[Any]) -> Iterator[tuple[int, Any]]:
        self.wait_ready()
        self._calls += 1
        call = self._calls
        todo = deque(range(len(items)))
        pending = len(items)
        while pending:
            self._deal(call, fn, items, todo)
            busy = [i for i, tags in enumerate(self._busy) if tags]
            if not busy:
                raise TaskError("every worker of this DeviceExecutor has died; create a new one")
            slot = self._next_message(busy)
            if slot is None:
                continue
            message = self._receive(slot)
            if message is None:
                lost = [index for tag_call, index in self._busy[slot] if tag_call == call]
                self._busy[slot].clear()
                if lost:
                    raise TaskError(
                        f"parallel task {lost[0]} on {self.devices[slot]}: its worker died ({self._death(slot)})"
                    )
                continue
            tag_call, index = self._busy[slot].popleft()
            if tag_call != call:
                continue  # a task of an earlier call whose caller stopped iterating
            if message[0] == "error":
                _, _, text, original = message
                raise TaskError(
                    f"parallel task {index} failed on {self.devices[slot]} "
                    f"(item {_short_repr(items[index])}): {text}"
                ) from original
            pending -= 1
            self._deal(call, fn, items, todo)
            yield index, _own(message[2])

    def _deal(self, call: int, fn: Callable[[Any], Any], items: list[Any], todo: deque[int]) -> None:
        """Keep 1 + `prefetch` tasks with every live worker, one level at a time so that few tasks still
        spread over all the workers."""
        for level in range(1 + self.prefetch):
            for slot in range(len(self._conns)):
                if not todo:
                    return
                if not self._alive[slot] or len(self._busy[slot]) != level:
                    continue
                index = todo.popleft()
                try:
                    self._conns[slot].send(((call, index), fn, _map_tensors(items[index], _outbound)))
                except (BrokenPipeError, ConnectionResetError):  # it died: its tasks are reported on receipt
                    todo.appendleft(index)
                    self._alive[slot] = False
                    continue
                self._busy[slot].append((call, index))

    def _next_message(self, slots: list[int], timeout: float | None = None) -> int | None:
        """The first of `slots` with a message or a dead worker; None on timeout."""
        conns = {self._conns[i]: i for i in slots}
        sentinels = {self._procs[i].sentinel: i for i in slots}
        ready = wait([*conns, *sentinels], timeout)
        for obj in ready:
            if obj in conns:
                return conns[obj]
        return sentinels[ready[0]] if ready else None

    def _receive(self, slot: int) -> tuple[Any, ...] | None:
        """The worker's next message, or None (and the worker marked dead) when it has gone."""
        conn = self._conns[slot]
        try:
            if conn.poll():
                message: tuple[Any, ...] = conn.recv()
                return message
        except (EOFError, OSError):
            pass
        self._alive[slot] = False
        self._procs[slot].join(_JOIN_TIMEOUT_S)
        return None

    def _death(self, slot: int) -> str:
        code = self._procs[slot].exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return f"worker pid {self._procs[slot].pid} on {self.devices[slot]} ended, {how}"

    def _check_open(self) -> None:
        if not self._finalizer.alive:
            raise invalid(
                "executor", "a closed DeviceExecutor", "an open one", "create a new DeviceExecutor."
            )

    def close(self) -> None:
        """Stop the workers (a running task is waited for up to 10 s, then its worker is terminated)."""
        atexit.unregister(self._finalizer)
        self._finalizer()


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


def _call(fn: Callable[[T], R], item: T) -> R:
    """The body of every Ray task: ``fn(item)``."""
    return fn(item)


def _import_ray(address: str) -> Any:
    try:
        import ray
    except ImportError as exc:
        raise invalid("--ray", address, "Ray to be installed", _INSTALL_FIX, cls=RayUnavailableError) from exc
    return ray


def _parse_address(address: object) -> tuple[str, int] | None:
    """``(host, port)`` of an address, ``None`` for ``"auto"``; anything else is refused."""
    if address == "auto":
        return None
    match = _ADDRESS.match(address) if isinstance(address, str) else None
    if match is None:
        raise invalid("--ray", address, _ADDRESS_FORMS, "pass e.g. --ray auto or --ray 10.0.0.5:6379.")
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise invalid("--ray", address, "a port between 1 and 65535", "use the port the head printed.")
    return match["host"].strip("[]"), port


def _probe(address: str, host: str, port: int) -> None:
    """Fail fast, with the fix, when nothing listens at the address (Ray itself retries for a while)."""
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise _unreachable(address, str(exc)) from exc


def _unreachable(address: str, reason: str) -> RampartsError:
    fix = (
        "start the cluster (`ray start --head` on the head node, `ray start --address=HEAD:6379` on the "
        "others), check it with `ray status`, and pass the address the head printed to --ray."
    )
    return invalid(
        "--ray", f"{address} ({reason})", "the address of a running Ray cluster", fix, cls=ClusterError
    )


def _check_module_level(fn: Callable[..., Any], param: str = "fn", who: str = "Ray imports") -> None:
    """Refuse lambdas and nested functions: Ray would pickle them by value, with whatever they capture,
    and spawned workers cannot import them at all."""
    qualname = getattr(fn, "__qualname__", "")
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise invalid(
            param,
            f"{fn.__module__}.{qualname}",
            f"a function defined at module level in an importable module ({who} it by name)",
            "move the function to the top level of a module installed on every node.",
            cls=RampartsTypeError,
        )


def _check_resources(num_cpus: float, num_gpus: float) -> None:
    for param, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise invalid(param, value, "a number >= 0 (resources one task reserves)")


def _failed_note(index: int, item: object) -> str:
    return f"parallel task {index} failed on item {_short_repr(item)}"


# --------------------------------------------------------------------------------- device workers

_WORKER_DEVICE: torch.device | None = None  # set in a DeviceExecutor worker


def worker_device() -> torch.device | None:
    """The device of the :class:`DeviceExecutor` worker running this code (``cuda:0`` for a GPU worker,
    which sees only its GPU); None outside such a worker."""
    return _WORKER_DEVICE


def deterministic() -> None:
    """A :class:`DeviceExecutor` initializer: PyTorch's deterministic kernels (warnings, not errors, for
    the few without one), cuDNN autotuning off and a fixed cuBLAS workspace, so that a task computes the
    same bits in any worker on the same kind of GPU."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def _resolve_devices(devices: Sequence[str] | str, param: str) -> list[str]:
    """Device labels ("cpu", "cuda:N"), checked against the GPUs this process can see."""
    forms = "'all' or a non-empty list of 'cpu' / 'cuda:N'"
    if devices == "all":
        count = torch.cuda.device_count()
        if count == 0:
            raise invalid(
                param, devices, "a visible CUDA GPU for 'all'", "pass ['cpu', 'cpu'] for CPU workers."
            )
        return [f"cuda:{i}" for i in range(count)]
    if isinstance(devices, str) or not isinstance(devices, Sequence) or not devices:
        raise invalid(param, devices, forms)
    labels = []
    for device in devices:
        match = _DEVICE.match(device) if isinstance(device, str) else None
        if match is None:
            raise invalid(param, device, forms)
        if device == "cpu":
            labels.append("cpu")
            continue
        index = int(match["index"] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise invalid(
                param, device, f"a CUDA device below cuda:{count} ({count} visible)", "check nvidia-smi."
            )
        labels.append(f"cuda:{index}")
    return labels


def _worker_environ(label: str, threads: int) -> dict[str, str]:
    """The environment a worker starts with: only its GPU visible, its thread count."""
    if label == "cpu":
        visible = ""
    else:
        index = int(label.split(":")[1])
        parent = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        visible = parent[index] if index < len(parent) else str(index)
    return {"CUDA_VISIBLE_DEVICES": visible, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


@contextlib.contextmanager
def _environ(updates: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration (a spawned process copies the environment at start)."""
    saved = {key: os.environ.get(key) for key in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _serve(label: str, threads: int, initializer: Callable[[], None] | None, conn: Connection) -> None:
    """A worker's life: start up, report ready, then run ``fn(item)`` for each task until told to stop."""
    global _WORKER_DEVICE
    try:
        torch.set_num_threads(threads)
        device = torch.device("cpu")
        name = "cpu"
        if label != "cpu":
            if not torch.cuda.is_available():
                raise RuntimeError(
                    f"no CUDA device visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
                )
            device = torch.device("cuda", 0)
            torch.cuda.set_device(device)
            torch.zeros(1, device=device)  # the CUDA context, as part of start-up
            name = torch.cuda.get_device_name(device)
        _WORKER_DEVICE = device
        if initializer is not None:
            initializer()
        conn.send(("ready", {"pid": os.getpid(), "name": name}))
    except Exception as exc:
        conn.send(("failed", _describe(exc)))
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the driver has gone
        if message is None:
            return
        tag, fn, item = message
        try:
            result = _to_cpu(fn(item))
        except Exception as exc:
            conn.send(("error", tag, _describe(exc), _sendable(exc)))
            continue
        try:
            conn.send(("done", tag, result))
        except Exception as exc:  # the result cannot be pickled: nothing was written
            conn.send(("error", tag, f"its result could not be sent back: {_describe(exc)}", None))


def _shut_down(procs: list[Any], conns: list[Connection]) -> None:
    """Tell every worker to stop, wait for it, terminate it if it does not."""
    for conn in conns:
        with contextlib.suppress(OSError, ValueError):
            conn.send(None)
    deadline = time.monotonic() + _JOIN_TIMEOUT_S
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            log.warning("worker %s (pid %s) did not stop; terminating it", proc.name, proc.pid)
            proc.terminate()
            proc.join(_JOIN_TIMEOUT_S)
    for conn in conns:
        conn.close()


def _describe(exc: BaseException) -> str:
    """``Type: message`` and the worker's traceback."""
    trace = "".join(traceback.format_exception(exc)).rstrip()
    return f"{type(exc).__name__}: {exc}\n--- worker traceback ---\n{trace}"


def _sendable(exc: BaseException) -> BaseException | None:
    """The exception if it survives a pickle round trip (some custom exceptions do not), else None."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return None
    return exc


def _map_tensors(obj: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``obj`` with ``fn`` applied to every tensor inside dicts, lists, tuples and dataclasses."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        out = copy.copy(obj)  # keeps the type and attributes (a state dict's _metadata)
        for key, value in obj.items():
            out[key] = _map_tensors(value, fn)
        return out
    if isinstance(obj, list):
        return [_map_tensors(v, fn) for v in obj]
    if isinstance(obj, tuple):
        values = [_map_tensors(v, fn) for v in obj]
        return type(obj)(*values) if hasattr(obj, "_fields") else type(obj)(values)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: _map_tensors(getattr(obj, f.name), fn) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **changes)
    return obj


def _outbound(t: Tensor) -> Tensor:
    """A tensor as it goes to a worker: on the CPU (a worker cannot open another GPU's memory), detached,
    and a view of a larger storage copied out (the whole storage would travel otherwise)."""
    t = t.detach().cpu()
    if t.untyped_storage().nbytes() > t.numel() * t.element_size():
        t = t.clone(memory_format=torch.contiguous_format)
    return t


def _to_cpu(obj: Any) -> Any:
    """Results leave a worker on the CPU, detached (CUDA tensors would need the worker alive to be read)."""
    return _map_tensors(obj, lambda t: t.detach().cpu())


def _own(obj: Any) -> Any:
    """Copy received tensors out of shared memory, which holds a file descriptor per tensor open."""
    return _map_tensors(obj, lambda t: t.clone() if t.is_shared() else t)


def _short_repr(item: object) -> str:
    text = repr(item)
    return text if len(text) <= 200 else text[:197] + "..."
