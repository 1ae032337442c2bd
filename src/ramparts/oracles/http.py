"""A remote JSON prediction API as a score or label oracle.

The request is `POST <url>` with the body `{"<input_field>": rows}` (rows nested NCHW lists, or flat
rows), at most `batch_size` rows per request. The answer is a JSON object holding, at `output_field`
(a dotted path such as `"result.scores"`, or `""` for the body itself), one row per input:
probabilities, logits or labels. Requests that meet a 429, a 5xx, a timeout or a lost connection are
retried with exponential backoff (jitter from a seeded RNG), honouring `Retry-After`; anything that is
not a prediction raises `OracleResponseError` naming the problem. Header values, and the URL's user
info and query, are never logged nor shown in messages (they may be credentials); header values and
the URL may reference environment variables, `"Bearer ${API_TOKEN}"`, so that secrets stay out of
configuration files.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import logging
import math
import os
import random
import re
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import torch
from torch import Tensor

from ramparts.errors import AccessError, RampartsError, RampartsTypeError, invalid, unknown
from ramparts.oracles.base import Knowledge, Oracle, log_probabilities

logger = logging.getLogger(__name__)

InputLayout = Literal["nested", "flat"]
OutputKind = Literal["probabilities", "logits", "labels"]
INPUT_LAYOUTS: tuple[str, ...] = ("nested", "flat")
OUTPUT_KINDS: tuple[str, ...] = ("probabilities", "logits", "labels")
DEFAULT_OUTPUT_FIELDS: dict[str, str] = {"probabilities": "scores", "logits": "logits", "labels": "labels"}

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PROBABILITY_TOLERANCE = 1e-3  # rows must sum to 1 within this (JSON floats and float32 servers)


class OracleResponseError(RampartsError, RuntimeError):
    """The server answered with something that is not a prediction, or refused the request."""


class OracleUnavailableError(OracleResponseError):
    """The server could not be reached or kept failing (429, 5xx, timeouts) after every retry."""


@dataclass(frozen=True, repr=False)
class HttpConfig:
    """Where and how to query a remote prediction API; validated on construction.

    `output_field=None` means the usual name for `output_kind` (`DEFAULT_OUTPUT_FIELDS`).
    `backoff_s` is the first retry's wait, doubled at each retry, times a jitter in [0.5, 1);
    a `Retry-After` answer replaces it; every wait is capped at `max_wait_s`.
    """

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    input_field: str = "inputs"
    input_layout: InputLayout = "nested"
    output_field: str | None = None
    output_kind: OutputKind = "probabilities"
    batch_size: int = 256
    timeout_s: float = 30.0
    max_retries: int = 3
    backoff_s: float = 0.5
    max_wait_s: float = 60.0
    num_classes: int | None = None
    input_shape: tuple[int, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or urlsplit(self.url).scheme not in ("http", "https"):
            raise invalid("url", self.url, "an http:// or https:// address", "e.g. https://host/predict.")
        if not urlsplit(self.url).hostname:
            raise invalid("url", self.url, "an address with a host name", "e.g. https://host/predict.")
        if not isinstance(self.headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.headers.items()
        ):
            shown = list(self.headers) if isinstance(self.headers, Mapping) else type(self.headers).__name__
            raise invalid("headers", shown, "an object of string names to string values")
        object.__setattr__(self, "headers", dict(self.headers))
        if not isinstance(self.input_field, str) or not self.input_field:
            raise invalid("input_field", self.input_field, "a non-empty JSON key", "e.g. 'inputs'.")
        if self.input_layout not in INPUT_LAYOUTS:
            raise unknown("input_layout", self.input_layout, INPUT_LAYOUTS)
        if self.output_kind not in OUTPUT_KINDS:
            raise unknown("output_kind", self.output_kind, OUTPUT_KINDS)
        if self.output_field is None:
            object.__setattr__(self, "output_field", DEFAULT_OUTPUT_FIELDS[self.output_kind])
        elif not isinstance(self.output_field, str):
            raise invalid("output_field", self.output_field, "a JSON key or dotted path ('' for the body)")
        _check_int("batch_size", self.batch_size, 1)
        _check_int("max_retries", self.max_retries, 0)
        _check_int("seed", self.seed, 0)
        _check_number("timeout_s", self.timeout_s, positive=True)
        _check_number("backoff_s", self.backoff_s, positive=False)
        _check_number("max_wait_s", self.max_wait_s, positive=False)
        if self.num_classes is not None:
            _check_int("num_classes", self.num_classes, 2)
        if self.input_shape is not None:
            shape = self.input_shape
            if (
                isinstance(shape, str | bytes)
                or not isinstance(shape, Sequence)
                or not shape
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
            ):
                raise invalid("input_shape", shape, "a list of positive integers", "e.g. [1, 28, 28].")
            object.__setattr__(self, "input_shape", tuple(shape))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **overrides: Any) -> HttpConfig:
        """A config from a JSON-like mapping; `overrides` that are not None replace its keys."""
        if not isinstance(data, Mapping):
            raise invalid("config", type(data).__name__, "a JSON object", cls=RampartsTypeError)
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                raise unknown("config key", key, names)
        merged = {**data, **{k: v for k, v in overrides.items() if v is not None}}
        if "url" not in merged:
            raise invalid("url", None, "the API's address", 'add "url": "https://host/predict".')
        return cls(**merged)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str], **overrides: Any) -> HttpConfig:
        """Read a config from a small JSON file (keys as the fields); `overrides` replace its keys."""
        file = Path(path)
        if not file.is_file():
            raise invalid("config_path", str(path), "an existing JSON file", "check the path.")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise invalid("config_path", str(path), "a JSON file", f"fix the file ({exc}).") from None
        try:
            return cls.from_dict(data, **overrides)
        except RampartsError as exc:
            raise type(exc)(f"{exc} (in {file})") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description for reports: header names only, the URL without user info or query."""
        out = dataclasses.asdict(self)
        out["url"] = _shown_url(self.url)
        out["headers"] = sorted(self.headers)
        out["input_shape"] = list(self.input_shape) if self.input_shape is not None else None
        return out

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"HttpConfig({items})"


