"""PRADA: detect model extraction from the stream of one client's queries.

Juuti, Szyller, Marchal and Asokan, "PRADA: Protecting Against DNN Model Stealing Attacks" (EuroS&P
2019), Algorithm 1. For each query x of a client, with predicted class c:

- the first query of class c starts the growing set G_c (its distances D_Gc = [0], threshold T_c = 0);
- otherwise d_min = min_{y in G_c} ||x - y||_2 joins the client's distances D; if d_min > T_c, x joins
  G_c, d_min joins D_Gc and T_c = max(T_c, mean(D_Gc) - std(D_Gc));
- once D holds `min_samples` distances, the Shapiro-Wilk statistic W of D is computed after every
  query, and W < `delta` raises an alarm. Natural queries give roughly normal minimum distances;
  synthetic ones (Jacobian augmentation, small steps around seeds) give a mixture of tiny and large
  distances, far from normal.

Distances are computed with `torch.cdist` (direct differences, not the matrix-product shortcut, so a
distance does not depend on how the stream was batched) on the device of the queries. The state of
every client can be saved and restored (`state_dict`, `save`/`load`: JSON metadata and safetensors,
never pickle), and `GuardedOracle` puts PRADA in front of any oracle.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from scipy import stats
from torch import Tensor

from ramparts.errors import RampartsError, RampartsTypeError, invalid
from ramparts.oracles.base import Oracle
from ramparts.params import Constraint, HasParams, Interval

_META_KEY = "ramparts.prada"
_VERSION = 1
_CHUNK = 1024


class ExtractionBlocked(RampartsError, RuntimeError):  # noqa: N818 (reads as what happened)
    """A `GuardedOracle` with `block=True` refuses every query of a client after PRADA's alarm."""


@dataclass(frozen=True)
class Alarm:
    """PRADA's alarm after one query: W of the client's distances fell below `delta`."""

    client_id: str
    query: int  # 1-based position of the query in the client's stream
    statistic: float  # Shapiro-Wilk W
    num_distances: int
    delta: float

    def summary(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "query": self.query,
            "statistic": self.statistic,
            "num_distances": self.num_distances,
            "delta": self.delta,
        }


class _Series:
    """Floats appended one at a time and read as a numpy view: the test after every query reads the whole
    stream, and converting a Python list of 12,800 floats cost half as much as the Shapiro-Wilk test itself."""

    def __init__(self, values: Iterable[float] = ()) -> None:
        start = np.asarray(list(values), dtype=np.float64)
        self._data = np.empty(max(64, len(start)), dtype=np.float64)
        self._data[: len(start)] = start
        self._n = len(start)

    def append(self, value: float) -> None:
        if self._n == len(self._data):
            grown = np.empty(2 * len(self._data), dtype=np.float64)
            grown[: self._n] = self._data[: self._n]
            self._data = grown
        self._data[self._n] = value
        self._n += 1

    def __len__(self) -> int:
        return self._n

    @property
    def values(self) -> np.ndarray:
        """The series so far (a view: valid until the next append)."""
        return self._data[: self._n]


@dataclass
class _Client:
    queries: int = 0
    distances: _Series = field(default_factory=_Series)
    sets: dict[int, Tensor] = field(default_factory=dict)
    set_distances: dict[int, _Series] = field(default_factory=dict)
    thresholds: dict[int, float] = field(default_factory=dict)
    statistic: float | None = None
    alarms: int = 0
    first_alarm: int | None = None


