"""Tests for ramparts.audit: the evasion battery on a tiny configuration, its run folder and its findings."""

from __future__ import annotations

import copy
import itertools
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ramparts.audit.poisoning
import ramparts.audit.run
import ramparts.audit.theft
from ramparts.audit import (
    CHECKS,
    AuditReport,
    BlackBoxCheck,
    Check,
    RunFolderMismatchError,
    resolve_blackbox,
    resolve_checks,
    run_audit,
)
from ramparts.data import Dataset, load_digits
from ramparts.errors import UnknownNameError, ValidationError

EPS = (0.05, 0.1, 0.2, 0.3)
FAST = [
    Check("fgsm", "fgsm", {}, "linf", "FGSM"),
    Check("pgd", "pgd", {"steps": 10}, "linf", "PGD"),
    Check("cw", "cw", {"steps": 20, "binary_search_steps": 3}, "l2", "C&W-L2"),
]
BLACKBOX = [
    BlackBoxCheck("square", "square", {}, "linf", "Square", "n_queries"),
    BlackBoxCheck("hopskipjump", "hopskipjump", {}, "l2", "HopSkipJump"),
]
BUDGETS = (20, 50, 150)
# The module's audit; the resume tests rerun it in copies of its folder.
KWARGS: dict[str, Any] = {
    "eps_grid": EPS,
    "attacks": FAST,
    "n": 60,
    "seed": 0,
    "reference_eps": 0.1,
    "model_info": {"description": "tiny <b>cnn</b>"},
    "blackbox": BLACKBOX,
    "query_budgets": BUDGETS,
    "blackbox_n": 24,
    "blackbox_l2_eps": 1.5,
}
# Audits that test something else leave the black-box section out.
NO_BB: dict[str, Any] = {"blackbox": None}


@pytest.fixture(scope="module")
def held_out() -> Dataset:
    ds = load_digits()
    return ds.subset(range(1400, len(ds)))


@pytest.fixture(scope="module")
def audit(digits_model, held_out: Dataset, tmp_path_factory: pytest.TempPathFactory) -> AuditReport:
    out = tmp_path_factory.mktemp("audit")
    return run_audit(digits_model.model, None, held_out, out_dir=out, **KWARGS)


def test_run_folder_holds_every_artifact(audit: AuditReport) -> None:
    assert audit.out_dir is not None
    names = {p.name for p in audit.out_dir.iterdir()}
    assert {"config.json", "metrics.json", "adv_examples.npz", "report.html", "report.json"} <= names
    assert "model.safetensors" in names
    with np.load(audit.out_dir / "adv_examples.npz", allow_pickle=False) as npz:
        assert npz["x"].shape == (60, 1, 8, 8)
        assert npz["pgd_x_adv"].shape == npz["x"].shape
        assert npz["pgd_eps_broken"].shape == (60,)
    config = json.loads((audit.out_dir / "config.json").read_text())
    assert config["eps_grid"] == pytest.approx(list(EPS))
    metrics = json.loads((audit.out_dir / "metrics.json").read_text())
    assert len(metrics["curves"]) == 2 * len(EPS)
    assert metrics["minimum_norm"]["cw"]["median_distance"] == pytest.approx(
        audit.minimum_norm["cw"]["median_distance"]
    )


def test_pgd_curve_starts_at_clean_accuracy_and_never_rises(audit: AuditReport) -> None:
    curve = audit.curve("pgd")
    assert [e for e, _ in curve] == pytest.approx(list(EPS))
    accs = [audit.clean_accuracy] + [a for _, a in curve]
    assert all(b <= a for a, b in itertools.pairwise(accs)), accs
    assert audit.clean_accuracy > 0.8
    assert curve[-1][1] < 0.2, "PGD at eps=0.3 should break nearly every digit"


