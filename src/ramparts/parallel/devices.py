"""Local devices: one spawned worker process per GPU (or CPU slot), tasks dealt to whichever is free."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pickle
import re
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import torch

from ramparts.errors import invalid
from ramparts.parallel.base import (
    R,
    T,
    TaskError,
    check_module_level,
    check_resources,
    map_tensors,
    outbound,
    short_repr,
)

log = logging.getLogger(__name__)

_DEVICE = re.compile(r"^(?:cpu|cuda(?::(?P<index>\d+))?)$")
_JOIN_TIMEOUT_S = 10.0


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
            check_module_level(initializer, "initializer", "workers import")
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
        check_module_level(fn, "fn", "workers import")
        check_resources(num_cpus, num_gpus)
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
                    f"(item {short_repr(items[index])}): {text}"
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
                    self._conns[slot].send(((call, index), fn, map_tensors(items[index], outbound)))
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


def _to_cpu(obj: Any) -> Any:
    """Results leave a worker on the CPU, detached (CUDA tensors would need the worker alive to be read)."""
    return map_tensors(obj, lambda t: t.detach().cpu())


def _own(obj: Any) -> Any:
    """Copy received tensors out of shared memory, which holds a file descriptor per tensor open."""
    return map_tensors(obj, lambda t: t.clone() if t.is_shared() else t)