class Prada(HasParams):
    """Per-client extraction detector (Juuti et al. 2019); see the module docstring for the rule.

    `delta`: alarm when the Shapiro-Wilk W of the distances is below it (the paper tunes it per model;
    0.9 is our default: honest digits streams stay above 0.91, Jacobian-style streams fall to ~0.3). `min_samples`: distances needed before testing (the paper's 100).
    """

    constraints: ClassVar[Mapping[str, Constraint]] = {
        "delta": Interval(float, 0.0, 1.0, open_low=True, open_high=True),
        "min_samples": Interval(int, 3, 5000),
    }

    def __init__(self, *, delta: float = 0.9, min_samples: int = 100) -> None:
        self.delta = delta
        self.min_samples = min_samples
        self.validate_params()
        self._clients: dict[str, _Client] = {}

    # -- queries ---------------------------------------------------------------------------------------

    def observe(self, client_id: str, x_batch: Tensor, labels: Tensor) -> list[Alarm]:
        """Feed a batch of one client's queries (in stream order) with their predicted classes.

        Returns one `Alarm` per query of the batch after which W < delta (empty when none).
        """
        if not isinstance(client_id, str) or not client_id:
            raise invalid("client_id", client_id, "a non-empty string", cls=RampartsTypeError)
        if not isinstance(x_batch, Tensor) or not x_batch.is_floating_point() or x_batch.dim() < 2:
            raise invalid("x_batch", x_batch, "a float tensor of queries (N, ...)", cls=RampartsTypeError)
        labels = torch.as_tensor(labels)
        if labels.shape != (len(x_batch),):
            raise invalid("labels", tuple(labels.shape), f"one class per query, shape ({len(x_batch)},)")
        client = self._clients.setdefault(client_id, _Client())
        flat = x_batch.detach().reshape(len(x_batch), -1).to(torch.float32)
        classes = labels.detach().to("cpu", torch.int64).tolist()
        alarms: list[Alarm] = []
        for start in range(0, len(flat), _CHUNK):
            alarms += self._observe_chunk(
                client_id, client, flat[start : start + _CHUNK], classes[start : start + _CHUNK]
            )
        return alarms

    def _observe_chunk(
        self, client_id: str, client: _Client, flat: Tensor, classes: list[int]
    ) -> list[Alarm]:
        rows_of: dict[int, list[int]] = {}
        for i, c in enumerate(classes):
            rows_of.setdefault(c, []).append(i)
        # Distances to the growing set as it was, and between the chunk's rows of one class.
        to_set: dict[int, np.ndarray] = {}
        within: dict[int, np.ndarray] = {}
        position: dict[int, int] = {}
        for c, rows in rows_of.items():
            part = flat[rows]
            old = client.sets.get(c)
            if old is not None:
                old = old.to(flat.device)
                to_set[c] = _cdist(part, old).amin(dim=1).cpu().double().numpy()
            within[c] = _cdist(part, part).cpu().double().numpy()
            position.update({i: k for k, i in enumerate(rows)})
        joined: dict[int, list[int]] = {c: [] for c in rows_of}  # positions within the class's rows
        alarms: list[Alarm] = []
        for i, c in enumerate(classes):
            k = position[i]
            client.queries += 1
            candidates: list[float] = []
            if c in to_set:
                candidates.append(float(to_set[c][k]))
            if joined[c]:
                candidates.append(float(within[c][k, joined[c]].min()))
            if not candidates:  # the first query of this class starts its growing set
                joined[c].append(k)
                client.set_distances[c] = _Series([0.0])
                client.thresholds[c] = 0.0
            else:
                d_min = min(candidates)
                client.distances.append(d_min)
                if d_min > client.thresholds[c]:
                    joined[c].append(k)
                    dg = client.set_distances[c]
                    dg.append(d_min)
                    client.thresholds[c] = max(
                        client.thresholds[c], float(np.mean(dg.values) - np.std(dg.values))
                    )
            alarm = self._test(client_id, client)
            if alarm is not None:
                alarms.append(alarm)
        for c, ks in joined.items():
            if ks:
                new = flat[[rows_of[c][k] for k in ks]]
                old = client.sets.get(c)
                client.sets[c] = new.clone() if old is None else torch.cat([old.to(new.device), new])
        return alarms

    def _test(self, client_id: str, client: _Client) -> Alarm | None:
        n = len(client.distances)
        if n < self.min_samples:
            return None
        with warnings.catch_warnings():  # range zero, or N > 5000 (the p-value, unused, is approximate)
            warnings.simplefilter("ignore", UserWarning)
            w = float(stats.shapiro(client.distances.values).statistic)
        if math.isnan(w):
            w = 1.0
        client.statistic = w
        if w >= self.delta:
            return None
        client.alarms += 1
        if client.first_alarm is None:
            client.first_alarm = client.queries
        return Alarm(client_id, client.queries, w, n, self.delta)

    # -- inspection ------------------------------------------------------------------------------------

    @property
    def clients(self) -> list[str]:
        return sorted(self._clients)

    def stats(self, client_id: str) -> dict[str, Any]:
        """JSON-ready figures of one client: queries, distances, growing-set sizes, last W, alarms."""
        client = self._client(client_id)
        return {
            "client_id": client_id,
            "queries": client.queries,
            "num_distances": len(client.distances),
            "growing_set_sizes": {str(c): len(g) for c, g in sorted(client.sets.items())},
            "statistic": client.statistic,
            "alarms": client.alarms,
            "first_alarm": client.first_alarm,
            "delta": self.delta,
        }

    def alarmed(self, client_id: str) -> bool:
        return client_id in self._clients and self._clients[client_id].alarms > 0

    def reset(self, client_id: str) -> None:
        """Forget one client (e.g. after review)."""
        self._clients.pop(client_id, None)

    def _client(self, client_id: str) -> _Client:
        if client_id not in self._clients:
            raise invalid(
                "client_id", client_id, f"a client PRADA has seen ({', '.join(self.clients) or 'none'})"
            )
        return self._clients[client_id]

    # -- state -----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """`{"meta": JSON-able dict, "tensors": {name: CPU tensor}}`: every client's stream state."""
        clients: list[dict[str, Any]] = []
        tensors: dict[str, Tensor] = {}
        for i, (cid, client) in enumerate(sorted(self._clients.items())):
            classes: dict[str, Any] = {}
            for c in sorted(client.sets):
                name = f"client{i}.class{c}"
                tensors[name] = client.sets[c].detach().cpu().contiguous()
                classes[str(c)] = {
                    "tensor": name,
                    "threshold": client.thresholds[c],
                    "set_distances": client.set_distances[c].values.tolist(),
                }
            clients.append(
                {
                    "id": cid,
                    "queries": client.queries,
                    "distances": client.distances.values.tolist(),
                    "statistic": client.statistic,
                    "alarms": client.alarms,
                    "first_alarm": client.first_alarm,
                    "classes": classes,
                }
            )
        meta = {"version": _VERSION, "params": self.get_params(), "clients": clients}
        return {"meta": meta, "tensors": tensors}

    def load_state_dict(self, state: Mapping[str, Any], *, device: str | torch.device | None = None) -> None:
        """Replace every client's state with `state` (from `state_dict`); growing sets go to `device`
        (default CPU; they move to the queries' device on the next query). Parameters stay this object's."""
        try:
            meta, tensors = state["meta"], state["tensors"]
            if meta["version"] != _VERSION:
                raise invalid("state", meta["version"], f"PRADA state version {_VERSION}")
            restored: dict[str, _Client] = {}
            for rec in meta["clients"]:
                client = _Client(
                    queries=int(rec["queries"]),
                    distances=_Series(float(d) for d in rec["distances"]),
                    statistic=None if rec["statistic"] is None else float(rec["statistic"]),
                    alarms=int(rec["alarms"]),
                    first_alarm=None if rec["first_alarm"] is None else int(rec["first_alarm"]),
                )
                for c_text, cls_rec in rec["classes"].items():
                    c = int(c_text)
                    client.sets[c] = tensors[cls_rec["tensor"]].to(device or "cpu", torch.float32)
                    client.thresholds[c] = float(cls_rec["threshold"])
                    client.set_distances[c] = _Series(float(d) for d in cls_rec["set_distances"])
                restored[str(rec["id"])] = client
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, RampartsError):
                raise
            raise invalid(
                "state", type(exc).__name__, "a dict from Prada.state_dict()", f"missing or bad {exc}."
            ) from None
        self._clients = restored

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the state to one safetensors file (growing sets as tensors, the rest as JSON metadata)."""
        state = self.state_dict()
        save_file(state["tensors"], os.fspath(path), metadata={_META_KEY: json.dumps(state["meta"])})

    def load(self, path: str | os.PathLike[str], *, device: str | torch.device | None = None) -> Prada:
        """Restore the state written by `save` (safetensors, never pickle); returns self."""
        with safe_open(os.fspath(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if _META_KEY not in metadata:
                raise invalid("path", os.fspath(path), "a file written by Prada.save", "check the path.")
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        self.load_state_dict({"meta": json.loads(metadata[_META_KEY]), "tensors": tensors}, device=device)
        return self


def _cdist(a: Tensor, b: Tensor) -> Tensor:
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


class GuardedOracle(Oracle):
    """An oracle whose every query (labels, scores or gradients) is fed to PRADA as `client_id`.

    The class PRADA records is the answer's argmax. Alarms are kept in `alarms` (a history that
    `prada.reset(client_id)` does not clear; `alarmed` follows PRADA's state). With `block=True`,
    the query that raises the alarm and every later one are refused with `ExtractionBlocked` (the
    answer is computed, recorded, and withheld).
    """

    def __init__(self, oracle: Oracle, prada: Prada, client_id: str, *, block: bool = False) -> None:
        if not isinstance(oracle, Oracle):
            raise invalid("oracle", oracle, "a ramparts Oracle", cls=RampartsTypeError)
        if not isinstance(prada, Prada):
            raise invalid("prada", prada, "a Prada detector", cls=RampartsTypeError)
        if not isinstance(client_id, str) or not client_id:
            raise invalid("client_id", client_id, "a non-empty string", cls=RampartsTypeError)
        self.oracle = oracle
        self.prada = prada
        self.client_id = client_id
        self.block = bool(block)
        self.knowledge = oracle.knowledge
        self.num_classes = oracle.num_classes
        self.device = oracle.device
        self.input_shape = oracle.input_shape
        self.alarms: list[Alarm] = []

    @property
    def alarmed(self) -> bool:
        """Whether PRADA holds an alarm for this client (until `prada.reset(client_id)`)."""
        return self.prada.alarmed(self.client_id)

    def _refuse_if_blocked(self) -> None:
        if self.block and self.alarmed:
            first = self.prada.stats(self.client_id)["first_alarm"]
            raise ExtractionBlocked(
                f"client {self.client_id!r}: blocked after PRADA's extraction alarm at query {first} "
                f"(Shapiro-Wilk W below delta={self.prada.delta}). Fix: review the client, then "
                f"prada.reset({self.client_id!r}) to unblock."
            )

    def _record(self, x: Tensor, labels: Tensor) -> None:
        self._refuse_if_blocked()
        self.alarms += self.prada.observe(self.client_id, x.detach(), labels.detach())
        self._refuse_if_blocked()

    def logits(self, x: Tensor) -> Tensor:
        self._refuse_if_blocked()
        out = self.oracle.logits(x)
        self._record(x, out.detach().argmax(dim=1))
        return out

    def log_probs(self, x: Tensor) -> Tensor:
        self._refuse_if_blocked()
        out = self.oracle.log_probs(x)
        self._record(x, out.argmax(dim=1))
        return out

    def labels(self, x: Tensor) -> Tensor:
        self._refuse_if_blocked()
        out = self.oracle.labels(x)
        self._record(x, out)
        return out

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        with self.oracle.evaluating():
            yield

    def __repr__(self) -> str:
        return f"GuardedOracle({self.oracle!r}, client_id={self.client_id!r}, block={self.block})"


__all__ = ["Alarm", "ExtractionBlocked", "GuardedOracle", "Prada"]