def test_worst_case_is_at_most_every_attack(audit: AuditReport) -> None:
    for row in audit.worst_case:
        at = [f["robust_accuracy"] for f in audit.findings if f["eps"] == row["eps"]]
        assert row["robust_accuracy"] <= min(at) + 1e-9
    assert audit.robust_accuracy() == pytest.approx(audit.worst_case[1]["robust_accuracy"])
    assert audit.robust_accuracy(0.1, "pgd") == pytest.approx(audit.curve("pgd")[1][1])
    with pytest.raises(ValidationError, match="eps"):
        audit.robust_accuracy(0.15)


def test_saved_adversarial_examples_are_valid_and_fool_the_model(digits_model, audit: AuditReport) -> None:
    x, y = torch.from_numpy(audit.arrays["x"]), torch.from_numpy(audit.arrays["y"])
    x_adv = torch.from_numpy(audit.arrays["pgd_x_adv"])
    eps = torch.from_numpy(audit.arrays["pgd_eps_broken"])
    fooled = ~torch.isnan(eps)
    assert int(fooled.sum()) > 10
    dist = (x_adv - x).abs().flatten(1).amax(dim=1)
    assert bool((dist[fooled] <= eps[fooled].float() + 1e-6).all())
    assert float(x_adv.min()) >= 0.0
    assert float(x_adv.max()) <= 1.0
    with torch.no_grad():
        pred = digits_model.model(x_adv[fooled]).argmax(dim=1)
    assert bool((pred != y[fooled]).all())
    # the curve counts exactly these samples (plus the clean mistakes) as broken
    last = audit.curve("pgd")[-1][1]
    clean_wrong = torch.from_numpy(audit.arrays["clean_pred"]) != y
    assert last == pytest.approx(1 - float((fooled | clean_wrong).float().mean()))


def test_cw_reports_median_distance_of_successes(audit: AuditReport) -> None:
    stats = audit.minimum_norm["cw"]
    assert stats["success_rate"] > 0.5
    assert stats["median_distance"] == pytest.approx(float(np.median(stats["distances"])))
    assert 0 < stats["median_distance"] < 8.0
    assert any("C&W-L2" in line and "median L2" in line for line in audit.headlines)


def test_report_json_has_findings_threats_environment_and_timings(audit: AuditReport) -> None:
    assert audit.out_dir is not None
    report = json.loads((audit.out_dir / "report.json").read_text())
    assert report["format"] == "ramparts-audit"
    assert report["config"]["threat_models"]["pgd"]["norm"] == "linf"
    assert report["config"]["threat_models"]["cw"]["norm"] == "l2"
    assert report["environment"]["packages"]["torch"] == torch.__version__.split("+")[0] or report[
        "environment"
    ]["packages"]["torch"].startswith(torch.__version__.split("+")[0])
    assert report["timings"]["total_s"] > 0
    assert "pgd_s" in report["timings"]
    summaries = [f["summary"] for f in report["evasion"]["findings"] if f["summary"]]
    assert summaries
    assert all("success_rate" in s for s in summaries)
    assert "Madry" in report["citations"]["PGD"]


def test_gate_passes_and_fails(digits_model, held_out: Dataset) -> None:
    kwargs = {"eps_grid": "0.3", "attacks": "fgsm", "n": 30, "reference_eps": 0.3, **NO_BB}
    strict = run_audit(digits_model.model, None, held_out, fail_under=0.99, **kwargs)
    lax = run_audit(digits_model.model, None, held_out, fail_under=0.0, **kwargs)
    assert strict.gate is not None
    assert strict.gate["passed"] is False
    assert lax.gate is not None
    assert lax.gate["passed"] is True

    def strip(findings: list[dict]) -> list[dict]:
        return [
            {**f, "summary": {k: v for k, v in f["summary"].items() if k != "elapsed_s"}} for f in findings
        ]

    assert strip(strict.findings) == strip(lax.findings), "same seed, same findings"


