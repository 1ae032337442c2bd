"""`ramparts shill` end to end on small synthetic ratings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ramparts.cli.main import app

runner = CliRunner(env={"COLUMNS": "240", "NO_COLOR": "1"})
SMALL = ["--users", "300", "--items", "600", "--epochs", "60"]


def test_average_push_moves_the_target_and_pca_finds_the_fakes(tmp_path: Path) -> None:
    result = runner.invoke(app, ["shill", *SMALL, "--sizes", "0.05,0.1", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    small, large = summary["rows"]
    assert [small["fake_users"], large["fake_users"]] == [15, 30]
    assert 0 < small["prediction_shift"] < large["prediction_shift"], "more fake users push further"
    assert large["hr@10_after"] >= large["hr@10_before"]
    assert large["detection"]["recall"] >= 0.7
    assert summary["model"]["test_rmse"] < 1.0
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == summary["rows"]


def test_nuke_table_on_a_movielens_file(tmp_path: Path) -> None:
    gen = __import__("random").Random(0)
    lines = [
        f"{u}\t{i}\t{gen.randint(1, 5)}\t0" for u in range(1, 61) for i in range(1, 41) if gen.random() < 0.4
    ]
    (tmp_path / "u.data").write_text("\n".join(lines) + "\n")
    result = runner.invoke(
        app,
        [
            "shill",
            "--ratings",
            str(tmp_path / "u.data"),
            "--intent",
            "nuke",
            "--attack",
            "random",
            "--sizes",
            "0.1",
            "--epochs",
            "30",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "random nuke" in result.output
    assert "prediction shift" in result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--sizes", "2"], "--sizes"), (["--attack", "sybil"], "bandwagon"), (["--intent", "pull"], "intent")],
)
def test_user_errors(args: list[str], needle: str) -> None:
    result = runner.invoke(app, ["shill", *SMALL, *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
