"""`ramparts steal` end to end on the digits data, through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ramparts.cli.main import app
from ramparts.data import shared_data_dir
from ramparts.theft import THEFTS

runner = CliRunner(env={"COLUMNS": "240", "NO_COLOR": "1"})


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("victim")
    result = runner.invoke(app, ["train", "--arch", "mlp", "--epochs", "3", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.skipif("jacobian" not in THEFTS, reason="the Jacobian theft is not registered")
def test_steal_json_reports_fidelity_and_queries(victim: Path) -> None:
    args = [
        "steal",
        "--model",
        str(victim),
        "--theft",
        "jacobian",
        "--seeds",
        "40",
        "-p",
        "rounds=2",
        "--json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["attack"] == "jacobian"
    assert summary["queries"] >= 40  # every seed is labelled by the oracle
    assert 0.0 <= summary["fidelity"] <= 1.0
    assert summary["fidelity"] > 0.3  # well above the 10% of a guess
    assert summary["curve"], "no fidelity-vs-queries points"


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["--theft", "nope"], "theft"),
        (["--seeds", "100000"], "--seeds"),
        (["-p", "nosuch=1"], "--param"),
    ],
)
def test_steal_user_errors(victim: Path, args: list[str], name: str) -> None:
    result = runner.invoke(app, ["steal", "--model", str(victim), *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert name in result.output


def test_knockoff_from_another_distribution(victim: Path) -> None:
    """CIFAR-10 images, converted to the victim's 1x8x8 input, as Knockoff's transfer set."""
    if shared_data_dir() is None:
        pytest.skip("the shared CIFAR-10 data is absent")
    args = ["steal", "--model", str(victim), "--theft", "knockoff", "--seed-data", "cifar10"]
    result = runner.invoke(app, [*args, "-p", "budget=300", "-p", "epochs=5", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["queries"] == 300
    assert summary["fidelity"] > 0.2