def test_reference_eps_joins_the_grid(digits_model, held_out: Dataset) -> None:
    report = run_audit(
        digits_model.model,
        None,
        held_out,
        eps_grid="0.3",
        attacks="fgsm",
        n=20,
        reference_eps="8/255",
        **NO_BB,
    )
    assert [f["eps"] for f in report.findings] == pytest.approx([8 / 255, 0.3])
    assert report.reference["eps_label"] == "8/255"


def test_resolve_checks() -> None:
    assert [c.key for c in resolve_checks("pgd,apgd-dlr")] == ["pgd", "apgd-dlr"]
    assert resolve_checks(["mifgsm"])[0].attack == "mifgsm"
    with pytest.raises(UnknownNameError, match="apgd-dlr"):
        resolve_checks(["nope"])
    with pytest.raises(UnknownNameError):
        resolve_checks(["ill"])  # targeted only: not part of an untargeted battery
    with pytest.raises(ValidationError, match="once"):
        resolve_checks(["pgd", "pgd"])
    assert set(CHECKS) == {"fgsm", "bim", "pgd", "apgd-ce", "apgd-dlr", "cw"}


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"eps_grid": "banana"}, "eps"),
        ({"eps_grid": "2"}, "eps"),
        ({"n": 0}, "n"),
        ({"fail_under": 1.5}, "fail_under"),
        ({"reference_eps": "0"}, "reference_eps"),
        ({"blackbox": "square", "query_budgets": "0,10"}, "query_budgets"),
        ({"blackbox": "square", "query_budgets": "ten"}, "query_budgets"),
        ({"blackbox": "square", "blackbox_n": 0}, "blackbox_n"),
        ({"blackbox": "hopskipjump", "blackbox_l2_eps": "-1"}, "blackbox_l2_eps"),
    ],
)
def test_bad_arguments_name_the_parameter(digits_model, held_out: Dataset, kwargs: dict, param: str) -> None:
    with pytest.raises(ValidationError, match=param):
        run_audit(digits_model.model, None, held_out, attacks="fgsm", **{**NO_BB, **kwargs})


def test_metrics_are_strict_json(audit: AuditReport) -> None:
    assert audit.out_dir is not None
    for name in ("metrics.json", "report.json", "config.json"):
        text = (audit.out_dir / name).read_text()
        assert "NaN" not in text
        assert "Infinity" not in text
        json.loads(text)


def test_default_audit_needs_no_arguments() -> None:
    """run_audit() trains the default model itself; a tiny grid keeps this fast."""
    report = run_audit(
        eps_grid="0.3", attacks="fgsm", n=20, epochs=1, reference_eps=0.3, query_budgets="10,30"
    )
    assert report.blackbox is not None, "the default black-box section runs"
    assert list(report.blackbox["checks"]) == ["square", "hopskipjump"]
    assert report.model["arch"] == "small_cnn"
    assert report.model["trained_here"] is True
    assert report.data["name"] == "digits"
    assert report.data["n_test"] == 449
    assert not math.isnan(report.clean_accuracy)


def _figures(folder: Path) -> dict[str, Any]:
    """report.json without what may differ between equal runs: timings, environment, resume notes."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "elapsed_s"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    report = json.loads((folder / "report.json").read_text())
    keep = ("config", "model", "data", "clean_accuracy", "reference", "evasion", "headlines", "gate")
    return strip({k: report[k] for k in keep})


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "adv_examples.npz", allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _assert_same_run(a: Path, b: Path) -> None:
    assert _figures(a) == _figures(b)
    arrays_a, arrays_b = _arrays(a), _arrays(b)
    assert sorted(arrays_a) == sorted(arrays_b)
    for key, value in arrays_a.items():
        np.testing.assert_array_equal(value, arrays_b[key], err_msg=key)


def _count_builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The keys of the checks whose attack is built from now on (once per attacked eps, and for the examples)."""
    calls: list[str] = []
    build = Check.build

    def counted(self: Check) -> Any:
        calls.append(self.key)
        return build(self)

    monkeypatch.setattr(Check, "build", counted)
    return calls


