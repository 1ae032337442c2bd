"""Gateway configuration: defaults < TOML < environment < flags, and every bad value refused at start naming the
key, where it came from and the fix (through `load_config`, the `Gateway` and `ramparts serve`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from ramparts.cli.main import app
from ramparts.gateway.config import FIELDS, ConfigError, env_name, load_config
from ramparts.gateway.service import Gateway
from ramparts.zoo import build, save_model

runner = CliRunner(env={"COLUMNS": "240", "NO_COLOR": "1"})
CONFIG = {"in_channels": 1, "input_size": 8, "num_classes": 10, "hidden": [8]}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny MLP is enough: configuration is checked before any prediction."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    save_model(build("mlp", **CONFIG), folder, arch="mlp", config=CONFIG, extra={"input_shape": [1, 8, 8]})
    return folder


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_file_env_and_flags_in_order_of_precedence(model_dir: Path, tmp_path: Path) -> None:
    file = _write(
        tmp_path / "gateway.toml",
        f'model = "{model_dir}"\nport = 8100\nmax_batch = 32\n'
        '[prada]\non_alarm = "labels"\nmin_samples = 50\n[defaults]\noutput = "topk:3"\nrate_per_s = 5\n',
    )
    env = {env_name("port"): "8200", env_name("prada.on_alarm"): "block", env_name("log_inputs"): "yes"}
    config = load_config(file, env=env, overrides={"port": 8300, "db": str(tmp_path / "x.db"), "host": None})
    assert config.port == 8300  # flag beats environment beats file
    assert config.sources["port"] == "--port"
    assert config.prada.on_alarm == "block"
    assert config.sources["prada.on_alarm"] == "environment variable RAMPARTS_GATEWAY_PRADA__ON_ALARM"
    assert config.log_inputs is True
    assert config.max_batch == 32
    assert config.sources["max_batch"] == str(file)
    assert config.prada.min_samples == 50
    assert config.defaults.output == "topk:3"
    assert config.defaults.rate_per_s == 5.0  # a TOML integer for a float key
    assert config.host == "127.0.0.1"  # default (the None flag was not given)
    assert config.source("host") == "default"
    assert config.db == str(tmp_path / "x.db")
    assert config.prada.delta == FIELDS["prada.delta"].default
    assert config.summary()["input_range"] == [0.0, 1.0]
    ranged = load_config(None, env={env_name("model"): str(model_dir), env_name("input_range"): "-1,1"})
    assert ranged.input_range == (-1.0, 1.0)
    assert ranged.sources["model"] == "environment variable RAMPARTS_GATEWAY_MODEL"


@pytest.mark.parametrize(
    ("toml", "env", "needles"),
    [
        ('colour = "blue"\n', {}, ["colour", "unknown key", "gateway.toml", "Fix:"]),
        ("[prada]\nwindow = 3\n", {}, ["prada.window", "unknown key", "gateway.toml"]),
        ('port = "eighty"\n', {}, ["port", "gateway.toml", "an integer in [0, 65535]", "'eighty'"]),
        ("max_batch = 0\n", {}, ["max_batch", "gateway.toml", "an integer in [1, 100000]"]),
        ("log_inputs = 1\n", {}, ["log_inputs", "true or false"]),
        ("input_range = [1.0, 0.0]\n", {}, ["input_range", "low < high"]),
        ('[detection]\npolicy = "maybe"\n', {}, ["detection.policy", "off, flag, reform, reject", "'maybe'"]),
        ('[defaults]\noutput = "blurry:2"\n', {}, ["defaults.output", "topk:K"]),
        ("prada = 3\n", {}, ["prada", "a [prada] table"]),
        (
            "",
            {"RAMPARTS_GATEWAY_PORT": "80x"},
            ["port", "environment variable RAMPARTS_GATEWAY_PORT", "'80x'"],
        ),
        (
            "",
            {"RAMPARTS_GATEWAY_PRADA__DELTA": "1.5"},
            ["prada.delta", "RAMPARTS_GATEWAY_PRADA__DELTA", "(0, 1)"],
        ),
        ("", {"RAMPARTS_GATEWAY_LOG_INPUTS": "perhaps"}, ["log_inputs", "RAMPARTS_GATEWAY_LOG_INPUTS"]),
        ("", {"RAMPARTS_GATEWAY_TIMEOUT": "3"}, ["RAMPARTS_GATEWAY_TIMEOUT", "unknown setting", "Fix:"]),
        ("port = \n", {}, ["not valid TOML", "gateway.toml"]),
    ],
)
def test_bad_values_name_the_key_and_the_source(
    model_dir: Path, tmp_path: Path, toml: str, env: dict[str, str], needles: list[str]
) -> None:
    file = _write(tmp_path / "gateway.toml", f'model = "{model_dir}"\n{toml}')
    with pytest.raises(ConfigError) as caught:
        load_config(file, env=env)
    for needle in needles:
        assert needle in str(caught.value)


def test_missing_model_is_refused_naming_its_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model \(from default\): required.*--model"):
        load_config(None, env={})
    file = _write(tmp_path / "g.toml", f'model = "{tmp_path / "nowhere"}"\n')
    with pytest.raises(ConfigError, match=r"model \(from .*g\.toml\): expected an existing model"):
        load_config(file, env={})
    with pytest.raises(ConfigError, match=r"model \(from --model\)"):
        load_config(file, env={}, overrides={"model": str(tmp_path / "also-nowhere")})
    with pytest.raises(ConfigError, match=r"config: expected a TOML file"):
        load_config(tmp_path / "missing.toml", env={})


def test_the_gateway_refuses_what_the_model_cannot_serve(model_dir: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "g.db")
    env = {env_name("detection.policy"): "reject"}
    config = load_config(None, env=env, overrides={"model": str(model_dir), "db": db})
    with pytest.raises(ConfigError) as caught:
        Gateway(config)
    message = str(caught.value)
    assert "detection.policy (from environment variable RAMPARTS_GATEWAY_DETECTION__POLICY)" in message
    assert "without detectors" in message
    assert "ramparts harden" in message
    topk = load_config(
        None, env={env_name("defaults.output"): "topk:11"}, overrides={"model": str(model_dir), "db": db}
    )
    with pytest.raises(ConfigError, match=r"defaults\.output .*: expected an output mode this model serves"):
        Gateway(topk)
    not_a_model = tmp_path / "broken"
    not_a_model.mkdir()
    (not_a_model / "model.json").write_text(json.dumps({"arch": "no-such-arch"}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"model \(from --model\): expected a model Ramparts can load"):
        Gateway(load_config(None, env={}, overrides={"model": str(not_a_model), "db": db}))


def test_serve_refuses_a_bad_config_in_one_line(model_dir: Path, tmp_path: Path) -> None:
    file = _write(tmp_path / "gateway.toml", f'model = "{model_dir}"\n[prada]\non_alarm = "shout"\n')
    result = runner.invoke(app, ["serve", "--config", str(file)])
    assert result.exit_code == 2
    output: Any = result.output
    assert "prada.on_alarm" in output
    assert str(file) in output
    assert "alert, labels, block" in output
    assert "Traceback" not in output
    result = runner.invoke(
        app, ["serve", "--model", str(tmp_path / "nope")], env={"RAMPARTS_GATEWAY_PORT": "1"}
    )
    assert result.exit_code == 2
    assert "model (from --model)" in result.output
