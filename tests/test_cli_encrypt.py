"""`ramparts encrypt` end to end on the digits: train, keygen, encrypt, serve (public key only), decrypt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ramparts.cli._common import load_splits
from ramparts.cli.encrypt import encrypt_app
from ramparts.protection.poly import load_encryptable
from ramparts.training import TrainConfig, train
from ramparts.zoo import build, save_model

runner = CliRunner(env={"COLUMNS": "240", "NO_COLOR": "1"})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny x^2 MLP (64-16-10) trained by `encrypt train`."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("model")
    result = runner.invoke(
        encrypt_app, ["train", "--hidden", "16", "--epochs", "10", "--out", str(folder), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["activation"] == "square"
    assert summary["accuracy"] > 0.85
    assert summary["relu_accuracy"] > 0.85
    return folder


def _plain_predictions(model_dir: Path, n: int) -> list[int]:
    model, _ = load_encryptable(model_dir)
    x = load_splits("digits")[1].x[:n]
    with torch.no_grad():
        return model(x).argmax(dim=1).tolist()


@pytest.mark.parametrize(("packing", "n"), [("batch", 60), pytest.param("query", 3, marks=pytest.mark.slow)])
def test_round_trip_agrees_with_plaintext(model_dir: Path, tmp_path: Path, packing: str, n: int) -> None:
    keys, threads = tmp_path / "keys", ["--threads", "1"]
    result = runner.invoke(
        encrypt_app, ["keygen", "--model", str(model_dir), "--packing", packing, "--out", str(keys), *threads]
    )
    assert result.exit_code == 0, result.output
    info = json.loads((keys / "params.json").read_text())
    assert info["server_keys"] == (["relin"] if packing == "batch" else ["relin", "galois"])
    assert all(info["key_bytes"][k] > 0 for k in info["server_keys"])
    assert "relin keys (server)" in result.output
    enc = runner.invoke(
        encrypt_app,
        ["encrypt", "--keys", str(keys), "--limit", str(n), "--out", str(tmp_path / "in.ct"), *threads],
    )
    assert enc.exit_code == 0, enc.output
    served = runner.invoke(
        encrypt_app,
        [
            "serve",
            "--model",
            str(model_dir),
            "--public",
            str(keys / "public.ctx"),
            "--in",
            str(tmp_path / "in.ct"),
            "--out",
            str(tmp_path / "out.ct"),
            "--json",
            *threads,
        ],
    )
    assert served.exit_code == 0, served.output
    assert json.loads(served.stdout)["n"] == n
    labels = tmp_path / "in.ct.labels.json"
    dec = runner.invoke(
        encrypt_app,
        [
            "decrypt",
            "--keys",
            str(keys),
            "--in",
            str(tmp_path / "out.ct"),
            "--labels",
            str(labels),
            "--out",
            str(tmp_path / "pred.json"),
            "--json",
        ],
    )
    assert dec.exit_code == 0, dec.output
    summary = json.loads(dec.stdout)
    assert summary["predictions"] == _plain_predictions(model_dir, n)
    truth = json.loads(labels.read_text())["labels"]
    expected = sum(p == t for p, t in zip(summary["predictions"], truth, strict=True)) / n
    assert summary["accuracy"] == pytest.approx(expected)
    assert len(json.loads((tmp_path / "pred.json").read_text())["logits"]) == n


def test_server_refuses_secret_context_and_other_keys(model_dir: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        result = runner.invoke(
            encrypt_app,
            ["keygen", "--model", str(model_dir), "--out", str(tmp_path / name), "--threads", "1"],
        )
        assert result.exit_code == 0, result.output
    enc = runner.invoke(
        encrypt_app,
        ["encrypt", "--keys", str(tmp_path / "a"), "--limit", "5", "--out", str(tmp_path / "in.ct")],
    )
    assert enc.exit_code == 0, enc.output
    serve = [
        "serve",
        "--model",
        str(model_dir),
        "--in",
        str(tmp_path / "in.ct"),
        "--out",
        str(tmp_path / "o.ct"),
    ]
    secret = runner.invoke(encrypt_app, [*serve, "--public", str(tmp_path / "a" / "secret.ctx")])
    assert secret.exit_code == 2
    assert "SECRET context" in secret.output
    assert "Traceback" not in secret.output
    other = runner.invoke(encrypt_app, [*serve, "--public", str(tmp_path / "b" / "public.ctx")])
    assert other.exit_code == 2
    assert "encrypted with another key" in " ".join(other.output.split())
    inputs_as_result = runner.invoke(
        encrypt_app, ["decrypt", "--keys", str(tmp_path / "a"), "--in", str(tmp_path / "in.ct")]
    )
    assert inputs_as_result.exit_code == 2
    assert "expected encrypted outputs" in inputs_as_result.output


def test_relu_model_is_refused_with_the_layer_named(tmp_path: Path) -> None:
    train_ds, _ = load_splits("digits")
    config = {"in_channels": 1, "input_size": 8, "num_classes": 10, "hidden": [8]}
    model = build("mlp", **config)
    train(model, train_ds, config=TrainConfig(epochs=1, device="cpu"), progress=False)
    save_model(model, tmp_path / "relu", arch="mlp", config=config, extra={"input_shape": [1, 8, 8]})
    result = runner.invoke(
        encrypt_app, ["keygen", "--model", str(tmp_path / "relu"), "--out", str(tmp_path / "k")]
    )
    assert result.exit_code == 2
    assert "ReLU" in result.output
    assert "Square" in result.output


def test_info_shows_headers_and_detects_tampering(model_dir: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert (
        runner.invoke(encrypt_app, ["keygen", "--model", str(model_dir), "--out", str(keys)]).exit_code == 0
    )
    shown = runner.invoke(encrypt_app, ["info", str(keys / "public.ctx"), "--json"])
    assert shown.exit_code == 0, shown.output
    header = json.loads(shown.stdout)
    assert header["kind"] == "public-context"
    assert header["keys"] == ["relin"]
    assert header["key_bytes"]["relin"] > 0
    data = bytearray((keys / "public.ctx").read_bytes())
    data[-7] ^= 0xFF
    (keys / "public.ctx").write_bytes(bytes(data))
    tampered = runner.invoke(encrypt_app, ["info", str(keys / "public.ctx")])
    assert tampered.exit_code == 2
    assert "checksum mismatch" in tampered.output
