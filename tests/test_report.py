"""Tests for ramparts.report: the self-contained HTML (escaped), strict JSON, the plots and the words."""

from __future__ import annotations

import json
import math
import re
from html import escape as html_escape
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ramparts.audit import AuditReport, Check, run_audit
from ramparts.data import load_digits
from ramparts.evasion import ATTACKS
from ramparts.report import plots, render_html, to_jsonable, write_json
from ramparts.report.environment import collect_environment
from ramparts.report.summary import attack_citation, blackbox_headline, eps_label, headlines

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(digits_model, tmp_path_factory: pytest.TempPathFactory) -> AuditReport:
    ds = load_digits()
    return run_audit(
        digits_model.model,
        None,
        ds.subset(range(1400, len(ds))),
        eps_grid=(0.1, 0.3),
        attacks=[
            Check("pgd", "pgd", {"steps": 10}, "linf", "PGD"),
            Check("cw", "cw", {"steps": 20, "binary_search_steps": 3}, "l2", "C&W-L2"),
        ],
        n=40,
        reference_eps=0.1,
        out_dir=tmp_path_factory.mktemp("report"),
        query_budgets=(20, 100),
        blackbox_n=16,
    )


def _html(report: AuditReport) -> str:
    assert report.out_dir is not None
    return (report.out_dir / "report.html").read_text(encoding="utf-8")


def test_html_is_one_self_contained_file(report: AuditReport) -> None:
    html = _html(report)
    assert "http://" not in html
    assert "https://" not in html
    links = re.findall(r"""\b(?:src|href)\s*=\s*("[^"]*"|'[^']*'|[^\s>]+)""", html)
    assert links, "the figures are <img src=...>"
    for link in (raw.strip("\"'") for raw in links):
        if link.startswith("#"):
            assert f'id="{link[1:]}"' in html, f"in-page link {link} has its target"
        else:
            assert link.startswith("data:image/png;base64,"), "only data: URIs and in-page links"
    assert "<link" not in html
    assert "<script" not in html
    uris = re.findall(r'src="(data:image/png;base64,[A-Za-z0-9+/=]+)"', html)
    assert len(uris) >= 4, "curve, examples, the C&W histogram and the black-box plot are embedded"


def test_html_shows_summary_citations_and_table(report: AuditReport) -> None:
    html = _html(report)
    assert "PGD-linf at eps=0.1" in html
    assert "Madry et al." in html
    assert "Carlini &amp; Wagner" in html
    for f in report.findings:
        assert f"{100 * f['robust_accuracy']:.1f}%" in html


def test_template_escapes_html_in_names(report: AuditReport) -> None:
    data = report.to_dict()
    data["data"]["name"] = "<script>alert(1)</script>"
    data["data"]["classes"] = ["<b>zero</b>", *data["data"]["classes"][1:]]
    data["model"]["description"] = "<img src=x onerror=alert(2)>"
    data["headlines"] = ["<i>pwned</i>"]
    html = render_html(data, {})
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>zero</b>" not in html
    assert "&lt;b&gt;zero&lt;/b&gt;" in html
    assert "<img src=x" not in html
    assert "<i>pwned</i>" not in html
    assert "&lt;i&gt;pwned&lt;/i&gt;" in html


def test_report_json_is_strict_and_complete(report: AuditReport) -> None:
    assert report.out_dir is not None
    data = json.loads((report.out_dir / "report.json").read_text())
    assert set(data) >= {
        "headlines",
        "config",
        "model",
        "data",
        "evasion",
        "citations",
        "timings",
        "environment",
    }
    assert data["evasion"]["minimum_norm"]["cw"]["label"] == "C&W-L2"
    assert "report.html" in data["files"]
    assert "report.json" in data["files"]


def test_to_jsonable_and_write_json(tmp_path: Path) -> None:
    value = {
        "nan": math.nan,
        "t": torch.tensor([1.0, 2.0]),
        "a": np.arange(3),
        "f": np.float32(0.5),
        1: (1, 2),
    }
    assert to_jsonable(value) == {"nan": None, "t": [1.0, 2.0], "a": [0, 1, 2], "f": 0.5, "1": [1, 2]}
    path = write_json(value, tmp_path / "x.json")
    assert json.loads(path.read_text())["nan"] is None


