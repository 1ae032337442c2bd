"""Tests for the `ramparts` command line, through typer's CliRunner."""

from __future__ import annotations

import itertools
import json
import warnings
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
    args += ["--query-budgets", "20,60", "--blackbox-n", "12", "--blackbox-l2-eps", "2.0"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    black = report["blackbox"]["checks"]
    assert [r["budget"] for r in black["hopskipjump"]["rows"]] == [20, 60]
    assert black["hopskipjump"]["eps"] == pytest.approx(2.0)
    rates = [r["success_rate"] for r in black["square"]["rows"]]
    assert rates[0] <= rates[1]
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
    _user_error([*base, "--blackbox", "pgd"], "--blackbox", "hopskipjump", "square")
    _user_error([*base, "--query-budgets", "10,x"], "--query-budgets")
    _user_error([*base, "--eps", "0.1,banana"], "--eps")
    _user_error([*base, "--fail-under", "7"], "--fail-under")


def test_audit_cli_resumes_the_same_run_and_refuses_another(model_dir: Path, tmp_path: Path) -> None:
    args = ["audit", "--model", str(model_dir), "--attacks", "fgsm", "--eps", "0.1,0.3", "--n", "20"]
    args += ["--reference-eps", "0.1", "--out", str(tmp_path), "--blackbox", "none"]
    first = runner.invoke(app, [*args, "--json"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "Resumed" in again.output
    assert (
        "reused 6 of 6 measurements" in again.output
    )  # FGSM at 2 eps, theft, membership, poisoning, encryption
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["resumed"]["measurements_reused"] == 6
    robust = [f["robust_accuracy"] for f in report["evasion"]["findings"]]
    assert robust == [f["robust_accuracy"] for f in json.loads(first.stdout)["evasion"]["findings"]]

    output = _user_error([*args, "--n", "10"], "--out", "differs in n", "--overwrite")
    assert "out_dir" not in output
    fresh = runner.invoke(app, [*args, "--n", "10", "--overwrite", "--json"])
    assert fresh.exit_code == 0, fresh.output
    assert json.loads(fresh.stdout)["resumed"] is None
    assert json.loads((tmp_path / "config.json").read_text())["n"] == 10


def test_attack_score_based_with_a_budget_reports_query_statistics(model_dir: Path) -> None:
    args = ["attack", "--model", str(model_dir), "--attack", "square", "--knowledge", "score"]
    result = runner.invoke(app, [*args, "--eps", "0.2", "--max-queries", "100", "--n", "20", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)  # stdout is the JSON and nothing else: no progress display
    assert out["knowledge"] == "score"
    assert out["queries"]["budget_per_image"] == 100
    assert 1 <= out["queries"]["max_per_image"] <= 100
    assert out["queries"]["median_per_image"] <= out["queries"]["max_per_image"]
    assert out["queries"]["total"] >= out["queries"]["max_per_image"]
    assert out["total_backwards"] == 0, "a score-based attack computes no gradient"
    assert out["success_rate"] > 0
    assert out["norm_reached"]["norm"] == "linf"
    assert 0 < out["norm_reached"]["median_distance_success"] <= 0.2 + 1e-6
    assert out["median_distance_success"] == out["norm_reached"]["median_distance_success"]


def test_attack_label_only_runs_a_decision_based_attack(model_dir: Path) -> None:
    args = ["attack", "--model", str(model_dir), "--attack", "hopskipjump", "--knowledge", "label"]
    result = runner.invoke(app, [*args, "--norm", "l2", "--eps", "2.0", "--max-queries", "200", "--n", "10"])
    assert result.exit_code == 0, result.output
    assert "label" in result.stdout
    assert "queries per image: median / max" in result.stdout
    assert "(budget 200)" in result.stdout


@pytest.mark.parametrize("knowledge", ["label", "score"])
def test_attack_needing_more_access_than_given_is_a_user_error(knowledge: str) -> None:
    output = _user_error(["attack", "--attack", "pgd", "--knowledge", knowledge], "--knowledge", "gradient")
    assert output.strip().startswith("Error:")
    assert len(output.strip().splitlines()) == 1, "one line"
    assert "needs gradient access" in output
    assert "hopskipjump" in output, "the message names the attacks that fit"


def test_unknown_knowledge_and_misused_oracle_options() -> None:
    _user_error(["attack", "--knowledge", "psychic"], "--knowledge", "gradient", "label")
    _user_error(["attack", "--oracle", "x.onnx", "--model", "m"], "--oracle", "--model")
    _user_error(["attack", "--oracle-config", "c.json"], "--oracle-config")


def test_progress_line_shows_queries_and_success() -> None:
    from ramparts.cli.attack import describe_progress
    from ramparts.evasion import AttackProgress

    p = AttackProgress("square", 200, 37, 12_400, 62, 1.5)
    assert describe_progress(p, 200, 100) == "queries 12,400 (max 62/image of 100) · success 37/200"
    assert describe_progress(None, 50, None) == "queries 0 (max 0/image) · success 0/50"


@pytest.fixture(scope="module")
def onnx_file(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The saved MLP exported to ONNX (logits output)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from ramparts.zoo import load_model

    model, _ = load_model(model_dir)
    path = tmp_path_factory.mktemp("onnx") / "mlp.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model.eval(),
            (torch.zeros(1, 1, 8, 8),),
            str(path),
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
            dynamo=False,
        )
    return path


def test_attack_an_onnx_oracle(onnx_file: Path, model_dir: Path) -> None:
    args = ["attack", "--oracle", str(onnx_file), "--attack", "square", "--eps", "0.2", "--n", "12"]
    result = runner.invoke(app, [*args, "--max-queries", "60", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["model"]["oracle"] == "OnnxOracle"
    assert out["knowledge"] == "score"
    assert out["queries"]["max_per_image"] <= 60
    same = runner.invoke(app, [*args[:2], str(model_dir), *args[3:], "--max-queries", "60", "--json"])
    assert same.exit_code == 0, same.output
    assert json.loads(same.stdout)["clean_accuracy"] == out["clean_accuracy"], "the same model behind ONNX"

    output = _user_error([*args[:3], "--attack", "pgd"], "--attack pgd", "--oracle answers only class scores")
    assert len(output.strip().splitlines()) == 1
    _user_error([*args[:3], "--knowledge", "gradient"], "--knowledge", "only score")
