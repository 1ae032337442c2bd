"""The HTTP layer: FastAPI routes over a `Gateway`, JSON errors, body limits, and a uvicorn server.

Handlers that touch the model or the database are plain `def` routes (FastAPI runs them in its thread pool), so
the event loop never blocks on inference or SQLite. Every route but `/healthz` needs a key; refusals are JSON
`{"error": {"code", "message", "param"}}` and are logged like answers.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Annotated, Any, cast

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ramparts.gateway.config import GatewayConfig
from ramparts.gateway.errors import ApiError
from ramparts.gateway.inputs import decode_inputs
from ramparts.gateway.keys import KeyRecord
from ramparts.gateway.schemas import (
    ERROR_RESPONSES,
    EncryptedRequest,
    EncryptedResponse,
    Health,
    PredictRequest,
    PredictResponse,
)
from ramparts.gateway.service import Gateway

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PREDICT = "/v1/predict"
ENCRYPTED = "/v1/encrypted/predict"
_STATUS_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <token>")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <token>")


def require_key(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> KeyRecord:
    """The request's key (Bearer token or X-API-Key), checked by the app's gateway: state, budget, rate."""
    token = bearer.credentials if bearer is not None else api_key
    key = request.app.state.gateway.authenticate(token)
    request.state.key = key
    return cast(KeyRecord, key)


Key = Annotated[KeyRecord, Depends(require_key)]


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class RequestLimits:
    """Pure ASGI middleware: request id and start time for every request; for POSTs under /v1/, 415 unless the
    body is JSON and 413 above the route's byte limit (checked on Content-Length, then while reading)."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["started"] = time.perf_counter()
        state["request_id"] = str(uuid.uuid4())
        path = scope.get("path", "")
        if scope.get("method") != "POST" or not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        config = self.gateway.config
        limit = config.max_encrypted_body_bytes if path == ENCRYPTED else config.max_body_bytes
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media != b"application/json" and not media.endswith(b"+json"):
            error = ApiError(
                415, "unsupported_media_type", "send the body as application/json", "Content-Type"
            )
            await self._refuse(error, scope, receive, send, 0)
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(self._too_large(int(declared), limit), scope, receive, send, int(declared))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(self._too_large(size, limit), scope, receive, send, size)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        state["body_bytes"] = size
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    def _too_large(size: int, limit: int) -> ApiError:
        return ApiError(
            413,
            "body_too_large",
            f"the body has {size}+ bytes, more than the limit of {limit}; send fewer rows",
            "body",
        )

    async def _refuse(self, error: ApiError, scope: Scope, receive: Receive, send: Send, nbytes: int) -> None:
        state = scope["state"]
        await run_in_threadpool(
            self.gateway.log_refusal,
            error,
            scope.get("path", ""),
            request_id=state["request_id"],
            nbytes=nbytes,
            started=state["started"],
        )
        await _error_response(error)(scope, receive, send)


def create_app(gateway: Gateway) -> FastAPI:
    """The FastAPI application of `gateway` (its routes, error handlers and middleware)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        gateway.close()

    app = FastAPI(
        title="Ramparts gateway",
        version=metadata.version("ramparts"),
        description="A model behind Ramparts' defences: keys, limits, input validation, detection, PRADA, audit log.",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.gateway = gateway

    def _body_bytes(request: Request) -> int:
        return int(getattr(request.state, "body_bytes", 0))

    @app.get("/healthz", response_model=Health, tags=["service"])
    def healthz() -> dict[str, Any]:
        """Liveness and what the model expects; no key needed."""
        return gateway.health()

    @app.post(PREDICT, response_model=PredictResponse, responses=ERROR_RESPONSES, tags=["predict"])
    def predict(body: PredictRequest, request: Request, key: Key) -> dict[str, Any]:
        """Classify a batch: nested lists or base64 float32/uint8; the answer follows the key's output mode."""
        x = decode_inputs(
            body,
            input_shape=gateway.model.input_shape,
            input_range=gateway.config.input_range,
            max_batch=gateway.config.max_batch,
        )
        return gateway.predict(
            key,
            x,
            request_id=request.state.request_id,
            nbytes=_body_bytes(request),
            started=request.state.started,
        )

    if gateway.model.program is not None:

        @app.post(ENCRYPTED, response_model=EncryptedResponse, responses=ERROR_RESPONSES, tags=["predict"])
        def encrypted_predict(body: EncryptedRequest, request: Request, key: Key) -> dict[str, Any]:
            """Evaluate the model on CKKS ciphertexts (ramparts.protection.he_files formats); answers ciphertexts."""
            return gateway.encrypted_predict(
                key,
                body.public_context_b64,
                body.inputs_b64,
                request_id=request.state.request_id,
                nbytes=_body_bytes(request),
                started=request.state.started,
            )

    @app.get("/metrics", tags=["service"], responses=ERROR_RESPONSES)
    def metrics(request: Request, key: Key) -> Response:
        """Prometheus text format."""
        gateway.log_access(
            key, "/metrics", request_id=request.state.request_id, started=request.state.started
        )
        return Response(gateway.metrics.render(), media_type=gateway.metrics.content_type)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(request: Request, key: Key) -> JSONResponse:
        gateway.log_access(
            key, "/openapi.json", request_id=request.state.request_id, started=request.state.started
        )
        return JSONResponse(app.openapi())

    async def refused(request: Request, error: ApiError) -> JSONResponse:
        key = getattr(request.state, "key", None)
        if error.key_id is None and key is not None:
            error.key_id = key.id
        if not error.logged:
            await run_in_threadpool(
                gateway.log_refusal,
                error,
                request.url.path,
                request_id=request.state.request_id,
                nbytes=_body_bytes(request),
                started=request.state.started,
            )
        return _error_response(error)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return await refused(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            # pydantic's location is then the character offset of the syntax error, not a field.
            where = f" at character {loc[0]}" if loc else ""
            message, loc = (
                f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'syntax error')}{where})",
                [],
            )
        else:
            message = str(first.get("msg", "invalid body"))
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem(s))"
        key = getattr(request.state, "key", None)
        error = ApiError(
            422, "invalid_input", message, ".".join(loc) or "body", key_id=key.id if key else None
        )
        return await refused(request, error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        body = {"error": {"code": code, "message": str(exc.detail), "param": None}}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s", request.url.path)
        body = {
            "error": {"code": "internal_error", "message": "unexpected server error (logged)", "param": None}
        }
        return JSONResponse(body, status_code=500)

    app.add_middleware(RequestLimits, gateway=gateway)
    return app


def build_server(config: GatewayConfig, *, log_level: str = "info") -> tuple[uvicorn.Server, Gateway]:
    """A uvicorn server (one process) for `config` and its gateway; `server.run()` serves until stopped."""
    gateway = Gateway(config)
    app = create_app(gateway)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=log_level,
            access_log=False,
            workers=1,
            timeout_graceful_shutdown=5,
        )
    )
    return server, gateway


__all__ = ["RequestLimits", "build_server", "create_app"]
