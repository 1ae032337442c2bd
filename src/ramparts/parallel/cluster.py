"""Ray: tasks on a running cluster, reached at an address checked (and probed) before Ray is asked."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ramparts.errors import RampartsError, invalid
from ramparts.parallel.base import (
    ClusterError,
    R,
    RayUnavailableError,
    T,
    check_module_level,
    check_resources,
    failed_note,
    map_tensors,
    outbound,
)

_INSTALL_FIX = "install Ray with `pip install 'ramparts[ray]'`, or leave out --ray to run in this process."
_ADDRESS_FORMS = (
    "'auto', 'HOST:PORT' (the head's GCS port, 6379 by default) or 'ray://HOST:PORT' (Ray Client)"
)
_ADDRESS = re.compile(r"^(?:ray://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")
_PROBE_TIMEOUT_S = 5.0


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
        check_module_level(fn)
        check_resources(num_cpus, num_gpus)
        items = list(items)
        fn_ref = self._ray.put(fn)
        name = getattr(fn, "__qualname__", "task")
        remote = self._remote.options(num_cpus=num_cpus, num_gpus=num_gpus, name=f"ramparts:{name}")
        refs = [remote.remote(fn_ref, map_tensors(item, outbound)) for item in items]
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
                    exc.add_note(failed_note(index, items[index]))
                    raise
                yield index, result
        finally:
            if pending and ray.is_initialized():
                for ref in pending:
                    ray.cancel(ref)

    def close(self) -> None:
        """Disconnect this driver from the cluster; the cluster keeps running."""
        self._ray.shutdown()


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