def test_plots_are_png_and_deterministic() -> None:
    curve = plots.robustness_curve({"PGD": [(0.1, 0.5), (0.3, 0.0)]}, clean_accuracy=0.9, reference_eps=0.1)
    assert curve.startswith(PNG)
    again = plots.robustness_curve({"PGD": [(0.1, 0.5), (0.3, 0.0)]}, clean_accuracy=0.9, reference_eps=0.1)
    assert curve == again
    rng = np.random.default_rng(0)
    img = rng.random((1, 8, 8)).astype(np.float32)
    adv = np.clip(img + 0.1 * np.sign(rng.standard_normal((1, 8, 8))), 0, 1).astype(np.float32)
    ex = plots.Example(img, adv, "3", "3", 0.99, "8", 0.7, "PGD eps=0.1")
    rgb = plots.Example(np.zeros((3, 8, 8)), np.full((3, 8, 8), 0.1), "cat", "cat", 0.9, "dog", 0.6)
    assert plots.examples_panel([ex, rgb]).startswith(PNG)
    assert plots.distance_histogram([0.5, 0.7, 1.2], median=0.7).startswith(PNG)
    assert plots.data_uri(b"abc") == "data:image/png;base64,YWJj"


def test_eps_labels() -> None:
    assert eps_label(8 / 255) == "8/255"
    assert eps_label(0.05) == "0.05 (12.8/255)"
    assert eps_label(np.float32(64 / 255).item()) == "64/255"


def test_every_registered_attack_cites_its_paper() -> None:
    for name in ATTACKS.names():
        citation = attack_citation(ATTACKS.get(name))
        assert citation is not None, name
        assert re.search(r"(19|20)\d\d", citation), name
    assert (attack_citation(ATTACKS.get("apgd")) or "").startswith("Croce & Hein")


def test_headlines_name_attack_eps_and_accuracies() -> None:
    worst = [
        {"eps": 0.1, "eps_label": "0.1 (25.5/255)", "robust_accuracy": 0.4},
        {"eps": 0.3, "eps_label": "0.3 (76.5/255)", "robust_accuracy": 0.0},
    ]
    lines = headlines(
        n=100,
        clean=0.97,
        reference={"eps_label": "0.1 (25.5/255)", "robust_accuracy": 0.4, "by_check": {"pgd": 0.45}},
        worst_case=worst,
        minimum_norm={},
        linf_labels={"pgd": "PGD", "fgsm": "FGSM"},
        main="pgd",
    )
    assert lines[1].startswith("PGD-linf at eps=0.1 (25.5/255) lowers accuracy from 97.0% to 45.0%")
    assert "40.0%" in lines[1]
    assert "halves by eps=0.1" in lines[2]
    assert "10% or less by eps=0.3" in lines[2]


def test_environment_lists_versions_and_cpus() -> None:
    env = collect_environment()
    assert env["packages"]["numpy"] == np.__version__
    assert env["cpu"]["logical_cpus"] >= 1
    assert env["accelerators"]["cuda_available"] is torch.cuda.is_available()


def test_html_has_the_blackbox_section(report: AuditReport) -> None:
    html = _html(report)
    assert "Black-box attacks: success against the query budget" in html
    assert 'alt="success rate against the query budget per image"' in html
    assert "Andriushchenko" in html
    assert "Chen, Jordan" in html
    assert report.blackbox is not None
    for section in report.blackbox["checks"].values():
        for row in section["rows"]:
            assert f"{100 * row['success_rate']:.1f}% ({row['fooled']})" in html
    assert any(line.startswith("Black-box:") for line in report.headlines)
    data = json.loads((report.out_dir / "report.json").read_text()) if report.out_dir else {}
    assert set(data["blackbox"]["checks"]) == {"square", "hopskipjump"}
    assert data["config"]["blackbox"]["query_budgets"] == [20, 100]


def test_success_plot_is_png_and_deterministic() -> None:
    curves = {"Square": [(50, 0.1), (100, 0.2), (1000, 0.5)], "HopSkipJump": [(50, 0.3), (1000, 0.9)]}
    refs = {"Square": ("white-box linf battery", 0.6)}
    png = plots.success_vs_queries(curves, references=refs)
    assert png.startswith(PNG)
    assert png == plots.success_vs_queries(curves, references=refs)


def test_blackbox_headline() -> None:
    section = {
        "label": "HopSkipJump",
        "knowledge": "label",
        "norm": "l2",
        "eps_label": "1",
        "attacked": 98,
        "rows": [{"budget": 100, "success_rate": 0.3}, {"budget": 1000, "success_rate": 0.9}],
        "white_box": {"label": "C&W-L2 (white-box)", "success_rate": 0.8},
    }
    line = blackbox_headline({"checks": {"hopskipjump": section}})
    assert line == (
        "Black-box: HopSkipJump (label-only, L2 eps=1) fools 90.0% of 98 images within 1,000 queries each "
        "(white-box: 80.0%)."
    )
    assert blackbox_headline({"checks": {}}) is None


