"""Fuzzing the gateway over HTTP: no request, however malformed, gets a 5xx.

A real `ramparts serve` subprocess on 127.0.0.1 (digits model, PRADA on) and one valid key:

- schema-based (schemathesis): the OpenAPI description served at /openapi.json (behind the key) drives
  generation for every operation, both fitting the schema (positive) and breaking it (negative);
- structure-aware (hypothesis): /v1/predict bodies close to valid ones (right and wrong shapes, flat and
  nested, ragged lists, values out of range, NaN and infinity literals, base64 of any length with any
  shape and dtype), which the schema alone rarely reaches because `inputs` is a free-form list.

The quick tests keep to a bounded number of examples; the `slow` ones run many more.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from tests.test_gateway_e2e import (
    Server,
    add_key,
    free_port,
    gateway_model,  # noqa: F401 (a fixture used by `served`)
    gateway_settings,
    start_server,
    write_config,
)

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.generation import GenerationMode  # noqa: E402

ANSWERED = {200, 400, 413, 415, 422}  # a valid key with generous limits meets no 401, 403 or 429


@pytest.fixture(scope="module")
def served(gateway_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:  # noqa: F811
    work = tmp_path_factory.mktemp("fuzz")
    db = work / "gateway.db"
    prada = {"enabled": True, "min_samples": 20, "on_alarm": "alert"}
    config = write_config(
        work / "gateway.toml", gateway_settings(gateway_model, db, free_port(), prada=prada)
    )
    token = add_key(db, "fuzzer")
    server = start_server(config, work)
    try:
        yield server, token
    finally:
        alive = server.proc.poll() is None
        server.stop()
        assert alive, f"the server died during fuzzing:\n{server.text()}"


def fuzz_schema(server: Server, token: str, examples: int, *, with_key: bool = True) -> dict[int, int]:
    """`examples` schemathesis cases per operation and generation mode; returns how often each status came.

    `with_key`: send the valid key (over whatever credentials schemathesis generates from the security
    schemes); without it, only the generated credentials go, and every route but /healthz must refuse."""
    assert httpx.get(f"{server.url}/openapi.json", timeout=10).status_code == 401
    headers = {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=headers)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/predict", "/healthz", "/metrics"}
    seen: dict[int, int] = {}
    sent = headers if with_key else None

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=examples,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: Any) -> None:
                response = case.call(base_url=server.url, headers=sent, timeout=30)
                status = response.status_code
                seen[status] = seen.get(status, 0) + 1
                what = f"{case.method} {case.path} -> {status} {response.text[:300]}\n{case.as_curl_command(headers=sent)}"
                assert status < 500, what
                if not with_key and case.path != "/healthz":
                    # The body is validated before the key (the contract's order): 400/422 for a bad body.
                    assert status in (400, 401, 422), what

            try:
                check()
            except Unsatisfiable:
                # Nothing in the operation can be made invalid (GET /healthz takes no input at all).
                assert mode == GenerationMode.NEGATIVE, f"no valid request for {operation.path}"
                assert operation.path != "/v1/predict", "negative cases exist for a JSON body"
    return seen


def test_schema_fuzzing_finds_no_5xx(served: tuple[Server, str]) -> None:
    server, token = served
    seen = fuzz_schema(server, token, examples=30)
    assert max(seen) < 500
    assert seen.get(200, 0) > 0  # /healthz and /metrics answered
    assert seen.get(422, 0) > 0  # generated bodies reached the validation


def test_schema_fuzzing_with_generated_credentials_only_gets_401(served: tuple[Server, str]) -> None:
    server, token = served
    seen = fuzz_schema(server, token, examples=20, with_key=False)
    assert seen.get(401, 0) > 0


@pytest.mark.slow
def test_schema_fuzzing_many_examples_finds_no_5xx(served: tuple[Server, str]) -> None:
    server, token = served
    assert max(fuzz_schema(server, token, examples=500)) < 500
    assert max(fuzz_schema(server, token, examples=200, with_key=False)) < 500


# ------------------------------------------------------------------------------- near-valid predict bodies

SPECIAL = [0.0, -0.0, 1.0, 1.0 + 1e-7, 1.0 + 1e-5, -1e-7, -1e-5, 1e-45, 3.4e38, 1e308, -1e308, 2.0**70]
ODD_VALUES = st.one_of(
    st.sampled_from(SPECIAL),
    st.integers(-(2**70), 2**70),
    st.sampled_from([True, None, "0.5", [], {}]),
)
PIXELS = st.lists(st.floats(0.0, 1.0, width=32), min_size=64, max_size=64)
NONFINITE = "<non-finite literal>"
DEFECTS = [None, None, None, "rows", "side", "no-batch", "ragged", "value", "nonfinite", "both-forms"]


@st.composite
def nested_body(draw: st.DrawFn) -> str:
    """`{"inputs": ...}`: N rows of (1, 8, 8) or 64 pixels, valid or with one defect."""
    defect = draw(st.sampled_from(DEFECTS))
    n = draw(st.sampled_from([0, 257]) if defect == "rows" else st.integers(1, 4))
    side = draw(st.sampled_from([7, 9])) if defect == "side" else 8
    pixels = draw(PIXELS)[: side * side] * 2
    flat = draw(st.booleans())
    image = [[pixels[r * side : (r + 1) * side] for r in range(side)]]
    rows: Any = [pixels[: side * side] for _ in range(n)] if flat else [image for _ in range(n)]
    rows = json.loads(json.dumps(rows))  # independent copies, so one defect touches one place
    if defect == "no-batch":
        rows = image
    elif defect == "ragged":
        last = rows[-1] if flat else rows[-1][0][-1]
        last.pop()
    elif defect in ("value", "nonfinite"):
        target = rows[0] if flat else rows[0][0][0]
        odd = draw(ODD_VALUES) if defect == "value" else NONFINITE
        target[draw(st.integers(0, len(target) - 1))] = odd
    body: dict[str, Any] = {"inputs": rows}
    if defect == "both-forms":
        body.update(inputs_b64="AAAA", dtype="uint8", shape=[1, 3])
    literal = draw(
        st.sampled_from(["NaN", "Infinity", "-Infinity"])
    )  # JSON has none; Python's parser takes them
    return json.dumps(body).replace(json.dumps(NONFINITE), literal)


@st.composite
def base64_body(draw: st.DrawFn) -> str:
    """`{"inputs_b64", "dtype", "shape"}`: valid float32 or uint8 rows, or any bytes, dtype name and shape."""
    n = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from(["float32", "uint8"]))
    shape: Any = draw(st.sampled_from([[n, 1, 8, 8], [n, 64]]))
    if dtype == "uint8":
        raw = draw(st.binary(min_size=64 * n, max_size=64 * n))
    else:
        values = draw(st.lists(st.floats(0.0, 1.0, width=32), min_size=64 * n, max_size=64 * n))
        raw = np.asarray(values, dtype="<f4").tobytes()
    data = base64.b64encode(raw).decode()
    defect = draw(st.sampled_from([None, None, "bytes", "data", "dtype", "shape", "shape", "missing"]))
    if defect == "bytes":  # any bytes: for float32, NaN, infinities and huge values among them
        data = base64.b64encode(draw(st.binary(max_size=1100))).decode()
    elif defect == "data":
        data = draw(st.sampled_from(["", "====", "not base64!", data[:-4], data + "AAAA", data.rstrip("=")]))
    elif defect == "dtype":
        dtype = draw(st.sampled_from(["float64", "", "UINT8", "int8"]))
    elif defect == "shape":
        shape = draw(
            st.one_of(
                st.sampled_from(
                    [[0, 1, 8, 8], [1, 8, 8], [n, 1, 8, 8, 1], [n, 65], [2**62, 2**62], [-n, -64]]
                ),
                st.lists(st.integers(-3, 2**40), max_size=5),
            )
        )
    body: dict[str, Any] = {"inputs_b64": data, "dtype": dtype, "shape": shape}
    if defect == "missing":
        del body[draw(st.sampled_from(["dtype", "shape"]))]
    return json.dumps(body)


ODD_BODIES = [
    "",
    "null",
    "[]",
    '{"inputs": 5}',
    '{"inputs": [[[[0.5]]]], "extra": 1}',
    '{"inputs": ' + "[" * 50_000 + "]" * 50_000 + "}",
    '{"inputs": [' + ",".join(["0.5"] * 64) + "]}",
    '{"inputs": [[' + ",".join(["1e999"] * 64) + "]]}",
    "\udcff not json",
]


def fuzz_predict(server: Server, token: str, examples: int) -> dict[int, int]:
    """`examples` near-valid bodies to /v1/predict; returns how often each status came."""
    seen: dict[int, int] = {}
    http = server.client(token)

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(text=st.one_of(nested_body(), base64_body(), st.sampled_from(ODD_BODIES)))
    def check(text: str) -> None:
        content = text.encode("utf-8", "surrogateescape")
        answer = http.post("/v1/predict", content=content, headers={"Content-Type": "application/json"})
        seen[answer.status_code] = seen.get(answer.status_code, 0) + 1
        assert answer.status_code in ANSWERED, f"{answer.status_code} {answer.text[:300]} for {text[:300]}"
        body = answer.json()
        if answer.status_code == 200:
            assert len(body["labels"]) == len(body["scores"])
            assert all(0 <= label < 10 for label in body["labels"])
        else:
            error = body["error"]
            assert error["code"], error
            assert error["message"], error
            if answer.status_code == 422:
                assert error["param"], f"a 422 names the field at fault: {error}"

    check()
    return seen


def test_near_valid_predict_bodies_get_an_answer_or_a_4xx(served: tuple[Server, str]) -> None:
    server, token = served
    seen = fuzz_predict(server, token, examples=150)
    assert seen.get(200, 0) > 0
    assert seen.get(422, 0) > 0


@pytest.mark.slow
def test_near_valid_predict_bodies_many_examples(served: tuple[Server, str]) -> None:
    server, token = served
    fuzz_predict(server, token, examples=3000)
