"""The gateway over real HTTP on 127.0.0.1 (uvicorn in a background thread, httpx as the client): auth and error
shapes, output modes, input encodings, budgets and rate limits, detection policies with saved defences, PRADA
policies and persistence, the log, /metrics, /openapi.json and the encrypted route."""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from torch import nn

from ramparts.data import Dataset, load_digits
from ramparts.defenses.base import DefendedModel
from ramparts.defenses.magnet import magnet
from ramparts.defenses.persist import load_defended, save_defended
from ramparts.defenses.prada import Prada
from ramparts.defenses.squeezing import feature_squeezing
from ramparts.gateway.app import build_server
from ramparts.gateway.config import ConfigError, env_name, load_config
from ramparts.gateway.service import Gateway
from ramparts.gateway.store import Store
from ramparts.oracles.http import HttpConfig, HttpOracle
from ramparts.training import TrainConfig, train
from ramparts.zoo import build, save_model

ARCH = "mlp"
CONFIG: dict[str, Any] = {"in_channels": 1, "input_size": 8, "num_classes": 10, "hidden": [32]}
EXTRA = {"input_shape": [1, 8, 8], "dataset": "digits"}


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


@pytest.fixture(scope="module")
def classifier(digits: Dataset) -> nn.Module:
    torch.manual_seed(0)
    model = build(ARCH, **CONFIG)
    train(
        model,
        digits.subset(range(1200)),
        config=TrainConfig(epochs=3, batch_size=64, lr=1e-2, seed=0),
        progress=False,
    )
    return model.eval()