def test_html_has_the_theft_section(report: AuditReport) -> None:
    html = _html(report)
    assert report.theft is not None
    assert "Model theft: a label-only copy and the attacks it enables" in html
    assert 'alt="fidelity of the stolen copy against the labels queried"' in html
    assert "Papernot" in html
    assert f"{100 * report.theft['fidelity']:.1f}%" in html
    assert any(line.startswith("A label-only attacker with") for line in report.headlines)


def test_fidelity_plot_is_png_and_deterministic() -> None:
    from ramparts.report import plots

    curve = [(50, 0.2), (100, 0.6), (200, 0.7), (400, 0.8)]
    a = plots.fidelity_vs_queries(curve, accuracy=0.75)
    assert a.startswith(PNG)
    assert a == plots.fidelity_vs_queries(curve, accuracy=0.75)


def test_theft_headline() -> None:
    from ramparts.report.summary import theft_headline

    section = {
        "queries": 400,
        "fidelity": 0.85,
        "config": {"transfer_attack": "fgsm"},
        "transfer": [
            {"eps_label": "8/255", "oracle_error": 0.4, "noise_error": 0.03},
            {"eps_label": "80/255", "oracle_error": 0.8, "noise_error": 0.2},
        ],
    }
    assert theft_headline(section) == (
        "A label-only attacker with 400 queries copies the model at 85% fidelity; FGSM examples crafted on "
        "the copy fool the model 40% of the time at eps=8/255 and 80% at eps=80/255 (random noise of the "
        "same size: 3% and 20%)."
    )


def _img(html: str, alt: str) -> bool:
    """Whether `html` embeds a PNG data URI with this alt text."""
    return (
        re.search(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]{100,}" alt="' + re.escape(alt) + '"', html)
        is not None
    )


def test_report_json_has_the_scorecard(report: AuditReport) -> None:
    assert report.out_dir is not None
    data = json.loads((report.out_dir / "report.json").read_text())
    assert data["version"] == 4
    rows = {r["threat"]: r for r in data["scorecard"]}
    assert list(rows) == [
        "evasion_whitebox",
        "evasion_blackbox",
        "theft",
        "membership",
        "poisoning",
        "encryption",
    ]
    assert rows["evasion_whitebox"]["value"] == pytest.approx(report.reference["robust_accuracy"])
    assert rows["evasion_blackbox"]["severity"] != "not run"
    assert rows["theft"]["value"] == pytest.approx(report.theft["fidelity"] if report.theft else -1)
    for threat in ("membership", "poisoning"):  # the model was given without its training set
        assert rows[threat]["severity"] == "not run"
        assert "training data" in rows[threat]["reason"]
    assert set(data["recommendations"]) == set(rows)
    assert data["recommendations"]["membership"] == []


def test_html_has_the_scorecard_first_and_the_methodology(report: AuditReport) -> None:
    html = _html(report)
    assert html.index('<section id="scorecard">') < html.index('class="summary"') < html.index('id="evasion"')
    card = html[
        html.index('<section id="scorecard">') : html.index("</section>", html.index('id="scorecard"'))
    ]
    assert card.count('<td class="sev sev-') == 6
    assert 'href="#blackbox"' in card
    assert "training data" in card
    method = html[html.index('<section id="methodology">') :]
    for check in report.config["checks"]:
        assert html_escape(check["label"], quote=False) in method
    assert "binary_search_steps&#34;: 3" in method, "the resolved configuration of each attack"
    assert "forward /" in method
    assert f"{report.environment['cpu']['logical_cpus']} logical cores" in method
    assert "Time spent" in method


