"""Tests for ramparts.report: the self-contained HTML (escaped), strict JSON, the plots and the words."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

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
    assert all(link.strip("\"'").startswith("data:image/png;base64,") for link in links), "only data: URIs"
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
