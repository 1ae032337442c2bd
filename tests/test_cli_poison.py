"""`ramparts poison` end to end on the digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ramparts.cli.main import app

runner = CliRunner(env={"COLUMNS": "240", "NO_COLOR": "1"})
FAST = ["--epochs", "4", "--device", "cpu", "--fractions", "0.05,0.1"]


def test_backdoor_sweep_then_sanitise(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["poison", *FAST, "--attack", "badnets:patch_size=2", "--out", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [p["fraction"] for p in summary["curve"]] == pytest.approx([0.0, 0.05, 0.1], abs=1e-3)
    assert summary["curve"][-1]["attack_success"] > 0.5
    assert summary["curve"][-1]["attack_success"] >= summary["curve"][1]["attack_success"] - 0.1
    assert summary["curve"][0]["attack_success"] < 0.2, "the clean pipeline ignores the trigger"
    defense = summary["defense"]
    assert defense["method"] == "spectral"
    assert defense["expected_fraction"] == 0.1
    assert defense["detection"]["poisons"] == summary["curve"][-1]["n_poison"]
    assert defense["after"]["records_left"] == summary["train_records"] - defense["detection"]["flagged"]
    assert (tmp_path / "poisoning.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((tmp_path / "results.json").read_text())["curve"] == summary["curve"]


def test_label_flips_on_a_linear_pipeline_table() -> None:
    result = runner.invoke(
        app, ["poison", *FAST, "--attack", "flip_random", "--arch", "linear", "--defense", "none"]
    )
    assert result.exit_code == 0, result.output
    assert "flip_random" in result.output
    assert "clean accuracy" in result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--fractions", "1.5"], "--fractions"),
        (["--attack", "nope"], "badnets"),
        (["--defense", "magic"], "--defense"),
        (["--arch", "resnet1000"], "--arch"),
        (["--attack", "flip_pair:source=1+target=1"], "target"),
    ],
)
def test_user_errors(args: list[str], needle: str) -> None:
    result = runner.invoke(app, ["poison", *FAST, *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
