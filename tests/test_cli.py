"""Tests for the `ramparts` command line, through typer's CliRunner."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ramparts.cli.main import app
from ramparts.evasion import ATTACKS
from ramparts.threat import GOALS, NORMS

runner = CliRunner(env={"COLUMNS": "240", "NO_COLOR": "1"})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MLP trained for one epoch by `ramparts train`."""
    out = tmp_path_factory.mktemp("model")
    result = runner.invoke(app, ["train", "--arch", "mlp", "--epochs", "2", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["arch"] == "mlp"
    assert info["test_accuracy"] > 0.5
    assert (out / "model.safetensors").is_file()
    assert (out / "model.json").is_file()
    return out


def _user_error(args: list[str], *names: str) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    for name in names:
        assert name in result.output, (name, result.output)
    return result.output


def test_env_json_parses() -> None:
    result = runner.invoke(app, ["env", "--json"])
    assert result.exit_code == 0, result.output
    env = json.loads(result.stdout)
    assert env["packages"]["torch"].startswith(torch.__version__.split("+")[0])
    assert env["cpu"]["logical_cpus"] >= 1
    assert isinstance(env["accelerators"]["cuda_devices"], list)


def test_env_table_mentions_versions() -> None:
    result = runner.invoke(app, ["env"])
    assert result.exit_code == 0
    assert "torch" in result.stdout
    assert "cuda" in result.stdout


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--eps", "banana"], ("--eps", "8/255")),
        (["--eps", "2"], ("--eps",)),
        (["--eps", "-0.1"], ("--eps",)),
        (["--attack", "nope"], ("--attack", "pgd", "apgd")),
        (["--norm", "l7"], ("--norm", "linf", "l2")),
        (["--goal", "evil"], ("--goal", "targeted")),
        (["--goal", "targeted", "--target", "foo"], ("--target", "least_likely")),
        (["--attack", "cw", "--norm", "linf"], ("--norm", "l2")),
        (["--attack", "ill"], ("--goal", "targeted")),
        (["-p", "nosuch=3"], ("--param", "steps")),
        (["-p", "steps=-3"], ("steps",)),
        (["--model", "/nonexistent/model"], ("path", "json")),
    ],
)
def test_attack_user_errors_exit_2_without_traceback(args: list[str], names: tuple[str, ...]) -> None:
    output = _user_error(["attack", *args], *names)
    assert output.strip().startswith("Error:")
    assert len(output.strip().splitlines()) == 1, "one line"


def test_click_level_errors_exit_2() -> None:
    _user_error(["attack", "--n", "0"], "--n")
    _user_error(["attack", "--no-such-option"], "--no-such-option")


def test_help_reads_allowed_values_from_the_registries() -> None:
    result = runner.invoke(app, ["attack", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert ", ".join(ATTACKS.names()) in text.replace(" │ ", " ")
    for name in (*NORMS, *GOALS):
        assert name in text


def test_attack_json_on_a_saved_model(model_dir: Path, tmp_path: Path) -> None:
    args = ["attack", "--model", str(model_dir), "--attack", "fgsm", "--eps", "8/255", "--n", "40", "--json"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["attack"] == "fgsm"
    assert out["n"] == 40
    assert 0.0 <= out["success_rate"] <= 1.0
    assert out["robust_accuracy"] <= out["clean_accuracy"]
    assert out["threat"]["eps"] == pytest.approx(8 / 255)
    assert out["threat_description"].startswith("linf eps=0.03137")
    assert (tmp_path / "result.json").is_file()
    assert (tmp_path / "adv_examples.npz").is_file()


def test_attack_strength_grows_with_eps(model_dir: Path) -> None:
    rates = []
    for eps in ("0.05", "0.3"):
        args = ["attack", "--model", str(model_dir), "--attack", "pgd", "-p", "steps=10", "--eps", eps]
        result = runner.invoke(app, [*args, "--n", "40", "--json"])
        assert result.exit_code == 0, result.output
        rates.append(json.loads(result.stdout)["success_rate"])
    assert rates[0] < rates[1]
    assert rates[1] > 0.8


def test_attack_targeted_given_class(model_dir: Path) -> None:
    args = [
        "attack",
        "--model",
        str(model_dir),
        "--goal",
        "targeted",
        "--target",
        "given",
        "--target-class",
        "3",
    ]
    result = runner.invoke(app, [*args, "--eps", "0.3", "-p", "steps=20", "--n", "20", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["success_rate"] > 0.5
    _user_error([*args[:-2], "--eps", "0.3"], "--target-class")


def test_audit_cli_writes_report_and_gates(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["audit", "--model", str(model_dir), "--attacks", "fgsm,pgd", "--eps", "0.05,0.1,0.3"]
    args += ["--reference-eps", "0.1", "--n", "30", "--out", str(out)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    pgd = [f["robust_accuracy"] for f in report["evasion"]["findings"] if f["check"] == "pgd"]
    assert len(pgd) == 3
    assert all(b <= a for a, b in itertools.pairwise(pgd))
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html
    assert "https://" not in html
    assert "http://" not in html
    assert json.loads((out / "report.json").read_text())["model"]["source"] == str(model_dir)

    gated = runner.invoke(app, [*args, "--fail-under", "1.0"])
    assert gated.exit_code == 1, gated.output
    assert "--fail-under" in gated.output
    assert "Traceback" not in gated.output


def test_audit_user_errors(model_dir: Path, tmp_path: Path) -> None:
    base = ["audit", "--model", str(model_dir), "--out", str(tmp_path)]
    _user_error([*base, "--attacks", "pgd,nope"], "--attacks", "apgd-dlr")
    _user_error([*base, "--eps", "0.1,banana"], "--eps")
    _user_error([*base, "--fail-under", "7"], "--fail-under")


def test_audit_cli_resumes_the_same_run_and_refuses_another(model_dir: Path, tmp_path: Path) -> None:
    args = ["audit", "--model", str(model_dir), "--attacks", "fgsm", "--eps", "0.1,0.3", "--n", "20"]
    args += ["--reference-eps", "0.1", "--out", str(tmp_path)]
    first = runner.invoke(app, [*args, "--json"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "Resumed" in again.output
    assert "reused 2 of 2 measurements" in again.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["resumed"]["measurements_reused"] == 2
    robust = [f["robust_accuracy"] for f in report["evasion"]["findings"]]
    assert robust == [f["robust_accuracy"] for f in json.loads(first.stdout)["evasion"]["findings"]]

    output = _user_error([*args, "--n", "10"], "--out", "differs in n", "--overwrite")
    assert "out_dir" not in output
    fresh = runner.invoke(app, [*args, "--n", "10", "--overwrite", "--json"])
    assert fresh.exit_code == 0, fresh.output
    assert json.loads(fresh.stdout)["resumed"] is None
    assert json.loads((tmp_path / "config.json").read_text())["n"] == 10
