"""Tests for `ramparts audit --profile/--config/--fail-under` on a tiny audit (10 digits, FGSM, one epoch)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ramparts.cli.main import app

runner = CliRunner(env={"COLUMNS": "240", "NO_COLOR": "1"})

# Every section but the evasion battery off, from the config file.
TINY = """
n = 10
epochs = 1
attacks = ["fgsm"]
eps_grid = ["8/255", "16/255"]
blackbox = "none"
theft = "none"
membership_shadows = 0
poisoning_fractions = []
encryption = false
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "audit.toml"
    path.write_text(TINY, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run_dir(config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny audit whose gate fails on two of three clauses (later runs resume it)."""
    out = tmp_path_factory.mktemp("run")
    gate = ["robust_accuracy@linf:8/255=0.99,clean_accuracy>=0.1", "robust_accuracy@16px>=100%"]
    args = ["audit", "--config", str(config), "--out", str(out), "--n", "12"]
    result = runner.invoke(app, [*args, *(x for g in gate for x in ("--fail-under", g))])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    failed = [line for line in result.output.splitlines() if line.startswith("Gate failed:")]
    assert len(failed) == 2, result.output
    assert failed[0].startswith(
        "Gate failed: --fail-under robust_accuracy@linf:8/255=0.99: accuracy under attack"
    )
    assert "required >= 0.99" in failed[0]
    assert "robust_accuracy@16px>=100%" in failed[1]
    assert "required >= 1" in failed[1]
    return out


def test_gate_failure_is_recorded_in_report_json(run_dir: Path, config: Path) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    gate = report["gate"]
    assert gate["passed"] is False
    assert [c["passed"] for c in gate["clauses"]] == [False, True, False]
    assert gate["clauses"][0]["value"] == pytest.approx(report["evasion"]["worst_case"][0]["robust_accuracy"])
    settings = report["settings"]
    assert settings["profile"] == "quick"
    assert settings["config_file"]["sha256"] == hashlib.sha256(config.read_bytes()).hexdigest()
    assert settings["resolved"]["n"] == 12
    assert settings["sources"]["n"] == "flag"
    assert settings["sources"]["epochs"] == "config"
    assert settings["sources"]["theft_seeds"] == "profile"
    assert report["config"]["n"] == 10 + 2
    assert report["theft"] is None
    assert report["membership"] is None
    html = (run_dir / "report.html").read_text()
    assert html.count('class="gate-fail"') == 2
    assert html.count('class="gate-pass"') == 1
    assert "Gate <code>robust_accuracy@16px&gt;=100%</code>" in html


def test_passing_gate_exits_0_and_json_carries_it(run_dir: Path, config: Path) -> None:
    args = ["audit", "--config", str(config), "--out", str(run_dir), "--n", "12", "--json"]
    result = runner.invoke(
        app, [*args, "--fail-under", "clean_accuracy>=0.1,masking_warnings<=100", "--fail-under", "0"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["resumed"]["measurements_reused"] == report["resumed"]["measurements"]
    assert report["gate"]["passed"] is True
    assert report["gate"]["fail_under"] == 0.0  # the numeric form keeps its fields
    assert len(report["gate"]["clauses"]) == 3
    assert json.loads((run_dir / "report.json").read_text())["gate"] == report["gate"]


def test_gate_on_a_skipped_section_fails_before_the_audit(config: Path, tmp_path: Path) -> None:
    args = ["audit", "--config", str(config), "--out", str(tmp_path), "--fail-under", "mia_tpr@0.01<=0.02"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "membership section is off" in result.output
    assert "--membership-shadows" in result.output
    assert not (tmp_path / "report.json").exists()


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (
            ["--fail-under", "robust_accuracy~0.4"],
            ["--fail-under", "'robust_accuracy~0.4'", "METRIC[@ARG]OP BOUND"],
        ),
        (["--fail-under", "7"], ["--fail-under", "an accuracy in [0, 1]"]),
        (["--profile", "fast"], ["--profile", "quick, standard, thorough"]),
    ],
)
def test_user_errors_exit_2(config: Path, tmp_path: Path, extra: list[str], needles: list[str]) -> None:
    result = runner.invoke(app, ["audit", "--config", str(config), "--out", str(tmp_path), *extra])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, (needle, result.output)


def test_config_errors_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('n = "ten"\n', encoding="utf-8")
    result = runner.invoke(app, ["audit", "--config", str(bad), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "n (in" in result.output
    assert "expected an integer >= 1" in result.output
    bad.write_text("shadows = 3\n", encoding="utf-8")
    result = runner.invoke(app, ["audit", "--config", str(bad), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "'shadows'" in result.output
    assert "membership_shadows" in result.output
