"""The gateway's work for one request, independent of HTTP: keys, limits, model, PRADA, output mode, the log.

Order of one predict request (the durability contract): the key's state, budget and rate are checked, the
model answers (detectors per policy), then under ONE lock and ONE SQLite transaction: the key's row is read
again, PRADA observes the rows (predicted class = argmax of the model's own answer), the output mode is
applied, the log row, the PRADA stream rows and the key's `used` are written, a block alarm blocks the key,
and the transaction commits before the answer leaves. PRADA state is rebuilt at start by replaying each key's
stream in commit order; if a transaction fails after PRADA observed, that key is replayed from the database
again, so memory never runs ahead of the disk.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ramparts.defenses.prada import Alarm, Prada
from ramparts.errors import RampartsError
from ramparts.gateway.config import GatewayConfig
from ramparts.gateway.errors import ApiError, invalid_input
from ramparts.gateway.keys import KeyRecord
from ramparts.gateway.limits import RateLimiter, retry_after_header
from ramparts.gateway.metrics import Metrics
from ramparts.gateway.model import Answer, ServedModel
from ramparts.gateway.outputs import OutputModes
from ramparts.gateway.store import LogEntry, Store

logger = logging.getLogger(__name__)

REPLAY_CHUNK = 4096


@dataclass(frozen=True)
class KeySettings:
    """A key's effective settings: its own values, or the server's [defaults] where it has none."""

    output: str
    rate_per_s: float
    burst: int
    budget: int


class Gateway:
    """Everything one server holds: config, model, database, limits, PRADA and metrics."""

    def __init__(self, config: GatewayConfig, *, model: ServedModel | None = None) -> None:
        self.config = config
        self.model = model or ServedModel.load(config)
        try:
            self.outputs = OutputModes(self.model.num_classes, self.model.input_shape)
            self.outputs.check(config.defaults.output)
        except RampartsError as exc:
            raise config.error(
                "defaults.output", config.defaults.output, "an output mode this model serves", str(exc)
            ) from None
        try:
            self.store = Store(config.db)
        except (RampartsError, OSError) as exc:
            raise config.error("db", config.db, "a writable SQLite file", str(exc)) from None
        self.limiter = RateLimiter()
        self.prada = (
            Prada(delta=config.prada.delta, min_samples=config.prada.min_samples)
            if config.prada.enabled
            else None
        )
        self._epochs: dict[int, int] = {}
        self.metrics = Metrics(self.store.blocked_count)
        self.restore()

    # -- start and stop ---------------------------------------------------------------------------------

    def restore(self) -> None:
        """Rebuild every key's PRADA state from its stream in the database (commit order)."""
        if self.prada is None:
            return
        t0, rows = time.perf_counter(), 0
        keys = self.store.keys()
        for key in keys:
            rows += self._replay(key.id, key.prada_epoch)
        logger.info(
            "PRADA state of %d key(s) rebuilt from %d stored queries in %.2f s",
            len(keys),
            rows,
            time.perf_counter() - t0,
        )

    def _replay(self, key_id: int, epoch: int) -> int:
        assert self.prada is not None
        client = str(key_id)
        self.prada.reset(client)
        self._epochs[key_id] = epoch
        pending_x: list[np.ndarray] = []
        pending_y: list[np.ndarray] = []
        count = total = 0
        for x, labels in self.store.stream(key_id, epoch):
            pending_x.append(x)
            pending_y.append(labels)
            count += len(x)
            if count >= REPLAY_CHUNK:
                self._observe_arrays(client, pending_x, pending_y)
                total, count, pending_x, pending_y = total + count, 0, [], []
        if pending_x:
            self._observe_arrays(client, pending_x, pending_y)
        return total + count

    def _observe_arrays(self, client: str, xs: list[np.ndarray], ys: list[np.ndarray]) -> None:
        assert self.prada is not None
        self.prada.observe(client, torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)))

    def close(self) -> None:
        self.store.close()

    # -- keys ---------------------------------------------------------------------------------------------

    def settings(self, key: KeyRecord) -> KeySettings:
        d = self.config.defaults
        return KeySettings(
            output=key.output if key.output is not None else d.output,
            rate_per_s=key.rate_per_s if key.rate_per_s is not None else d.rate_per_s,
            burst=key.burst if key.burst is not None else d.burst,
            budget=key.budget if key.budget is not None else d.budget,
        )

    def authenticate(self, token: str | None) -> KeyRecord:
        """The key of `token` if it may send a request now; else `ApiError` 401, 403 or 429."""
        if not token:
            raise ApiError(
                401,
                "missing_key",
                "no API key: send `Authorization: Bearer <token>` or `X-API-Key: <token>`",
                "Authorization",
            )
        key = self.store.key_by_token(token)
        if key is None:
            raise ApiError(401, "unknown_key", "the API key is not known to this gateway", "Authorization")
        self._check_state(key)
        settings = self.settings(key)
        if settings.budget and key.used >= settings.budget:
            raise self._budget_error(key, settings.budget, 0)
        wait = self.limiter.take(key.id, settings.rate_per_s, settings.burst)
        if wait > 0:
            raise ApiError(
                429,
                "rate_limited",
                f"rate limit of {settings.rate_per_s:g} requests/s (burst {settings.burst}) reached; "
                f"retry in {wait:.2f} s",
                headers={"Retry-After": retry_after_header(wait)},
                key_id=key.id,
            )
        return key

    def _check_state(self, key: KeyRecord) -> None:
        if key.state == "revoked":
            raise ApiError(403, "key_revoked", f"key {key.name!r} was revoked", key_id=key.id)
        if key.state == "blocked":
            raise ApiError(
                403,
                "key_blocked",
                f"key {key.name!r} is blocked ({key.reason or 'no reason recorded'}); "
                "an operator can run `ramparts gateway keys unblock`",
                key_id=key.id,
            )

    def _budget_error(self, key: KeyRecord, budget: int, rows: int) -> ApiError:
        message = f"key {key.name!r} has used {key.used} of its budget of {budget} rows"
        if rows:
            message += f"; this request has {rows} more"
        return ApiError(403, "budget_exhausted", message, key_id=key.id)

    # -- predict --------------------------------------------------------------------------------------

    def predict(
        self, key: KeyRecord, x: Tensor, *, request_id: str, nbytes: int, started: float
    ) -> dict[str, Any]:
        """Answer one validated batch for `key` (see the module docstring for the order of work)."""
        settings = self.settings(key)
        n = len(x)
        if settings.budget and key.used + n > settings.budget:
            raise self._budget_error(key, settings.budget, n)
        answer = self.model.answer(x)
        model_labels = answer.probs.argmax(dim=1)
        flat = x.reshape(n, -1).numpy()
        hashes = [hashlib.sha256(row.tobytes()).hexdigest() for row in flat.astype("<f4")]
        client = str(key.id)
        observed_epoch: int | None = None
        try:
            with self.store.transaction() as tx:
                row = tx.key(key.id)
                self._check_state(row)
                if settings.budget and row.used + n > settings.budget:
                    raise self._budget_error(row, settings.budget, n)
                alarms: list[Alarm] = []
                if self.prada is not None:
                    if self._epochs.get(row.id) != row.prada_epoch:
                        self.prada.reset(client)
                        self._epochs[row.id] = row.prada_epoch
                    observed_epoch = row.prada_epoch
                    alarms = self.prada.observe(client, x, model_labels)
                result, entry, block = self._result(row, settings, answer, model_labels, alarms, request_id)
                entry = replace(
                    entry,
                    body_bytes=nbytes,
                    input_sha256=hashes,
                    inputs=flat.astype("<f4").tobytes() if self.config.log_inputs else None,
                    latency_ms=(time.perf_counter() - started) * 1000.0,
                )
                log_id = tx.insert_log(entry)
                if self.prada is not None:
                    tx.append_stream(row.id, row.prada_epoch, log_id, flat, model_labels.numpy())
                    tx.set_prada_stats(row.id, {**self.prada.stats(client), "client_id": row.name})
                tx.add_used(row.id, n)
                if block:
                    tx.block(row.id, block)
        except BaseException:
            if observed_epoch is not None:
                self._replay(key.id, observed_epoch)
            raise
        seconds = time.perf_counter() - started
        if alarms:
            self.metrics.alarms.inc()
        if block:
            self.metrics.request("/v1/predict", 403, "blocked", n, seconds)
            logger.warning("key %s blocked: %s", key.name, block)
            raise ApiError(
                403, "key_blocked", f"key {key.name!r} is blocked: {block}", key_id=key.id, logged=True
            )
        self.metrics.request("/v1/predict", 200, result["decision"], n, seconds)
        return result

    def _result(
        self,
        key: KeyRecord,
        settings: KeySettings,
        answer: Answer,
        model_labels: Tensor,
        alarms: list[Alarm],
        request_id: str,
    ) -> tuple[dict[str, Any], LogEntry, str | None]:
        """The response body, the log row (without sizes) and the block reason (None: not blocked)."""
        policy = self.model.policy
        client = str(key.id)
        alarmed = self.prada is not None and self.prada.alarmed(client)
        on_alarm = self.config.prada.on_alarm
        output = "labels" if alarmed and on_alarm == "labels" else settings.output
        block = None
        if alarmed and on_alarm == "block":
            stats = self.prada.stats(client) if self.prada is not None else {}
            block = (
                f"PRADA extraction alarm at query {stats.get('first_alarm')} "
                f"(W={stats.get('statistic') or 0.0:.4f} < delta={self.config.prada.delta})"
            )
        try:
            scores = self.outputs.apply(key.id, output, answer.probs)
        except RampartsError as exc:
            raise ApiError(
                403,
                "key_misconfigured",
                f"key {key.name!r} has an output mode this model cannot serve ({exc}); an operator must "
                "revoke it and add a key with a valid --output",
                key_id=key.id,
            ) from None
        labels = model_labels.tolist()
        score_rows: list[list[float] | None] | None = None if scores is None else scores.tolist()
        flagged = answer.flagged.tolist() if answer.flagged is not None else None
        if policy == "reject" and flagged is not None:
            for i, bad in enumerate(flagged):
                if bad:
                    labels[i] = -1
                    if score_rows is not None:
                        score_rows[i] = None
        alarm = None
        if alarms:
            alarm = {"statistic": alarms[-1].statistic, "delta": alarms[-1].delta}
        decision = "ok"
        if block:
            decision = "blocked"
        elif alarm is not None:
            decision = "alert"
        elif flagged is not None and any(flagged):
            decision = {"reject": "rejected_rows", "reform": "reformed"}.get(policy, "flagged")
        flags = None
        det_scores = None
        if flagged is not None and answer.scores is not None:
            det_scores = [float(s) for s in answer.scores.tolist()]
            flags = [{"adversarial": bool(f), "score": s} for f, s in zip(flagged, det_scores, strict=True)]
        result = {
            "request_id": request_id,
            "labels": labels,
            "scores": score_rows,
            "output": output,
            "decision": decision,
            "flags": flags,
            "alarm": alarm,
        }
        entry = LogEntry(
            request_id=request_id,
            route="/v1/predict",
            status=403 if block else 200,
            key_id=key.id,
            code="key_blocked" if block else None,
            rows=len(labels),
            decision=decision,
            detector_scores=det_scores,
            alarm=None if not alarms else {**alarms[-1].summary(), "client_id": key.name},
            output=output,
        )
        return result, entry, block

    # -- encrypted predict ----------------------------------------------------------------------------------

    def encrypted_predict(
        self,
        key: KeyRecord,
        public_context_b64: str,
        inputs_b64: str,
        *,
        request_id: str,
        nbytes: int,
        started: float,
    ) -> dict[str, Any]:
        """Evaluate the model on CKKS ciphertexts: the server sees neither plaintext nor secret key.

        PRADA cannot see encrypted queries and output modes cannot apply to ciphertexts, so only keys with the
        output mode `full` that PRADA has not degraded may use this route; its rows count against the budget."""
        settings = self.settings(key)
        degraded = self.prada is not None and self.prada.alarmed(str(key.id))
        if settings.output != "full" or degraded:
            raise ApiError(
                403,
                "encrypted_not_allowed",
                f"key {key.name!r} has output mode {'labels (PRADA alarm)' if degraded else settings.output}; "
                "encrypted answers are raw logits, so only keys with output mode full may use this route",
                key_id=key.id,
            )
        public = _b64("public_context_b64", public_context_b64)
        inputs = _b64("inputs_b64", inputs_b64)
        outputs, n = self.model.evaluate_encrypted(public, inputs)
        if settings.budget and key.used + n > settings.budget:
            raise self._budget_error(key, settings.budget, n)
        with self.store.transaction() as tx:
            row = tx.key(key.id)
            self._check_state(row)
            if settings.budget and row.used + n > settings.budget:
                raise self._budget_error(row, settings.budget, n)
            tx.insert_log(
                LogEntry(
                    request_id=request_id,
                    route="/v1/encrypted/predict",
                    status=200,
                    key_id=key.id,
                    rows=n,
                    body_bytes=nbytes,
                    input_sha256=[hashlib.sha256(inputs).hexdigest()],
                    decision="encrypted",
                    latency_ms=(time.perf_counter() - started) * 1000.0,
                    output="encrypted",
                )
            )
            tx.add_used(key.id, n)
        self.metrics.request("/v1/encrypted/predict", 200, "encrypted", n, time.perf_counter() - started)
        return {"request_id": request_id, "outputs_b64": base64.b64encode(outputs).decode("ascii")}

    # -- other routes and refusals ------------------------------------------------------------------------

    def log_access(self, key: KeyRecord, route: str, *, request_id: str, started: float) -> None:
        """Log a successful non-predict request (metrics, OpenAPI)."""
        self._log(LogEntry(request_id=request_id, route=route, status=200, key_id=key.id), started)

    def log_refusal(
        self, error: ApiError, route: str, *, request_id: str, nbytes: int, started: float
    ) -> None:
        """Log a refused request (no model work was done): status, code and the key when known."""
        entry = LogEntry(
            request_id=request_id,
            route=route,
            status=error.status,
            key_id=error.key_id,
            code=error.code,
            body_bytes=nbytes,
        )
        self._log(entry, started)

    def _log(self, entry: LogEntry, started: float) -> None:
        seconds = time.perf_counter() - started
        entry = replace(entry, latency_ms=seconds * 1000.0)
        with self.store.transaction() as tx:
            tx.insert_log(entry)
        self.metrics.request(entry.route, entry.status, None, 0, None)  # latency: answered predictions only

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": self.model.name,
            "input_shape": list(self.model.input_shape),
            "classes": self.model.num_classes,
        }


def _b64(param: str, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_input(param, "not valid base64 (standard alphabet, with padding)") from None


__all__ = ["Gateway", "KeySettings"]
