"""`ramparts membership` end to end on a slice of the digits."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ramparts.cli.main import app

runner = CliRunner(env={"COLUMNS": "240", "NO_COLOR": "1"})
FAST = [
    "--records",
    "600",
    "--shadows",
    "4",
    "--epochs",
    "5",
    "--arch-config",
    '{"hidden": [32]}',
    "--device",
    "cpu",
]


def test_membership_json_and_run_folder(tmp_path: Path) -> None:
    args = [
        "membership",
        *FAST,
        "--attacks",
        "loss,lira:online=false+signal=hinge,rmia",
        "--out",
        str(tmp_path),
    ]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [r["label"] for r in summary["attacks"]] == ["loss", "lira:online=false+signal=hinge", "rmia"]
    assert summary["attacks"][1]["config"]["online"] is False
    assert summary["records"] + summary["population"] == 600
    for row in summary["attacks"]:
        assert 0.0 <= row["metrics"]["auc"] <= 1.0
    assert (tmp_path / "roc.png").read_bytes().startswith(b"\x89PNG")
    assert len(list((tmp_path / "models").glob("shadow-*.safetensors"))) == 5
    again = runner.invoke(app, [*args, "--json"])  # the models are loaded back, the numbers equal
    assert again.exit_code == 0, again.output
    assert [r["metrics"] for r in json.loads(again.stdout)["attacks"]] == [
        r["metrics"] for r in summary["attacks"]
    ]


def test_membership_table_and_user_errors() -> None:
    table = runner.invoke(app, ["membership", *FAST, "--attacks", "loss,gap"])
    assert table.exit_code == 0, table.output
    assert "TPR@1%" in table.output
    assert "gap" in table.output
    bad = runner.invoke(app, ["membership", *FAST, "--attacks", "lira,nope"])
    assert bad.exit_code != 0
    assert "nope" in bad.output
    assert "rmia" in bad.output
    assert "Traceback" not in bad.output
    worse = runner.invoke(app, ["membership", *FAST, "--attacks", "lira:views=1"])
    assert worse.exit_code != 0
    assert "Traceback" not in worse.output
    half = runner.invoke(app, ["membership", *FAST, "--precision", "fp16"])
    assert half.exit_code != 0
    assert "--precision" in half.output
    assert "bf16" in half.output
    assert "Traceback" not in half.output


def test_membership_bf16_shadow_training() -> None:
    result = runner.invoke(app, ["membership", *FAST, "--attacks", "lira", "--precision", "bf16", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["recipe"]["precision"] == "bf16"
    assert summary["recipe"]["compiled"] is False
    assert 0.0 <= summary["attacks"][0]["metrics"]["auc"] <= 1.0


def test_membership_dp_loop_writes_the_tradeoff(tmp_path: Path) -> None:
    args = ["membership", *FAST, "--attacks", "lira,lira:online=false", "--dp-epsilons", "2,8"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["dp"]
    assert [r["epsilon"] for r in rows] == [2.0, 8.0]
    for row in rows:
        assert 0 < row["spent_epsilon"] <= row["epsilon"] + 1e-6
        assert 0.0 <= row["online"]["auc"] <= 1.0
    assert (tmp_path / "dp.png").read_bytes().startswith(b"\x89PNG")
    bad = runner.invoke(app, [*args[:-1], "0,x"])
    assert bad.exit_code != 0
    assert "--dp-epsilons" in bad.output


def test_membership_of_a_saved_model(tmp_path: Path) -> None:
    trained = runner.invoke(
        app, ["train", "--arch", "mlp", "--epochs", "3", "--out", str(tmp_path), "--json"]
    )
    assert trained.exit_code == 0, trained.output
    args = ["membership", "--model", str(tmp_path), "--shadows", "4", "--epochs", "3", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--attacks", "loss,lira:online=false", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["target"] == str(tmp_path)
    assert summary["records"] == 1797, "members (the train split) and non-members (the test split)"
    assert summary["recipe"]["arch"] == "mlp"
    assert summary["target_train_accuracy"] > summary["target_test_accuracy"] - 0.05
    for row in summary["attacks"]:
        assert row["metrics"]["n_members"] == 1348
        assert 0.0 <= row["metrics"]["auc"] <= 1.0