@pytest.fixture(scope="module")
def model_dir(classifier: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("plain")
    save_model(classifier, folder, arch=ARCH, config=CONFIG, extra=EXTRA)
    return folder


@pytest.fixture(scope="module")
def squeeze_dir(classifier: nn.Module, digits: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("squeeze")
    defended = feature_squeezing(classifier, digits.subset(range(1200, 1500)), fpr=0.05)
    save_defended(defended, folder, arch=ARCH, config=CONFIG, extra=EXTRA)
    return folder


@pytest.fixture(scope="module")
def magnet_dir(classifier: nn.Module, digits: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("magnet")
    config = TrainConfig(epochs=2, batch_size=128, lr=3e-3, seed=0)
    fit, val = digits.subset(range(1000)), digits.subset(range(1000, 1300))
    defended = magnet(classifier, fit, val, fpr=0.05, config=config, reformer=1).eval()
    save_defended(defended, folder, arch=ARCH, config=CONFIG, extra=EXTRA)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Live:
    url: str
    gateway: Gateway
    db: Path

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0, **kwargs)

    def key(self, name: str, **settings: Any) -> tuple[int, str]:
        record, token = self.gateway.store.add_key(name, **settings)
        return record.id, token


@contextmanager
def serving(model: Path, db: Path, **settings: Any) -> Iterator[Live]:
    """A real gateway on a free port of 127.0.0.1; `settings` are config keys (dots as __) given as env vars."""
    env = {env_name(k.replace("__", ".")): str(v) for k, v in settings.items()}
    env.setdefault(env_name("defaults.rate_per_s"), "10000")
    env.setdefault(env_name("defaults.burst"), "10000")
    config = load_config(
        None,
        env=env,
        overrides={"model": str(model), "db": str(db), "host": "127.0.0.1", "port": free_port()},
    )
    server, gateway = build_server(config, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the server thread died"
        assert time.monotonic() < deadline, "the server did not start in 30 s"
        time.sleep(0.01)
    try:
        yield Live(f"http://127.0.0.1:{config.port}", gateway, db)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive()


def probs_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model(x), dim=1)


def error_of(response: httpx.Response, status: int, code: str, param: str | None = None) -> str:
    """Check the JSON error shape; returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "param"}
    assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param
    return cast(str, body["error"]["message"])


def jacobian_like(digits: Dataset, seeds: int, rounds: int, *, eps: float = 0.02) -> torch.Tensor:
    """A synthetic theft stream: a few seeds, then small sign steps around them (Papernot-style augmentation)."""
    gen = torch.Generator().manual_seed(0)
    base = digits.x[:seeds]
    steps = [base] + [
        (base + eps * torch.randn(base.shape, generator=gen).sign()).clamp(0, 1) for _ in range(rounds)
    ]
    return torch.cat(steps).contiguous()


# ---------------------------------------------------------------------------------------------- tests


def test_health_auth_limits_and_validation_errors(model_dir: Path, digits: Dataset, tmp_path: Path) -> None:
    with serving(model_dir, tmp_path / "g.db", max_batch=8, max_body_bytes=20_000) as live:
        _, token = live.key("alice")
        revoked_id, revoked = live.key("gone")
        live.gateway.store.revoke("gone")
        blocked_id, blocked = live.key("stopped")
        with live.gateway.store.transaction() as tx:
            tx.block(blocked_id, "by hand")
        anon, c = live.client(), live.client(token)
        health = anon.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {
            "status": "ok",
            "model": model_dir.name,
            "input_shape": [1, 8, 8],
            "classes": 10,
        }
        x = digits.x[:2].tolist()
        error_of(anon.post("/v1/predict", json={"inputs": x}), 401, "missing_key", "Authorization")
        error_of(live.client("rk_" + "a" * 43).post("/v1/predict", json={"inputs": x}), 401, "unknown_key")
        assert anon.post("/v1/predict", json={"inputs": x}, headers={"X-API-Key": token}).status_code == 200
        error_of(live.client(revoked).post("/v1/predict", json={"inputs": x}), 403, "key_revoked")
        error_of(live.client(blocked).post("/v1/predict", json={"inputs": x}), 403, "key_blocked")
        error_of(anon.get("/metrics"), 401, "missing_key")
        error_of(anon.get("/openapi.json"), 401, "missing_key")
        # sizes: 413 on Content-Length and on a chunked body; 422 above max_batch
        big = {"inputs": digits.x[:100].tolist()}
        error_of(c.post("/v1/predict", json=big), 413, "body_too_large", "body")
        payload = httpx.Request("POST", live.url, json=big).content
        chunks = (payload[i : i + 4096] for i in range(0, len(payload), 4096))  # no Content-Length: chunked
        chunked = c.post("/v1/predict", content=chunks, headers={"Content-Type": "application/json"})
        error_of(chunked, 413, "body_too_large")
        msg = error_of(
            c.post("/v1/predict", json={"inputs": digits.x[:9].tolist()}), 422, "invalid_input", "inputs"
        )
        assert "batch limit of 8" in msg
        error_of(
            c.post("/v1/predict", content=b"inputs=1", headers={"Content-Type": "text/plain"}),
            415,
            "unsupported_media_type",
        )
        bad_inputs: list[tuple[Any, str, str]] = [
            ({"inputs": [[1.0, 2.0, 3.0]]}, "inputs", "shape [1, 3] does not fit"),
            ({"inputs": [["a"] * 64]}, "inputs", "must be a number"),
            ({"inputs": [[0.0] * 64, [0.0] * 63]}, "inputs", "not rectangular"),
            ({"inputs": [[1.5] * 64]}, "inputs", "outside the input range"),
            ({"inputs": []}, "inputs", "at least one"),
            ({"inputs": [0.0] * 64}, "inputs", "does not fit"),
            ({}, "inputs", "exactly one"),
            ({"inputs": x, "extra": 1}, "extra", "Extra inputs"),
            ({"inputs_b64": "AAAA", "dtype": "float32", "shape": [1, 64]}, "inputs_b64", "needs 256 bytes"),
            ({"inputs_b64": "***", "dtype": "uint8", "shape": [1, 64]}, "inputs_b64", "base64"),
            ({"inputs_b64": "AAAA", "shape": [1, 64]}, "dtype", "needs dtype"),
            ({"inputs_b64": "AAAA", "dtype": "float16", "shape": [1, 64]}, "dtype", "float32"),
            ({"inputs_b64": "AAAA", "dtype": "uint8", "shape": [1, 0]}, "shape", "positive"),
        ]
        nan = base64.b64encode(np.full((1, 64), np.nan, "<f4").tobytes()).decode()
        bad_inputs.append(
            ({"inputs_b64": nan, "dtype": "float32", "shape": [1, 1, 8, 8]}, "inputs_b64", "NaN")
        )
        for body, param, needle in bad_inputs:
            assert needle in error_of(c.post("/v1/predict", json=body), 422, "invalid_input", param), body
        broken = c.post("/v1/predict", content=b"{oops", headers={"Content-Type": "application/json"})
        message = error_of(broken, 422, "invalid_input", "body")
        assert "not valid JSON" in message
        assert "at character 1" in message
        error_of(c.get("/nowhere"), 404, "not_found")
        error_of(
            c.post("/v1/encrypted/predict", json={}), 404, "not_found"
        )  # the plain model is not encryptable
    log = Store(tmp_path / "g.db").log_rows()
    statuses = [r["status"] for r in log]
    assert statuses.count(200) == 1
    assert statuses.count(401) == 4
    assert statuses.count(413) == 2
    assert statuses.count(422) == len(bad_inputs) + 2
    assert statuses.count(415) == 1
    assert {r["code"] for r in log if r["status"] == 403} == {"key_revoked", "key_blocked"}
    assert all(r["rows"] == 0 for r in log if r["status"] != 200)  # refusals: no model work
    assert [r["key"] for r in log if r["status"] == 403] == ["gone", "stopped"]
    assert revoked_id != blocked_id


def test_full_scores_are_the_models_and_every_encoding_gives_the_same_answer(
    model_dir: Path, classifier: nn.Module, digits: Dataset, tmp_path: Path
) -> None:
    x = digits.x[:16]
    with serving(model_dir, tmp_path / "g.db", log_inputs="true") as live:
        _, token = live.key("alice")
        c = live.client(token)
        nested = c.post("/v1/predict", json={"inputs": x.tolist()})
        assert nested.status_code == 200
        body = nested.json()
        want = probs_of(classifier, x)
        assert torch.allclose(torch.tensor(body["scores"]), want, atol=1e-6)
        assert body["labels"] == want.argmax(dim=1).tolist()
        assert (body["output"], body["decision"], body["flags"], body["alarm"]) == ("full", "ok", None, None)
        flat = c.post("/v1/predict", json={"inputs": x.flatten(1).tolist()}).json()
        as_f32 = base64.b64encode(x.numpy().astype("<f4").tobytes()).decode()
        b64 = c.post(
            "/v1/predict", json={"inputs_b64": as_f32, "dtype": "float32", "shape": [16, 1, 8, 8]}
        ).json()
        for other in (flat, b64):
            assert other["scores"] == body["scores"]
            assert other["labels"] == body["labels"]
        x_u8 = (x * 255).round().to(torch.uint8)
        as_u8 = base64.b64encode(x_u8.numpy().tobytes()).decode()
        u8 = c.post("/v1/predict", json={"inputs_b64": as_u8, "dtype": "uint8", "shape": [16, 64]}).json()
        lists = c.post("/v1/predict", json={"inputs": (x_u8.double() / 255).tolist()}).json()
        assert u8["scores"] == lists["scores"]
        assert u8["labels"] == lists["labels"]
        # the client our attacks use reads this API unchanged
        http = HttpConfig(
            url=f"{live.url}/v1/predict", headers={"Authorization": f"Bearer {token}"}, num_classes=10
        )
        with HttpOracle(http) as oracle:
            assert torch.allclose(oracle.log_probs(x).exp(), want, atol=1e-5)
    log = Store(tmp_path / "g.db").log_rows()
    assert len(log) == 6
    assert all(r["status"] == 200 for r in log)
    first = log[0]
    assert first["request_id"] == body["request_id"]
    assert first["rows"] == 16
    assert first["bytes"] > 0
    assert first["input_sha256"] == [
        hashlib.sha256(row.numpy().astype("<f4").tobytes()).hexdigest() for row in x.flatten(1)
    ]
    assert first["inputs_kept"] is True


def test_output_modes_per_key(
    model_dir: Path, classifier: nn.Module, digits: Dataset, tmp_path: Path
) -> None:
    x = digits.x[:32]
    want = probs_of(classifier, x)
    with serving(model_dir, tmp_path / "g.db") as live:
        answers = {}
        for mode in ("labels", "topk:3", "round:2", "noise:0.05"):
            _, token = live.key(mode.replace(":", "-"), output=mode)
            response = live.client(token).post("/v1/predict", json={"inputs": x.tolist()})
            assert response.status_code == 200, response.text
            answers[mode] = response.json()
            assert answers[mode]["output"] == mode
            assert answers[mode]["labels"] == want.argmax(dim=1).tolist()  # every mode keeps the top-1 label
        _, labels_token = live.key("labels-oracle", output="labels")
        http = HttpConfig(
            url=f"{live.url}/v1/predict",
            headers={"X-API-Key": labels_token},
            output_kind="labels",
            num_classes=10,
        )
        with HttpOracle(http) as oracle:
            assert oracle.labels(x).tolist() == want.argmax(dim=1).tolist()
    assert answers["labels"]["scores"] is None
    topk = torch.tensor(answers["topk:3"]["scores"])
    assert ((topk > 0).sum(dim=1) == 3).all()
    kept = torch.zeros_like(want).scatter_(1, want.topk(3).indices, want.topk(3).values)
    assert torch.allclose(topk, kept / kept.sum(dim=1, keepdim=True), atol=1e-5)
    rounded = torch.tensor(answers["round:2"]["scores"], dtype=torch.float64)
    assert torch.allclose(rounded * 100, (rounded * 100).round(), atol=1e-4)
    assert (rounded - want.double()).abs().max() <= 0.005 + 1e-5
    noisy = torch.tensor(answers["noise:0.05"]["scores"])
    assert (noisy >= 0).all()
    assert torch.allclose(noisy.sum(dim=1), torch.ones(32), atol=1e-5)
    assert (noisy - want).abs().max() > 0.01
    assert noisy.argmax(dim=1).tolist() == want.argmax(dim=1).tolist()


def test_budget_and_rate_limit(model_dir: Path, digits: Dataset, tmp_path: Path) -> None:
    with serving(model_dir, tmp_path / "g.db") as live:
        _, budget_token = live.key("budget", budget=10)
        _, slow_token = live.key("slow", rate_per_s=0.5, burst=2)
        c = live.client(budget_token)
        assert c.post("/v1/predict", json={"inputs": digits.x[:6].tolist()}).status_code == 200
        msg = error_of(c.post("/v1/predict", json={"inputs": digits.x[:6].tolist()}), 403, "budget_exhausted")
        assert "used 6 of its budget of 10" in msg
        assert c.post("/v1/predict", json={"inputs": digits.x[:4].tolist()}).status_code == 200
        error_of(c.post("/v1/predict", json={"inputs": digits.x[:1].tolist()}), 403, "budget_exhausted")
        assert live.gateway.store.key_by_name("budget").used == 10
        slow = live.client(slow_token)
        assert [
            slow.post("/v1/predict", json={"inputs": digits.x[:1].tolist()}).status_code for _ in range(2)
        ] == [200, 200]
        limited = slow.post("/v1/predict", json={"inputs": digits.x[:1].tolist()})
        assert "0.5 requests/s" in error_of(limited, 429, "rate_limited")
        assert limited.headers["Retry-After"] == "2"


def _defended(folder: Path) -> DefendedModel:
    model, _ = load_defended(folder)
    return model


@pytest.mark.parametrize("policy", ["flag", "reject"])
def test_detection_policies_with_feature_squeezing(
    squeeze_dir: Path, digits: Dataset, tmp_path: Path, policy: str
) -> None:
    defended = _defended(squeeze_dir)
    noise = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x = torch.cat([digits.x[1500:1520], noise])
    rejects = defended.rejects(x)
    assert 0 < int(rejects.sum()) < len(x)  # a mix, so the test can tell rows apart
    with serving(squeeze_dir, tmp_path / "g.db", detection__policy=policy) as live:
        _, token = live.key("alice")
        body = live.client(token).post("/v1/predict", json={"inputs": x.tolist()}).json()
    assert [f["adversarial"] for f in body["flags"]] == rejects.tolist()
    assert all((f["score"] > 0) == f["adversarial"] for f in body["flags"])
    want = probs_of(defended, x)
    if policy == "flag":
        assert body["decision"] == "flagged"
        assert torch.allclose(torch.tensor(body["scores"]), want, atol=1e-6)
    else:
        assert body["decision"] == "rejected_rows"
        for i, bad in enumerate(rejects.tolist()):
            assert (body["labels"][i] == -1) == bad
            assert (body["scores"][i] is None) == bad
            if not bad:
                assert body["labels"][i] == int(want[i].argmax())
    log = Store(tmp_path / "g.db").log_rows()
    assert log[-1]["decision"] == body["decision"]
    assert log[-1]["detector_scores"] == pytest.approx([f["score"] for f in body["flags"]])


def test_reform_runs_only_flagged_rows_through_the_magnet_reformer(
    magnet_dir: Path, squeeze_dir: Path, digits: Dataset, tmp_path: Path
) -> None:
    defended = _defended(magnet_dir)
    noise = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    x = torch.cat([digits.x[1500:1520], noise])
    rejects = defended.rejects(x)
    assert 0 < int(rejects.sum()) < len(x)
    with serving(magnet_dir, tmp_path / "g.db", detection__policy="reform") as live:
        _, token = live.key("alice")
        body = live.client(token).post("/v1/predict", json={"inputs": x.tolist()}).json()
    assert body["decision"] == "reformed"
    assert [f["adversarial"] for f in body["flags"]] == rejects.tolist()
    scores = torch.tensor(body["scores"])
    reformed, plain = probs_of(defended, x), probs_of(defended.classifier, x)
    assert torch.allclose(scores[rejects], reformed[rejects], atol=1e-6)
    assert torch.allclose(scores[~rejects], plain[~rejects], atol=1e-6)
    config = load_config(
        None,
        env={env_name("detection.policy"): "reform"},
        overrides={"model": str(squeeze_dir), "db": str(tmp_path / "other.db")},
    )
    with pytest.raises(ConfigError, match=r"detection\.policy .*MagNet reformer"):
        Gateway(config)


@pytest.mark.parametrize("on_alarm", ["alert", "labels", "block"])
def test_prada_alarm_policies(model_dir: Path, digits: Dataset, tmp_path: Path, on_alarm: str) -> None:
    stream = jacobian_like(digits, seeds=20, rounds=12)
    with serving(model_dir, tmp_path / "g.db", prada__min_samples=30, prada__on_alarm=on_alarm) as live:
        key_id, token = live.key("thief")
        c = live.client(token)
        answers = [c.post("/v1/predict", json={"inputs": batch.tolist()}) for batch in stream.split(10)]
        statuses = [a.status_code for a in answers]
        first = next(
            i for i, a in enumerate(answers) if a.status_code != 200 or a.json()["alarm"] is not None
        )
        assert 2 < first < len(answers) - 1  # PRADA needed min_samples distances, then raised its alarm
        assert all(a.json()["decision"] == "ok" and a.json()["output"] == "full" for a in answers[:first])
        if on_alarm == "block":
            assert statuses[first:] == [403] * (len(answers) - first)
            assert "PRADA" in error_of(answers[first], 403, "key_blocked")
            key = live.gateway.store.key_by_name("thief")
            assert key.state == "blocked"
            assert "PRADA" in (key.reason or "")
            live.gateway.store.unblock("thief")  # what `ramparts gateway keys unblock` does
            again = c.post("/v1/predict", json={"inputs": digits.x[:5].tolist()})
            assert again.status_code == 200
            assert again.json()["decision"] == "ok"
            assert live.gateway.prada is not None
            assert live.gateway.prada.stats(str(key_id))["queries"] == 5  # PRADA state starts afresh
        else:
            assert set(statuses) == {200}
            alarm = answers[first].json()
            assert alarm["decision"] == "alert"
            assert alarm["alarm"]["statistic"] < alarm["alarm"]["delta"] == 0.9
            later = [a.json() for a in answers[first:]]
            if on_alarm == "labels":
                assert all(a["scores"] is None and a["output"] == "labels" for a in later)
            else:
                assert all(a["scores"] is not None and a["output"] == "full" for a in later)
    log = [r for r in Store(tmp_path / "g.db").log_rows() if r["key"] == "thief"]
    assert log[first]["alarm"]["statistic"] < 0.9
    assert all(r["alarm"] is None for r in log[:first])
    assert log[first]["status"] == (403 if on_alarm == "block" else 200)


def test_prada_state_survives_a_restart_and_follows_commit_order(
    model_dir: Path, digits: Dataset, tmp_path: Path
) -> None:
    stream = jacobian_like(digits, seeds=20, rounds=4)
    db = tmp_path / "g.db"
    with serving(model_dir, db, prada__min_samples=30) as live:
        key_id, token = live.key("thief")

        def send(batches: list[torch.Tensor]) -> None:
            with live.client(token) as c:
                for batch in batches:
                    assert c.post("/v1/predict", json={"inputs": batch.tolist()}).status_code == 200

        batches = list(stream.split(5))
        threads = [
            threading.Thread(target=send, args=(batches[i::4],)) for i in range(4)
        ]  # concurrent requests
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert live.gateway.prada is not None
        before = live.gateway.prada.stats(str(key_id))
        assert before["queries"] == len(stream)
        assert before["alarms"] > 0
    replayed = Prada(delta=0.9, min_samples=30)
    store = Store(db)
    for x, labels in store.stream(key_id, 0):  # the stored stream, in commit order, gives the same state
        replayed.observe(str(key_id), torch.from_numpy(x.copy()), torch.from_numpy(labels.copy()))
    assert replayed.stats(str(key_id)) == before
    with serving(model_dir, db, prada__min_samples=30) as restarted:
        assert restarted.gateway.prada is not None
        assert restarted.gateway.prada.stats(str(key_id)) == before
    assert store.prada_stats()[key_id]["statistic"] == before["statistic"]


def test_metrics_and_openapi(model_dir: Path, digits: Dataset, tmp_path: Path) -> None:
    with serving(model_dir, tmp_path / "g.db") as live:
        _, token = live.key("ops")
        c = live.client(token)
        for n in (3, 4, 5):
            assert c.post("/v1/predict", json={"inputs": digits.x[:n].tolist()}).status_code == 200
        error_of(c.post("/v1/predict", json={"inputs": []}), 422, "invalid_input")
        metrics = c.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
        requests = {
            (s.labels["route"], s.labels["status"], s.labels["decision"]): s.value
            for s in families["ramparts_gateway_requests"].samples
            if s.name.endswith("_total")
        }
        assert requests[("/v1/predict", "200", "ok")] == 3
        assert requests[("/v1/predict", "422", "none")] == 1
        rows = [s.value for s in families["ramparts_gateway_rows"].samples if s.name.endswith("_total")]
        assert rows == [12]
        latency = families["ramparts_gateway_request_seconds"].samples
        assert next(s.value for s in latency if s.name.endswith("_count")) == 3
        assert "ramparts_gateway_blocked_keys" in families
        assert "ramparts_gateway_prada_alarms" in families
        log_rows = next(
            s.value for s in families["ramparts_gateway_log_rows"].samples if s.name.endswith("_total")
        )
        assert log_rows == 5  # 3 answers, 1 refusal, this /metrics request
        spec = c.get("/openapi.json")
        assert spec.status_code == 200
        doc = spec.json()
        assert {"/v1/predict", "/healthz", "/metrics"} <= set(doc["paths"])
        assert "/v1/encrypted/predict" not in doc["paths"]
        assert {"PredictRequest", "PredictResponse", "ErrorBody"} <= set(doc["components"]["schemas"])
        assert "422" in doc["paths"]["/v1/predict"]["post"]["responses"]
    log = Store(tmp_path / "g.db").log_rows()
    assert [r["route"] for r in log[-2:]] == ["/metrics", "/openapi.json"]


def test_encrypted_route_returns_ciphertexts_the_client_decrypts(digits: Dataset, tmp_path: Path) -> None:
    from ramparts.protection import he_eval as he
    from ramparts.protection.he_files import load_ciphertexts, save_ciphertexts, save_public_context
    from ramparts.protection.he_model import compile_model
    from ramparts.protection.he_params import make_context
    from ramparts.protection.poly import polynomialize, save_encryptable

    config = {"in_channels": 1, "input_size": 8, "num_classes": 10, "hidden": [16]}
    torch.manual_seed(0)
    model = polynomialize(build("mlp", **config), "square")
    train(
        model,
        digits.subset(range(1000)),
        config=TrainConfig(epochs=3, batch_size=64, lr=1e-3, seed=0),
        progress=False,
    )
    model.eval()
    folder = tmp_path / "poly"
    save_encryptable(model, folder, arch="mlp", config=config, activation="square", extra=EXTRA)
    program = compile_model(model, (1, 8, 8))
    params = he.plan_for(program, "batch", n=4)
    secret = make_context(params, galois_keys=False, n_threads=1)
    save_public_context(secret, tmp_path / "public.ctx", keys=("relin",), params=params)
    x = digits.x[1500:1504]
    batch = he.encrypt_inputs(secret, x.double(), packing="batch", encoding=program.input_encoding("batch"))
    save_ciphertexts(batch, tmp_path / "in.ct", context=secret, role="inputs")
    body = {
        "public_context_b64": base64.b64encode((tmp_path / "public.ctx").read_bytes()).decode(),
        "inputs_b64": base64.b64encode((tmp_path / "in.ct").read_bytes()).decode(),
    }
    with serving(folder, tmp_path / "g.db") as live:
        _, token = live.key("client")
        _, labels_token = live.key("labels-only", output="labels")
        c = live.client(token)
        assert "/v1/encrypted/predict" in c.get("/openapi.json").json()["paths"]
        answer = c.post("/v1/encrypted/predict", json=body)
        assert answer.status_code == 200, answer.text
        error_of(
            live.client(labels_token).post("/v1/encrypted/predict", json=body), 403, "encrypted_not_allowed"
        )
        bad = {**body, "public_context_b64": base64.b64encode(b"not a context").decode()}
        error_of(c.post("/v1/encrypted/predict", json=bad), 422, "invalid_input", "public_context_b64")
        assert live.gateway.store.key_by_name("client").used == 4
    (tmp_path / "out.ct").write_bytes(base64.b64decode(answer.json()["outputs_b64"]))
    logits = he.decrypt_outputs(secret, load_ciphertexts(tmp_path / "out.ct", secret, role="outputs"))
    with torch.no_grad():
        plain = model(x).double()
    assert (logits - plain).abs().max() < 1e-2
    rows = [
        r for r in Store(tmp_path / "g.db").log_rows() if r["status"] == 200 and r["route"].startswith("/v1/")
    ]
    assert [(r["decision"], r["rows"]) for r in rows] == [("encrypted", 4)]