def test_interrupted_audit_resumes_to_the_same_report(
    digits_model, held_out: Dataset, audit: AuditReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert audit.out_dir is not None
    build = Check.build

    def interrupted(self: Check) -> Any:
        if self.key == "pgd" and len(json.loads((tmp_path / "metrics.json").read_text())["curves"]) > 4:
            raise KeyboardInterrupt  # during PGD's second eps, after FGSM's 4 and PGD's first
        return build(self)

    monkeypatch.setattr(Check, "build", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_audit(digits_model.model, None, held_out, out_dir=tmp_path, **KWARGS)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["check"] for r in metrics["curves"]] == ["fgsm"] * 4 + ["pgd"]
    assert metrics["minimum_norm"] == {}
    assert "report.json" not in {p.name for p in tmp_path.iterdir()}

    monkeypatch.setattr(Check, "build", build)
    calls = _count_builds(monkeypatch)
    resumed = run_audit(digits_model.model, None, held_out, out_dir=tmp_path, **KWARGS)
    assert "fgsm" not in calls, "FGSM's measurements are reused"
    assert calls.count("cw") == 1
    assert resumed.resumed == {"measurements_reused": 5, "measurements": 17, "model_reused": False}
    _assert_same_run(audit.out_dir, tmp_path)
    assert resumed.findings[4]["summary"] is not None


def test_resume_reruns_what_metrics_lost_and_rolls_arrays_back(
    digits_model, held_out: Dataset, audit: AuditReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """adv_examples.npz may be ahead of metrics.json (it is written first): the extra steps are redone."""
    assert audit.out_dir is not None
    folder = tmp_path / "run"
    shutil.copytree(audit.out_dir, folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["curves"] = [r for r in metrics["curves"] if r["check"] == "fgsm" or r["eps"] < 0.15]
    metrics["minimum_norm"] = {}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    for name in ("report.json", "report.html"):
        (folder / name).unlink()

    calls = _count_builds(monkeypatch)
    resumed = run_audit(digits_model.model, None, held_out, out_dir=folder, **KWARGS)
    assert "fgsm" not in calls
    assert calls.count("cw") == 1
    assert resumed.resumed is not None
    assert resumed.resumed["measurements_reused"] == 6 + 2 * len(BUDGETS) + 2, (
        "the black-box, theft and encryption steps too"
    )
    _assert_same_run(audit.out_dir, folder)


def nn_twin(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` with one weight nudged: another model to the audit."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        next(twin.parameters()).view(-1)[0] += 1e-3
    return twin


def test_another_configuration_is_refused_and_overwrite_starts_afresh(
    digits_model, held_out: Dataset, audit: AuditReport, tmp_path: Path
) -> None:
    assert audit.out_dir is not None
    folder = tmp_path / "run"
    shutil.copytree(audit.out_dir, folder)
    before = (folder / "metrics.json").read_text()
    with pytest.raises(RunFolderMismatchError, match=r"out_dir.*differs in n, eps_grid.*overwrite=True"):
        run_audit(
            digits_model.model, None, held_out, out_dir=folder, **{**KWARGS, "n": 30, "eps_grid": "0.3"}
        )
    with pytest.raises(ValidationError, match=r"identity\.model"):
        run_audit(nn_twin(digits_model.model), None, held_out, out_dir=folder, **KWARGS)
    assert (folder / "metrics.json").read_text() == before, "a refused run writes nothing"

    fresh = run_audit(
        digits_model.model,
        None,
        held_out,
        out_dir=folder,
        eps_grid="0.3",
        attacks="fgsm",
        n=20,
        overwrite=True,
        **NO_BB,
    )
    assert fresh.resumed is None
    assert not [k for k in _arrays(folder) if k.startswith(("pgd", "cw"))], "nothing left of the old run"
    assert json.loads((folder / "config.json").read_text())["n"] == 20


def test_default_model_is_reused_on_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs: dict[str, Any] = {
        "eps_grid": "0.3",
        "attacks": "fgsm",
        "n": 20,
        "epochs": 1,
        "reference_eps": 0.3,
        **NO_BB,
    }
    first = run_audit(out_dir=tmp_path / "a", **kwargs)
    assert first.model["trained_here"] is True
    shutil.copytree(tmp_path / "a", tmp_path / "b")

    def no_training(*args: Any, **kw: Any) -> Any:
        raise AssertionError("the model saved in the run folder should be reused")

    monkeypatch.setattr(ramparts.audit.run, "train_default_model", no_training)
    again = run_audit(out_dir=tmp_path / "b", **kwargs)
    assert again.resumed == {"measurements_reused": 5, "measurements": 5, "model_reused": True}
    assert again.membership == first.membership, "the membership section is reused too"
    assert again.poisoning == first.poisoning, "and the poisoning section"
    assert again.model == first.model
    _assert_same_run(tmp_path / "a", tmp_path / "b")
    with pytest.raises(RunFolderMismatchError, match=r"identity\.model"):
        run_audit(out_dir=tmp_path / "b", **{**kwargs, "epochs": 2})


def test_blackbox_section_success_never_falls_with_the_budget(audit: AuditReport) -> None:
    assert audit.blackbox is not None
    assert audit.blackbox["query_budgets"] == list(BUDGETS)
    for key in ("square", "hopskipjump"):
        section = audit.blackbox["checks"][key]
        curve = audit.success_curve(key)
        assert [b for b, _ in curve] == list(BUDGETS)
        rates = [r for _, r in curve]
        assert all(b >= a for a, b in itertools.pairwise(rates)), (key, rates)
        assert section["n"] == 24
        for row in section["rows"]:
            if row["summary"] is not None:
                assert row["summary"]["max_queries"] <= row["budget"], "the view enforces the budget"
                assert row["summary"]["median_queries"] is not None
        assert section["white_box"] is not None
    hsj = audit.blackbox["checks"]["hopskipjump"]
    assert hsj["knowledge"] == "label"
    assert hsj["norm"] == "l2"
    assert hsj["eps"] == pytest.approx(1.5)
    assert hsj["rows"][-1]["success_rate"] > 0.3, "label-only HopSkipJump fools digits at L2 1.5"
    assert audit.blackbox["checks"]["square"]["eps"] == pytest.approx(0.1), "linf at the reference eps"
    assert any(line.startswith("Black-box: Square") for line in audit.headlines)


def test_blackbox_examples_are_valid_and_fool_the_model(digits_model, audit: AuditReport) -> None:
    x, y = torch.from_numpy(audit.arrays["x"][:24]), torch.from_numpy(audit.arrays["y"][:24])
    for key, norm, eps in (("square", "linf", 0.1), ("hopskipjump", "l2", 1.5)):
        x_adv = torch.from_numpy(audit.arrays[f"bb_{key}_x_adv"])
        budget = audit.arrays[f"bb_{key}_budget_broken"]
        queries = audit.arrays[f"bb_{key}_queries"]
        fooled = torch.from_numpy(~np.isnan(budget))
        assert bool((queries[fooled.numpy()] <= budget[fooled.numpy()]).all())
        delta = (x_adv - x).flatten(1)
        dist = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
        assert bool((dist[fooled] <= eps + 1e-5).all()), key
        with torch.no_grad():
            pred = digits_model.model(x_adv[fooled]).argmax(dim=1)
        assert bool((pred != y[fooled]).all()), key
        rows = audit.blackbox["checks"][key]["rows"] if audit.blackbox else []
        assert rows[-1]["fooled"] == int(fooled.sum())


def test_resolve_blackbox() -> None:
    assert [c.key for c in resolve_blackbox("square,hopskipjump")] == ["square", "hopskipjump"]
    assert resolve_blackbox("none") == []
    assert resolve_blackbox(None) == []
    assert resolve_blackbox("nes")[0].budget_param is None
    with pytest.raises(ValidationError, match="score- or label-based"):
        BlackBoxCheck("pgd", "pgd")
    with pytest.raises(UnknownNameError, match="hopskipjump"):
        resolve_blackbox("pgd")


def test_audit_interrupted_in_the_blackbox_section_resumes_to_the_same_report(
    digits_model, held_out: Dataset, audit: AuditReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert audit.out_dir is not None
    build = BlackBoxCheck.build

    def interrupted(self: BlackBoxCheck, budget: int) -> Any:
        if self.key == "hopskipjump" and budget == BUDGETS[1]:
            raise KeyboardInterrupt
        return build(self, budget)

    monkeypatch.setattr(BlackBoxCheck, "build", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_audit(digits_model.model, None, held_out, out_dir=tmp_path, **KWARGS)
    recorded = json.loads((tmp_path / "metrics.json").read_text())["blackbox"]
    assert [r["budget"] for r in recorded["square"]["rows"]] == list(BUDGETS)
    assert [r["budget"] for r in recorded["hopskipjump"]["rows"]] == [BUDGETS[0]]

    monkeypatch.setattr(BlackBoxCheck, "build", build)
    calls: list[tuple[str, int]] = []

    def counted(self: BlackBoxCheck, budget: int) -> Any:
        calls.append((self.key, budget))
        return build(self, budget)

    monkeypatch.setattr(BlackBoxCheck, "build", counted)
    resumed = run_audit(digits_model.model, None, held_out, out_dir=tmp_path, **KWARGS)
    assert ("hopskipjump", BUDGETS[1]) in calls
    assert set(calls) <= {("hopskipjump", b) for b in BUDGETS[1:]}, "only what was missing runs"
    assert resumed.resumed is not None
    assert resumed.resumed["measurements_reused"] == 15 - 2
    _assert_same_run(audit.out_dir, tmp_path)


def test_theft_section_copies_the_model_and_transfers(audit: AuditReport) -> None:
    theft = audit.theft
    assert theft is not None
    config = theft["config"]
    labelled = config["seeds"] * 2 ** (config["params"]["rounds"] - 1)
    assert theft["queries"] == labelled == theft["curve"][-1][0]
    assert [q for q, _ in theft["curve"]] == sorted(q for q, _ in theft["curve"])
    assert 0.0 <= theft["fidelity"] <= 1.0
    assert 0.0 <= theft["accuracy"] <= 1.0
    assert theft["n_eval"] == 60  # the seeds come from test images the audit does not evaluate on
    assert [r["eps"] for r in theft["transfer"]] == [0.1, 0.3]
    assert all(0.0 <= r["oracle_error"] <= 1.0 and "noise_error" in r for r in theft["transfer"])
    assert any(line.startswith("A label-only attacker with 400 queries") for line in audit.headlines)
    assert audit.out_dir is not None
    report = json.loads((audit.out_dir / "report.json").read_text())
    metrics = json.loads((audit.out_dir / "metrics.json").read_text())
    assert report["theft"]["fidelity"] == metrics["theft"]["fidelity"] == theft["fidelity"]
    assert report["config"]["theft"]["attack"] == "jacobian"


def test_theft_section_is_reused_on_resume(
    audit: AuditReport, held_out: Dataset, digits_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert audit.out_dir is not None
    folder = tmp_path / "copy"
    shutil.copytree(audit.out_dir, folder)

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the recorded theft section was measured again")

    monkeypatch.setattr(ramparts.audit.theft, "transfer_attack", never)
    resumed = run_audit(digits_model.model, None, held_out, out_dir=folder, **KWARGS)
    assert resumed.theft == audit.theft
    assert resumed.resumed is not None
    assert resumed.resumed["measurements_reused"] == resumed.resumed["measurements"]


def test_theft_none_skips_the_section(digits_model, held_out: Dataset) -> None:
    report = run_audit(
        digits_model.model, None, held_out, eps_grid=(0.1,), attacks="fgsm", n=20, theft="none", **NO_BB
    )
    assert report.theft is None
    assert report.config["theft"] is None
    with pytest.raises(ValidationError, match="theft"):
        run_audit(digits_model.model, None, held_out, attacks="fgsm", n=20, theft="knockoff", **NO_BB)


def test_resume_on_another_thread_count_is_refused(digits_model, held_out: Dataset, tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"eps_grid": (0.1,), "attacks": "fgsm", "n": 10, "theft": "none", **NO_BB}
    run_audit(digits_model.model, None, held_out, out_dir=tmp_path, **kwargs)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        with pytest.raises(RunFolderMismatchError, match=r"identity\.model"):
            run_audit(digits_model.model, None, held_out, out_dir=tmp_path, **kwargs)
    finally:
        torch.set_num_threads(threads)


def test_membership_section_scores_training_records(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {
        "eps_grid": "0.3",
        "attacks": "fgsm",
        "n": 20,
        "epochs": 2,
        "reference_eps": 0.3,
    }
    report = run_audit(out_dir=tmp_path, theft="none", membership_shadows=4, **kwargs, **NO_BB)
    section = report.membership
    assert section is not None
    assert section["config"]["shadows"] == 4
    assert section["config"]["members"] == report.data["n_train"]
    assert [r["label"] for r in section["attacks"]] == ["LOSS", "LiRA online", "LiRA offline"]
    assert section["fpr"] == 0.01, "449 non-members cannot resolve 0.1%"
    for row in section["attacks"]:
        assert 0.0 <= row["tpr"] <= 1.0
        assert 0.0 <= row["auc"] <= 1.0
        assert row["queries"] >= section["config"]["members"] + section["config"]["non_members"]
    assert any(line.startswith("Membership: ") for line in report.headlines)
    assert "membership" in report.figures
    html = (tmp_path / "report.html").read_text()
    assert "Membership inference: does the model give its training records away?" in html
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["membership"]["attacks"][0]["auc"] == section["attacks"][0]["auc"]

    skipped = run_audit(theft="none", membership_shadows=0, **kwargs, **NO_BB)
    assert skipped.membership is None
    assert skipped.config["membership"] is None


def test_membership_needs_the_training_data(digits_model, held_out: Dataset) -> None:
    report = run_audit(
        digits_model.model, None, held_out, eps_grid=(0.1,), attacks="fgsm", n=20, theft="none", **NO_BB
    )
    assert report.membership is None, "a given model without its training data has no membership section"
    with pytest.raises(ValidationError, match="membership_shadows"):
        run_audit(digits_model.model, None, held_out, attacks="fgsm", n=20, membership_shadows=-1, **NO_BB)


def test_poisoning_section_retrains_on_poisoned_data(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {
        "eps_grid": "0.3",
        "attacks": "fgsm",
        "n": 20,
        "epochs": 4,
        "reference_eps": 0.3,
    }
    report = run_audit(
        out_dir=tmp_path, theft="none", membership_shadows=0, poisoning_fractions=(0.1,), **kwargs, **NO_BB
    )
    section = report.poisoning
    assert section is not None
    assert section["config"]["fractions"] == [0.1]
    assert section["config"]["train_records"] == report.data["n_train"]
    flips, backdoor = section["attacks"]
    assert [flips["attack"], backdoor["attack"]] == ["flip_random", "badnets"]
    for row in (flips, backdoor):
        clean, point = row["curve"]
        assert clean["fraction"] == 0.0
        assert point["fraction"] == pytest.approx(0.1, abs=1e-3)
        assert point["n_poison"] == round(0.1 * report.data["n_train"])
        assert 0.0 <= point["clean_accuracy"] <= 1.0
    assert flips["curve"][1]["attack_success"] is None
    assert backdoor["curve"][1]["attack_success"] > 0.5, "10% backdoored digits plant the trigger"
    defense = section["defense"]
    assert defense["detection"]["poisons"] == backdoor["curve"][1]["n_poison"]
    assert 0.0 <= defense["detection"]["recall"] <= 1.0
    assert defense["after"]["poisons_left"] <= defense["detection"]["poisons"]
    assert any(line.startswith("Poisoning: ") for line in report.headlines)
    assert "poisoning" in report.figures
    html = (tmp_path / "report.html").read_text()
    assert "Poisoning: how far do a few poisoned training records move the model?" in html
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["poisoning"]["attacks"][1]["curve"] == backdoor["curve"]
    with pytest.raises(ValidationError, match="poisoning_fractions"):
        run_audit(poisoning_fractions=(0.7,), **kwargs, **NO_BB)


def test_poisoning_records_draw_a_fixed_subset() -> None:
    train = load_digits().subset(range(1400))
    assert ramparts.audit.poisoning.training_subset(train, 0, seed=0) is train
    assert ramparts.audit.poisoning.training_subset(train, 5000, seed=0) is train
    part = ramparts.audit.poisoning.training_subset(train, 300, seed=0)
    again = ramparts.audit.poisoning.training_subset(train, 300, seed=0)
    other = ramparts.audit.poisoning.training_subset(train, 300, seed=1)
    assert len(part) == 300
    assert torch.equal(part.x, again.x)
    assert not torch.equal(part.x, other.x)
    config = ramparts.audit.poisoning.poisoning_config(part, (0.05,), of=len(train))
    assert (config["train_records"], config["drawn_from"]) == (300, 1400)
    assert "drawn_from" not in ramparts.audit.poisoning.poisoning_config(train, (0.05,), of=len(train))
    with pytest.raises(ValidationError, match="poisoning_records"):
        run_audit(poisoning_records=-1, attacks="fgsm", n=5, **NO_BB)


def test_masking_checks_fire_on_their_symptoms() -> None:
    from ramparts.audit.masking import masking_checks

    findings = [
        {"check": "fgsm", "eps": 0.1, "robust_accuracy": 0.30},
        {"check": "pgd", "eps": 0.1, "robust_accuracy": 0.50},
        {"check": "fgsm", "eps": 0.2, "robust_accuracy": 0.10},
        {"check": "pgd", "eps": 0.2, "robust_accuracy": 0.05},
    ]
    blackbox = {
        "checks": {
            "square": {
                "label": "Square",
                "knowledge": "score",
                "eps_label": "8/255",
                "rows": [{"success_rate": 0.4}, {"success_rate": 0.9}],
                "white_box": {"label": "white-box linf battery", "success_rate": 0.6},
            }
        }
    }
    found = masking_checks(findings, blackbox)
    assert len(found) == 2
    assert found[0].startswith("fgsm (robust accuracy 30.0%) beats the iterative pgd (50.0%) at eps 0.1")
    assert found[1].startswith(
        "Square (score-only) fools 90.0% at eps 8/255, more than the white-box linf battery"
    )
    healthy = [{**f, "robust_accuracy": 0.6 if f["check"] == "fgsm" else 0.5} for f in findings[:2]]
    assert masking_checks(healthy, None) == []


def test_audit_report_carries_masking_warnings(audit: AuditReport) -> None:
    saved = audit.to_dict()
    assert saved["masking_warnings"] == audit.masking
    assert all(isinstance(w, str) for w in audit.masking)
    assert any(line.startswith("Gradient-masking check") for line in audit.headlines) == bool(audit.masking)
