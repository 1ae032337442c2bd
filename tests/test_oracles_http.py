"""HttpOracle against a real HTTP server (uvicorn on 127.0.0.1, started here) serving the digits model.

Nothing is mocked at the HTTP level: every behaviour (rate limits, failures, malformed answers, auth,
timeouts) is a route of the FastAPI app below, reached through a real socket.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ramparts.errors import AccessError, UnknownNameError, ValidationError
from ramparts.oracles import (
    HttpConfig,
    HttpOracle,
    Knowledge,
    OracleResponseError,
    OracleUnavailableError,
    as_oracle,
    load_oracle,
)
from ramparts.oracles.http import retry_after_seconds
from ramparts.targets import view_for
from tests.conftest import Trained

SHAPE = (1, 8, 8)
TOKEN = "s3cret-token-value"


def _app(model: torch.nn.Module) -> FastAPI:
    app = FastAPI()
    sizes: dict[str, list[int]] = defaultdict(list)
    calls: dict[str, int] = defaultdict(int)
    app.state.sizes = sizes

    async def logits_of(request: Request, flat: bool = False) -> torch.Tensor:
        rows = (await request.json())["inputs"]
        sizes[request.query_params.get("key", "")].append(len(rows))
        x = torch.tensor(rows, dtype=torch.float32)
        with torch.no_grad():
            return model(x.view(-1, *SHAPE) if flat else x)

    def scores(logits: torch.Tensor) -> dict[str, Any]:
        return {"scores": logits.softmax(1).tolist()}

    def count(request: Request) -> int:
        key = request.url.path + request.query_params.get("key", "")
        calls[key] += 1
        return calls[key]

    @app.post("/scores")
    async def _scores(request: Request) -> Any:
        return scores(await logits_of(request))

    @app.post("/logits")
    async def _logits(request: Request) -> Any:
        return {"result": {"logits": (await logits_of(request)).tolist()}}

    @app.post("/flat")
    async def _flat(request: Request) -> Any:
        rows = (await request.json())["inputs"]
        if any(not isinstance(v, float) for v in rows[0]):
            return JSONResponse({"detail": "expected flat rows of 64 numbers"}, status_code=422)
        return scores(await logits_of(request, flat=True))

    @app.post("/labels")
    async def _labels(request: Request) -> Any:
        return {"label": (await logits_of(request)).argmax(1).tolist()}

    @app.post("/ratelimited")
    async def _ratelimited(request: Request) -> Any:
        if count(request) == 1:
            return JSONResponse({"detail": "slow down"}, status_code=429, headers={"Retry-After": "1"})
        return scores(await logits_of(request))

    @app.post("/unavailable")
    async def _unavailable(request: Request) -> Any:
        if count(request) <= 2:
            return JSONResponse({"detail": "warming up"}, status_code=503)
        return scores(await logits_of(request))

    @app.post("/broken")
    async def _broken(request: Request) -> Any:
        count(request)
        return JSONResponse({"detail": "boom"}, status_code=500)

    @app.post("/html")
    async def _html() -> Any:
        return HTMLResponse("<html><body><h1>Welcome to nginx!</h1></body></html>")

    @app.post("/missing")
    async def _missing(request: Request) -> Any:
        return {"predictions": scores(await logits_of(request))["scores"]}

    @app.post("/short")
    async def _short(request: Request) -> Any:
        return {"scores": scores(await logits_of(request))["scores"][:-1]}

    @app.post("/nan")
    async def _nan(request: Request) -> Any:
        rows = scores(await logits_of(request))["scores"]
        rows[0][3] = float("nan")
        return Response(json.dumps({"scores": rows}), media_type="application/json")  # NaN literal

    @app.post("/classes")
    async def _classes(request: Request) -> Any:
        return {"scores": (await logits_of(request))[:, :3].softmax(1).tolist()}

    @app.post("/unnormalised")
    async def _unnormalised(request: Request) -> Any:
        return {"scores": (await logits_of(request)).tolist()}

    @app.post("/badlabels")
    async def _badlabels(request: Request) -> Any:
        return {"labels": [12] * len((await request.json())["inputs"])}

    @app.post("/secure")
    async def _secure(request: Request) -> Any:
        count(request)
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return JSONResponse({"detail": "missing or bad token"}, status_code=401)
        return scores(await logits_of(request))

    @app.post("/slow")
    async def _slow(request: Request) -> Any:
        count(request)
        await asyncio.sleep(1.5)
        return scores(await logits_of(request))

    return app


class _Server:
    """uvicorn in a background thread on a socket bound here (127.0.0.1, a free port)."""

    def __init__(self, app: FastAPI) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start within 10 s")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()
        assert not self.thread.is_alive(), "the test server did not stop"


@pytest.fixture(scope="module")
def server(digits_model: Trained) -> Iterator[tuple[str, FastAPI]]:
    app = _app(digits_model.model)
    with _Server(app) as srv:
        yield srv.url, app


@pytest.fixture
def base(server: tuple[str, FastAPI]) -> str:
    return server[0]


def _oracle(url: str, **kw: Any) -> HttpOracle:
    kw.setdefault("num_classes", 10)
    kw.setdefault("input_shape", SHAPE)
    return HttpOracle(HttpConfig(url=url, **kw))


def test_scores_and_logits_equal_the_local_model(base: str, digits_model: Trained) -> None:
    x, local = digits_model.x, digits_model.oracle
    expected = local.log_probs(x)
    with _oracle(f"{base}/scores") as oracle:
        assert oracle.knowledge == Knowledge.SCORE
        torch.testing.assert_close(oracle.log_probs(x).exp(), expected.exp(), atol=1e-6, rtol=0)
        assert torch.equal(oracle.labels(x), expected.argmax(1))
        assert oracle.stats() == {"requests": 2, "retries": 0, "rows_sent": 2 * len(x), "waited_s": 0.0}
    with _oracle(f"{base}/logits", output_kind="logits", output_field="result.logits") as oracle:
        torch.testing.assert_close(oracle.log_probs(x), expected, atol=1e-5, rtol=0)


def test_num_classes_is_probed_with_one_request(base: str) -> None:
    oracle = HttpOracle(HttpConfig(url=f"{base}/scores", input_shape=SHAPE))
    assert oracle.num_classes == 10
    assert oracle.requests == 1


def test_requests_never_carry_more_than_batch_size_rows(
    server: tuple[str, FastAPI], digits_model: Trained
) -> None:
    url, app = server
    x = digits_model.x  # 64 rows
    oracle = _oracle(f"{url}/scores?key=batching", batch_size=10)
    labels = oracle.labels(x)
    assert app.state.sizes["batching"] == [10] * 6 + [4]
    assert oracle.requests == 7
    assert torch.equal(labels, digits_model.oracle.labels(x))
    flat = _oracle(f"{url}/flat?key=flat", input_layout="flat", batch_size=64)
    assert torch.equal(flat.labels(x), labels)
    assert app.state.sizes["flat"] == [64]
    with pytest.raises(OracleResponseError, match=r"HTTP 422.*flat rows.*Fix: check input_field"):
        _oracle(f"{url}/flat").labels(x[:2])


def test_429_retry_after_is_honoured(base: str, digits_model: Trained) -> None:
    oracle = _oracle(f"{base}/ratelimited?key=429", backoff_s=0.0)
    t0 = time.perf_counter()
    labels = oracle.labels(digits_model.x[:4])
    waited = time.perf_counter() - t0
    assert waited >= 0.95
    assert waited < 5
    assert (oracle.requests, oracle.retries, oracle.waited_s) == (2, 1, 1.0)
    assert torch.equal(labels, digits_model.y[:4])


def test_503_twice_then_ok(base: str, digits_model: Trained) -> None:
    oracle = _oracle(f"{base}/unavailable?key=503", backoff_s=0.05, max_retries=2)
    assert torch.equal(oracle.labels(digits_model.x[:4]), digits_model.y[:4])
    assert (oracle.requests, oracle.retries) == (3, 2)
    assert 0.05 * 0.5 * 3 <= oracle.waited_s < 0.05 * 3  # 0.05 then 0.1, each times a jitter in [0.5, 1)


def test_backoff_jitter_is_seeded(base: str, digits_model: Trained) -> None:
    waits = []
    for key in ("seed-a", "seed-b"):
        oracle = _oracle(f"{base}/unavailable?key={key}", backoff_s=0.02, seed=7)
        oracle.labels(digits_model.x[:1])
        waits.append(oracle.waited_s)
    assert waits[0] == waits[1]


def test_a_server_that_always_fails_gives_a_clear_error(base: str, digits_model: Trained) -> None:
    oracle = _oracle(f"{base}/broken?key=500", max_retries=2, backoff_s=0.01)
    with pytest.raises(
        OracleUnavailableError, match=r"failed 3 time\(s\), last with HTTP 500.*raise max_retries"
    ):
        oracle.labels(digits_model.x[:2])
    assert (oracle.requests, oracle.retries) == (3, 2)


@pytest.mark.parametrize(
    ("route", "kind", "match"),
    [
        ("html", "probabilities", r"response: .*expected JSON with the field 'scores', got text/html.*nginx"),
        (
            "missing",
            "probabilities",
            r"output_field: .*a field 'scores' in the response, found \['predictions'\]",
        ),
        ("short", "probabilities", r"output_field: .*hold 5 rows of probabilities.*got shape \(4, 10\)"),
        ("nan", "probabilities", r"output_field: .*finite probabilities in 'scores', got 1 NaN"),
        ("classes", "probabilities", r"num_classes: .*10 probabilities per row in 'scores', got 3"),
        ("unnormalised", "probabilities", r"output_kind: .*rows summing to 1.*set output_kind to 'logits'"),
        ("badlabels", "labels", r"num_classes: .*labels in 0\.\.9 in 'labels', got \[12"),
    ],
)
def test_answers_that_are_not_predictions(
    base: str, digits_model: Trained, route: str, kind: str, match: str
) -> None:
    oracle = _oracle(f"{base}/{route}", output_kind=kind, max_retries=3)
    with pytest.raises(OracleResponseError, match=match) as info:
        oracle.labels(digits_model.x[:5])
    assert not isinstance(info.value, OracleUnavailableError)
    assert oracle.requests == 1  # a malformed answer is not retried


def test_auth_header_from_the_environment(
    base: str, digits_model: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = digits_model.x[:3]
    bare = _oracle(f"{base}/secure?key=noauth", max_retries=3)
    with pytest.raises(
        OracleResponseError, match=r"HTTP 401.*Fix: set the credentials.*Authorization.*API_TOKEN"
    ):
        bare.labels(x)
    assert bare.requests == 1  # 401 is not retried
    headers = {"Authorization": "Bearer ${RAMPARTS_TEST_TOKEN}"}
    with pytest.raises(ValidationError, match=r"headers\['Authorization'\].*export RAMPARTS_TEST_TOKEN"):
        _oracle(f"{base}/secure", headers=headers)
    monkeypatch.setenv("RAMPARTS_TEST_TOKEN", TOKEN)
    good = _oracle(f"{base}/secure", headers=headers)
    assert torch.equal(good.labels(x), digits_model.y[:3])
    monkeypatch.setenv("RAMPARTS_TEST_TOKEN", "wrong-" + TOKEN)
    wrong = _oracle(f"{base}/secure", headers=headers)
    with pytest.raises(OracleResponseError, match="headers sent: Authorization") as info:
        wrong.labels(x)
    for text in (str(info.value), repr(wrong), repr(wrong.config), json.dumps(wrong.config.to_dict())):
        assert TOKEN not in text


def test_labels_only_endpoint(base: str, digits_model: Trained) -> None:
    x = digits_model.x
    oracle = _oracle(f"{base}/labels", output_kind="labels", output_field="label")
    assert oracle.knowledge == Knowledge.LABEL
    with pytest.raises(AccessError, match="needs score access"):
        view_for(oracle, Knowledge.SCORE, len(x))
    box = view_for(oracle, Knowledge.LABEL, len(x), budget=1)
    assert torch.equal(box.labels(x), digits_model.oracle.labels(x))
    assert bool((box.queries == 1).all())
    with pytest.raises(AccessError, match="labels only"):
        oracle.log_probs(x)
    with pytest.raises(ValidationError, match=r"num_classes: .*label-only endpoint cannot tell it"):
        HttpOracle(HttpConfig(url=f"{base}/labels", output_kind="labels", input_shape=SHAPE))


def test_timeouts_are_retried_then_reported(base: str, digits_model: Trained) -> None:
    oracle = _oracle(f"{base}/slow?key=timeout", timeout_s=0.3, max_retries=1, backoff_s=0.01)
    t0 = time.perf_counter()
    with pytest.raises(
        OracleUnavailableError, match=r"failed 2 time\(s\), last with ReadTimeout \(timeout_s=0.3\)"
    ):
        oracle.labels(digits_model.x[:1])
    assert time.perf_counter() - t0 < 1.4
    assert (oracle.requests, oracle.retries) == (2, 1)


def test_unreachable_server_and_refused_statuses(base: str, digits_model: Trained) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    oracle = _oracle(f"http://127.0.0.1:{port}/predict", max_retries=1, backoff_s=0.01)
    with pytest.raises(OracleUnavailableError, match=r"failed 2 time\(s\), last with ConnectError"):
        oracle.labels(digits_model.x[:1])
    missing = _oracle(f"{base}/nowhere", max_retries=3)
    with pytest.raises(OracleResponseError, match=r"HTTP 404.*Fix: check url"):
        missing.labels(digits_model.x[:1])
    assert missing.requests == 1


def test_config_from_json_and_validation(tmp_path: Path) -> None:
    file = tmp_path / "api.json"
    file.write_text(
        json.dumps(
            {
                "url": "https://api.example/predict",
                "headers": {"Authorization": "Bearer ${API_TOKEN}"},
                "output_kind": "logits",
                "input_shape": [1, 8, 8],
                "batch_size": 32,
            }
        )
    )
    config = HttpConfig.from_json(file, num_classes=10)
    assert config.output_field == "logits"
    assert config.input_shape == (1, 8, 8)
    assert (config.batch_size, config.num_classes) == (32, 10)
    assert HttpConfig.from_json(file, url="http://127.0.0.1:1/x").url == "http://127.0.0.1:1/x"
    assert config.to_dict()["headers"] == ["Authorization"]
    assert "Bearer" not in repr(config)
    file.write_text(json.dumps({"url": "https://api.example/p", "batchsize": 3}))
    with pytest.raises(UnknownNameError, match=r"config key: unknown name 'batchsize'.*batch_size"):
        HttpConfig.from_json(file)
    file.write_text(json.dumps({"url": "https://api.example/p", "batch_size": 0}))
    with pytest.raises(
        ValidationError, match=rf"batch_size: expected an integer >= 1, got 0\. \(in {file}\)"
    ):
        HttpConfig.from_json(file)
    file.write_text("{not json")
    with pytest.raises(ValidationError, match="config_path: expected a JSON file"):
        HttpConfig.from_json(file)
    with pytest.raises(ValidationError, match=r"url: expected an http:// or https:// address"):
        HttpConfig(url="ftp://host/x")
    with pytest.raises(UnknownNameError, match="output_kind: unknown name 'proba'"):
        HttpConfig(url="http://h/x", output_kind="proba")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="timeout_s: expected a number of seconds > 0"):
        HttpConfig(url="http://h/x", timeout_s=0)


def test_retry_after_parsing() -> None:
    now = 1_700_000_000.0
    assert retry_after_seconds("1") == 1.0
    assert retry_after_seconds(" 2.5 ") == 2.5
    assert retry_after_seconds(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30)
    assert retry_after_seconds(formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("nan") is None
    assert retry_after_seconds(None) is None


def test_as_oracle_and_load_oracle_take_urls(base: str, digits_model: Trained, tmp_path: Path) -> None:
    x = digits_model.x[:4]
    oracle = as_oracle(f"{base}/scores", SHAPE)
    assert isinstance(oracle, HttpOracle)
    assert torch.equal(oracle.labels(x), digits_model.y[:4])
    with pytest.raises(
        ValidationError, match=r"num_classes: .*set num_classes and input_shape in the HTTP config"
    ):
        as_oracle(f"{base}/scores")
    config = tmp_path / "labels.json"
    config.write_text(json.dumps({"output_kind": "labels", "output_field": "label", "num_classes": 10}))
    loaded = load_oracle(f"{base}/labels", config_path=config, input_shape=SHAPE)
    assert isinstance(loaded, HttpOracle)
    assert loaded.knowledge == Knowledge.LABEL
    assert torch.equal(loaded.labels(x), digits_model.y[:4])


def test_secrets_in_the_url_come_from_the_environment_and_are_not_shown(
    server: tuple[str, FastAPI], digits_model: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, app = server
    monkeypatch.setenv("RAMPARTS_TEST_KEY", TOKEN)
    _oracle(base + "/scores?key=${RAMPARTS_TEST_KEY}").labels(digits_model.x[:2])
    assert app.state.sizes[TOKEN] == [2]  # the server got the expanded value
    oracle = _oracle(base + "/broken?key=${RAMPARTS_TEST_KEY}", max_retries=0)
    assert oracle.url == f"{base}/broken?..."
    with pytest.raises(OracleUnavailableError, match=r"/broken\?\.\.\. failed 1 time") as info:
        oracle.labels(digits_model.x[:1])
    assert TOKEN not in str(info.value) + repr(oracle)
    assert oracle.requests == 1
    empty = _oracle(f"{base}/scores")
    assert empty.log_probs(digits_model.x[:0]).shape == (0, 10)
    assert empty.requests == 0