def _with_every_section(report: AuditReport) -> dict[str, Any]:
    """The fixture's report.json plus hand-made membership and poisoning sections (it had no training data)."""
    from ramparts.audit.scorecard import scorecard
    from ramparts.report.recommend import recommendations

    data = report.to_dict()
    recipe = {"arch": "small_cnn", "epochs": 2, "lr": 0.002, "batch_size": 64}
    roc = [[0.0, 0.0], [0.001, 0.02], [0.01, 0.08], [0.1, 0.3], [1.0, 1.0]]
    data["config"]["membership"] = {
        "shadows": 4,
        "members": 1000,
        "non_members": 400,
        "recipe": recipe,
        "fpr": 0.01,
    }
    data["membership"] = {
        "fpr": 0.01,
        "config": data["config"]["membership"],
        "attacks": [
            {
                "label": "LiRA online",
                "attack": "lira",
                "params": {},
                "auc": 0.7,
                "balanced_accuracy": 0.6,
                "tpr": 0.08,
                "tpr_ci95": [0.05, 0.1],
                "roc": roc,
                "queries": 1400,
            }
        ],
    }
    curve = [
        {"fraction": 0.0, "n_poison": 0, "clean_accuracy": 0.95, "attack_success": 0.0},
        {"fraction": 0.01, "n_poison": 10, "clean_accuracy": 0.95, "attack_success": 0.7},
    ]
    data["config"]["poisoning"] = {
        "fractions": [0.01],
        "train_records": 1000,
        "recipe": recipe,
        "defense": None,
    }
    data["poisoning"] = {
        "config": data["config"]["poisoning"],
        "attacks": [
            {
                "label": "BadNets backdoor",
                "attack": "badnets",
                "params": {},
                "baseline_accuracy": 0.95,
                "curve": curve,
            }
        ],
        "defense": None,
    }
    data["data"]["n_train"] = 1000
    data["scorecard"] = scorecard(data)
    data["recommendations"] = recommendations(data, data["scorecard"])
    return data


def test_html_embeds_every_plot_when_the_data_exists(report: AuditReport) -> None:
    from ramparts.report.figures import evasion_figures

    data = _with_every_section(report)
    rows = {r["threat"]: r["severity"] for r in data["scorecard"]}
    assert rows["membership"] == "high"
    assert rows["poisoning"] == "critical"
    html = render_html(data, evasion_figures(data))
    for alt in (
        "accuracy under attack against eps",
        "success rate against the query budget per image",
        "fidelity of the stolen copy against the labels queried",
        "membership inference ROC curves, log-log",
        "clean accuracy and attack success against the poisoned share",
    ):
        assert _img(html, alt), alt
    assert "DP-SGD training" in html
    assert "ramparts poison --attack badnets --defense spectral" in html
    assert html.count('<div class="advice">') >= 5
    assert "Membership inference" in html[html.index('<section id="methodology">') :]


def test_html_renders_with_the_sections_off(report: AuditReport) -> None:
    from ramparts.audit.scorecard import scorecard
    from ramparts.report.recommend import recommendations

    data = report.to_dict()
    for key in ("blackbox", "theft", "membership", "poisoning", "encryption"):
        data[key] = None
        data["config"][key] = None
    data["scorecard"] = scorecard(data)
    data["recommendations"] = recommendations(data, data["scorecard"])
    html = render_html(data, {})
    assert '<section id="scorecard">' in html
    assert "Black-box attacks" not in html
    assert 'id="theft"' not in html
    assert "switched off (--blackbox none)" in html
    assert "switched off (--theft none)" in html
    assert "switched off (--no-encryption)" in html
    assert html.count('class="sev sev-not-run"') == 5
    assert "<img" not in html
    assert '<section id="methodology">' in html


def test_defended_model_gets_a_defence_row_and_its_advice(digits_model) -> None:
    from ramparts.defenses.base import DefendedModel
    from ramparts.defenses.squeezing import BitDepth

    ds = load_digits()
    defended = DefendedModel(digits_model.model, transforms=[BitDepth(2)])
    audited = run_audit(
        defended,
        None,
        ds.subset(range(1600, len(ds))),
        eps_grid=(0.1,),
        attacks=[Check("pgd", "pgd", {"steps": 5}, "linf", "PGD")],
        n=30,
        reference_eps=0.1,
        blackbox=None,
        theft=None,
        encryption=False,
        defense_steps=5,
    )
    data = audited.to_dict()
    row = data["scorecard"][-1]
    assert row["threat"] == "defense"
    assert row["value"] == pytest.approx(audited.defense["robust_accuracy"] if audited.defense else -1)
    assert row["attack"].startswith("adaptive PGD-5")
    assert data["recommendations"]["defense"][0]["defense"].startswith("Judge any defence")
    html = render_html(data, {})
    assert 'href="#defense"' in html
    assert 'id="defense"' in html
    method = html[html.index('<section id="methodology">') :]
    assert "Adaptive PGD (BPDA/EOT, detector term)" in method