class HttpOracle(Oracle):
    """A remote classifier reached over HTTP (one persistent `httpx.Client`); knowledge from `output_kind`.

    `num_classes` comes from the config; without it, one probe request (a zero image) reads it, which
    needs `input_shape` and a score endpoint. Counters for reports: `requests` (HTTP requests sent,
    retries included), `retries`, `rows_sent` and `waited_s` (seconds slept before retries).
    Close it with `close()` or use it as a context manager.
    """

    def __init__(self, config: HttpConfig, *, device: str | torch.device = "cpu") -> None:
        if not isinstance(config, HttpConfig):
            raise invalid("config", type(config).__name__, "an HttpConfig", cls=RampartsTypeError)
        self.config = config
        self.device = torch.device(device)
        self.input_shape = config.input_shape
        self.knowledge = Knowledge.LABEL if config.output_kind == "labels" else Knowledge.SCORE
        self._path = [p for p in (config.output_field or "").split(".") if p]
        self._url = _expand("url", config.url)  # the address with secrets; only httpx sees it
        self.url = _shown_url(config.url)  # for messages, logs and reports
        self._rng = random.Random(config.seed)
        self.requests = 0
        self.retries = 0
        self.rows_sent = 0
        self.waited_s = 0.0
        self._client = httpx.Client(
            headers={"Accept": "application/json", **_resolve_headers(config.headers)},
            timeout=httpx.Timeout(config.timeout_s),
            follow_redirects=False,
        )
        self._finalizer = weakref.finalize(self, self._client.close)
        self.num_classes = config.num_classes if config.num_classes is not None else self._probe_classes()

    def _probe_classes(self) -> int:
        where = "in the HTTP config file (config_path / the JSON given with the URL)"
        if self.knowledge < Knowledge.SCORE:
            raise invalid(
                "num_classes",
                None,
                "the number of classes (a label-only endpoint cannot tell it)",
                f"set num_classes {where}.",
            )
        if self.input_shape is None:
            raise invalid(
                "num_classes",
                None,
                "an integer, or input_shape so that one probe request can read it",
                f'set num_classes and input_shape {where}, e.g. "num_classes": 10, "input_shape": [1, 28, 28].',
            )
        classes = int(self._query(torch.zeros(1, *self.input_shape), None).shape[1])
        if classes < 2:
            raise self._bad("num_classes", f"at least 2 classes per row, got {classes}")
        return classes

    # -- public API -------------------------------------------------------------------------------

    @torch.no_grad()
    def log_probs(self, x: Tensor) -> Tensor:
        if self.knowledge < Knowledge.SCORE:
            raise AccessError(
                "output_kind: this HTTP oracle answers labels only. "
                "Fix: point it at an endpoint that returns scores and set output_kind accordingly."
            )
        out = self._scores(x)
        lp = log_probabilities(out) if self.config.output_kind == "probabilities" else out.log_softmax(dim=1)
        return lp.to(self.device)

    @torch.no_grad()
    def labels(self, x: Tensor) -> Tensor:
        if self.knowledge < Knowledge.SCORE:
            return self._scores(x).long().to(self.device)
        return self._scores(x).argmax(dim=1).to(self.device)

    def stats(self) -> dict[str, Any]:
        """The counters, JSON-ready."""
        return {
            "requests": self.requests,
            "retries": self.retries,
            "rows_sent": self.rows_sent,
            "waited_s": self.waited_s,
        }

    def close(self) -> None:
        """Close the HTTP connections (also done when the oracle is garbage-collected)."""
        self._finalizer()

    def __enter__(self) -> HttpOracle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        c = self.config
        return (
            f"HttpOracle(url={self.url!r}, output_kind={c.output_kind!r}, num_classes={self.num_classes}, "
            f"batch_size={c.batch_size}, knowledge={self.knowledge.name})"
        )

    # -- requests ---------------------------------------------------------------------------------

    def _scores(self, x: Tensor) -> Tensor:
        """Probabilities/logits (N, K) or labels (N,) for `x`, on the CPU as float32 / int64."""
        self._check(x)
        if len(x) == 0:
            kind = self.config.output_kind
            return torch.empty(0, dtype=torch.int64) if kind == "labels" else torch.empty(0, self.num_classes)
        parts = [self._query(chunk, self.num_classes) for chunk in x.detach().split(self.config.batch_size)]
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise invalid("x", type(x).__name__, "a floating-point torch.Tensor")
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise invalid(
                "x",
                f"a batch of shape {tuple(x.shape)}",
                f"inputs of shape (N, {', '.join(map(str, self.input_shape))}) (the config's input_shape)",
                "pass images of the shape the API expects, or fix input_shape in the config.",
            )
        if not bool(torch.isfinite(x).all()):
            raise invalid("x", "non-finite values", "finite inputs (JSON cannot carry NaN or infinity)")

    def _query(self, x: Tensor, num_classes: int | None) -> Tensor:
        """One batch (at most `batch_size` rows): request with retries, then the parsed prediction."""
        rows = x.cpu().flatten(1) if self.config.input_layout == "flat" else x.cpu()
        body = json.dumps({self.config.input_field: rows.tolist()}).encode()
        response = self._post(body)
        self.rows_sent += len(x)
        return self._parse(response, len(x), num_classes)

    def _post(self, body: bytes) -> httpx.Response:
        c = self.config
        attempt = 0
        while True:
            self.requests += 1
            retry_after: float | None = None
            try:
                response = self._client.post(
                    self._url, content=body, headers={"Content-Type": "application/json"}
                )
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                problem = type(exc).__name__
                if isinstance(exc, httpx.TimeoutException):
                    problem += f" (timeout_s={c.timeout_s:g})"
                elif str(exc):
                    problem += f" ({_excerpt(str(exc))})"
            else:
                status = response.status_code
                if status != 429 and status < 500:
                    if status >= 300:
                        raise self._refused(response)
                    return response
                problem = f"HTTP {status} {response.reason_phrase}"
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            if attempt >= c.max_retries:
                raise OracleUnavailableError(
                    f"url: {self.url} failed {attempt + 1} time(s), last with {problem}. Fix: check that the "
                    f"server is up, or raise max_retries / timeout_s / backoff_s in the HTTP config."
                )
            wait = retry_after if retry_after is not None else c.backoff_s * 2**attempt * self._jitter()
            wait = min(wait, c.max_wait_s)
            logger.info("%s: %s; retry %d/%d in %.2f s", self.url, problem, attempt + 1, c.max_retries, wait)
            self.retries += 1
            self.waited_s += wait
            time.sleep(wait)
            attempt += 1

    def _jitter(self) -> float:
        return 0.5 + 0.5 * self._rng.random()

    def _refused(self, response: httpx.Response) -> OracleResponseError:
        """The error for a 3xx/4xx answer (not retried): what the server said and what to change."""
        c = self.config
        status = response.status_code
        sent = sorted(c.headers) or ["none"]
        fixes = {
            401: "set the credentials in the config's headers, e.g. "
            '"headers": {"Authorization": "Bearer ${API_TOKEN}"}, and export API_TOKEN '
            f"(headers sent: {', '.join(sent)}).",
            403: "check the credentials in the config's headers and their permissions "
            f"(headers sent: {', '.join(sent)}).",
            404: "check url: it must be the prediction endpoint itself (e.g. https://host/predict).",
            405: "check url: the endpoint must accept POST.",
            413: "lower batch_size in the HTTP config.",
            400: f'check input_field ("{c.input_field}") and input_layout ("{c.input_layout}").',
            422: f'check input_field ("{c.input_field}") and input_layout ("{c.input_layout}").',
        }
        if 300 <= status < 400:
            fix = f"use the address it redirects to: {response.headers.get('Location', '(no Location)')}."
        else:
            fix = fixes.get(status, "check the server's documentation for this status.")
        return OracleResponseError(
            f"url: the server answered HTTP {status} {response.reason_phrase}: "
            f"{_excerpt(response.text) if response.text.strip() else '(empty body)'}. Fix: {fix}"
        )

    # -- answers ----------------------------------------------------------------------------------

    def _parse(self, response: httpx.Response, rows: int, num_classes: int | None) -> Tensor:
        c = self.config
        name = c.output_field or "(response body)"
        try:
            value: Any = json.loads(response.content)
        except (json.JSONDecodeError, UnicodeDecodeError):
            kind = response.headers.get("Content-Type", "no Content-Type")
            raise self._bad(
                "response",
                f"JSON with the field {name!r}, got {kind}: {_excerpt(response.text)}",
                "check url: it must be the prediction endpoint.",
            ) from None
        for depth, key in enumerate(self._path):
            if not isinstance(value, dict) or key not in value:
                where = ".".join(self._path[:depth]) or "the response"
                keys = sorted(value) if isinstance(value, dict) else type(value).__name__
                raise self._bad(
                    "output_field",
                    f"a field {key!r} in {where}, found {keys}: {_excerpt(response.text)}",
                    "set output_field to the key that holds the predictions.",
                )
            value = value[key]
        try:
            t = torch.tensor(value, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise self._bad(
                "output_field",
                f"{name!r} to hold a list of numbers per row, got {_excerpt(json.dumps(value))}",
                "set output_field to the key that holds the predictions.",
            ) from None
        if c.output_kind == "labels":
            return self._labels(t, rows, num_classes, name)
        return self._score_rows(t, rows, num_classes, name)

    def _score_rows(self, t: Tensor, rows: int, num_classes: int | None, name: str) -> Tensor:
        kind = self.config.output_kind
        if t.dim() != 2 or len(t) != rows:
            raise self._bad(
                "output_field",
                f"{name!r} to hold {rows} rows of {kind} (one per input), got shape {tuple(t.shape)}",
                "make the server return one row per input row.",
            )
        if num_classes is not None and t.shape[1] != num_classes:
            raise self._bad(
                "num_classes",
                f"{num_classes} {kind} per row in {name!r}, got {t.shape[1]}",
                "set num_classes to the number of classes the API returns.",
            )
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise self._bad("output_field", f"finite {kind} in {name!r}, got {bad} NaN or infinite value(s)")
        if kind == "probabilities":
            worst = float((t.sum(1) - 1).abs().max()) if t.numel() else 0.0
            if bool((t < -_PROBABILITY_TOLERANCE).any()) or worst > _PROBABILITY_TOLERANCE:
                raise self._bad(
                    "output_kind",
                    f"probabilities in {name!r} (non-negative, rows summing to 1), "
                    f"got rows off by up to {worst:.3g}",
                    "if the API returns logits, set output_kind to 'logits'.",
                )
        return t.float()

    def _labels(self, t: Tensor, rows: int, num_classes: int | None, name: str) -> Tensor:
        if t.dim() == 2 and t.shape[1] == 1:
            t = t[:, 0]
        if t.dim() != 1 or len(t) != rows:
            raise self._bad(
                "output_field",
                f"{name!r} to hold {rows} labels (one per input), got shape {tuple(t.shape)}",
                "make the server return one label per input row.",
            )
        if not bool(torch.isfinite(t).all()) or not bool((t == t.round()).all()):
            raise self._bad(
                "output_field", f"integer class labels in {name!r}, got {_excerpt(str(t.tolist()))}"
            )
        k = num_classes if num_classes is not None else self.num_classes
        if bool(((t < 0) | (t >= k)).any()):
            found = [int(v) for v in t[(t < 0) | (t >= k)][:5]]
            raise self._bad(
                "num_classes",
                f"labels in 0..{k - 1} in {name!r}, got {found}",
                "set num_classes to the number of classes the API predicts.",
            )
        return t.long()

    def _bad(self, param: str, expected: str, fix: str | None = None) -> OracleResponseError:
        msg = f"{param}: {self.url} did not answer with a prediction: expected {expected}."
        return OracleResponseError(msg + (f" Fix: {fix}" if fix else ""))


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delay-seconds or an HTTP date); None if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _resolve_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Header values with `${VAR}` references expanded from the environment."""
    return {name: _expand(f"headers[{name!r}]", template) for name, template in headers.items()}


def _expand(param: str, template: str) -> str:
    """Expand `${VAR}` references from the environment; the error names the variable, never a value."""

    def env(match: re.Match[str]) -> str:
        var = match.group(1)
        if var not in os.environ:
            raise invalid(
                param,
                f"a reference to ${{{var}}}",
                f"the environment variable {var} to be set",
                f"export {var}=... before running.",
            )
        return os.environ[var]

    return _ENV_REF.sub(env, template)


def _shown_url(url: str) -> str:
    """The address without user info or query (either may hold a secret), for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}" + ("?..." if parts.query else "")


def _check_int(param: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise invalid(param, value, f"an integer >= {minimum}")


def _check_number(param: str, value: Any, *, positive: bool) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise invalid(param, value, "a number of seconds " + ("> 0" if positive else ">= 0"))


def _excerpt(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 3] + "...")
