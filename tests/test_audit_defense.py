"""Tests for the audit's defence section: a defended model is judged by the adaptive attack that fits it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open

import ramparts.audit.defense
from ramparts.audit import AuditReport, Check, run_audit
from ramparts.audit.masking import defense_warnings
from ramparts.data import Dataset, load_digits
from ramparts.defenses.base import DefendedModel
from ramparts.defenses.squeezing import BitDepth, feature_squeezing
from ramparts.defenses.transforms import RandomNoise
from ramparts.errors import ValidationError
from ramparts.oracles import TorchOracle

EPS = 0.2
# Small budgets and every other section off: the defence section is what these tests look at.
KWARGS: dict[str, Any] = {
    "eps_grid": (EPS,),
    "attacks": [Check("pgd", "pgd", {"steps": 10}, "linf", "PGD")],
    "n": 60,
    "seed": 0,
    "reference_eps": EPS,
    "blackbox": None,
    "theft": None,
    "defense_steps": 20,
    "encryption": False,
}


@pytest.fixture(scope="module")
def splits() -> tuple[Dataset, Dataset]:
    """(calibration data for the detectors, held-out data to audit): digits the fixture model never saw."""
    ds = load_digits()
    return ds.subset(range(1400, 1600)), ds.subset(range(1600, len(ds)))


@pytest.fixture(scope="module")
def squeezed(digits_model, splits: tuple[Dataset, Dataset]) -> DefendedModel:
    """Feature squeezing as preprocessing (2-bit depth, not differentiable: BPDA) and as a detector."""
    detector = feature_squeezing(digits_model.model, splits[0], fpr=0.05).detectors
    return DefendedModel(digits_model.model, transforms=[BitDepth(2)], detectors=list(detector))


@pytest.fixture(scope="module")
def audited(squeezed: DefendedModel, splits: tuple[Dataset, Dataset], tmp_path_factory) -> AuditReport:
    out = tmp_path_factory.mktemp("defense")
    return run_audit(squeezed, None, splits[1], out_dir=out, **KWARGS)


def test_section_describes_the_defence(audited: AuditReport) -> None:
    section = audited.defense
    assert section is not None
    described = section["defense"]
    assert [t["name"] for t in described["transforms"]] == ["BitDepth"]
    assert described["transforms"][0]["settings"]["bits"] == 2
    assert described["transforms"][0]["differentiable"] is False
    assert [d["name"] for d in described["detectors"]] == ["SqueezeDetector"]
    assert math.isfinite(described["detectors"][0]["threshold"])
    assert section["config"]["adaptive"]["bpda"] == ["BitDepth"]
    assert section["config"]["adaptive"]["bpda_in_detectors"] == ["BitDepth", "MedianFilter"]
    assert section["config"]["adaptive"]["detector_weight"] > 0
    assert section["config"]["adaptive"]["eot_samples"] == 1  # not random: no EOT


def test_rates_are_shares_and_adaptive_is_the_stronger_attack(audited: AuditReport) -> None:
    s = audited.defense
    assert s is not None
    values = [
        *(v for v in s["clean"].values() if v is not None),
        *(s["transfer"][k] for k in ("classifier_robust_accuracy", "rejected", "robust_accuracy")),
        s["adaptive"]["robust_accuracy"],
        s["adaptive"]["rejected"],
        s["robust_accuracy"],
    ]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert s["adaptive"]["robust_accuracy"] <= s["transfer"]["robust_accuracy"]
    assert s["robust_accuracy"] <= min(s["adaptive"]["robust_accuracy"], s["transfer"]["robust_accuracy"])
    # robust means rightly classified or rejected: never above the clean number of the whole defence
    assert s["robust_accuracy"] <= s["clean"]["robust_accuracy"]


def test_saved_adaptive_examples_fool_the_defence(squeezed: DefendedModel, audited: AuditReport) -> None:
    assert audited.out_dir is not None
    with np.load(audited.out_dir / "adv_examples.npz", allow_pickle=False) as npz:
        x, y, x_adv = (torch.as_tensor(npz[k]) for k in ("x", "y", "defense_adaptive_x_adv"))
    assert float((x_adv - x).abs().max()) <= EPS + 1e-6
    with torch.no_grad():
        fooled = (squeezed(x_adv).argmax(dim=1) != y) & ~squeezed.rejects(x_adv)
    assert float(fooled.float().mean()) == pytest.approx(1 - audited.defense["adaptive"]["robust_accuracy"])


def test_section_is_in_report_json_and_html(audited: AuditReport) -> None:
    assert audited.out_dir is not None
    report = json.loads((audited.out_dir / "report.json").read_text())
    assert report["version"] == 4
    assert report["defense"]["robust_accuracy"] == pytest.approx(audited.defense["robust_accuracy"])
    assert "defense.json" in report["files"]
    assert any(line.startswith("Defence (BitDepth, SqueezeDetector)") for line in report["headlines"])
    html = (audited.out_dir / "report.html").read_text()
    assert "Defence: judged by the adaptive attack that fits it" in html
    assert audited.defense["conclusion"].split(" (")[0] in html
    assert "BitDepth(bits=2" in html


def test_masked_gradients_and_the_non_adaptive_gap_are_warned(audited: AuditReport) -> None:
    """2-bit depth blunts the battery's plain gradients; BPDA goes through (Athalye et al. 2018)."""
    s = audited.defense
    assert s is not None
    assert s["gap"] > 0.1
    assert any(w.startswith("defence judged non-adaptively looks") for w in audited.masking)
    battery = audited.robust_accuracy(check="pgd")
    assert battery > s["robust_accuracy"]


def test_gate_reads_the_defence_number(squeezed: DefendedModel, splits: tuple[Dataset, Dataset]) -> None:
    report = run_audit(squeezed, None, splits[1], fail_under=0.99, **{**KWARGS, "n": 20, "defense_steps": 5})
    assert report.gate is not None
    assert report.defense is not None
    assert report.gate["robust_accuracy"] == report.defense["robust_accuracy"]
    assert report.gate["source"].startswith("defence section")
    assert not report.gate["passed"]


def test_plain_model_has_no_defence_section(digits_model, splits: tuple[Dataset, Dataset]) -> None:
    report = run_audit(digits_model.model, None, splits[1], **{**KWARGS, "n": 20})
    assert report.defense is None
    assert report.to_dict()["defense"] is None
    assert report.config["defense"] is None
    assert not any(line.startswith("Defence") for line in report.headlines)


def test_defense_steps_zero_skips_the_section(
    squeezed: DefendedModel, splits: tuple[Dataset, Dataset]
) -> None:
    report = run_audit(squeezed, None, splits[1], **{**KWARGS, "n": 20, "defense_steps": 0})
    assert report.defense is None
    with pytest.raises(ValidationError, match="defense_steps"):
        run_audit(squeezed, None, splits[1], **{**KWARGS, "n": 20, "defense_steps": -1})


def test_resume_reuses_the_section(
    squeezed: DefendedModel,
    splits: tuple[Dataset, Dataset],
    audited: AuditReport,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert audited.out_dir is not None
    for f in audited.out_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the recorded defence section should have been reused")

    monkeypatch.setattr(ramparts.audit.defense, "_measure", never)
    resumed = run_audit(squeezed, None, splits[1], out_dir=tmp_path, **KWARGS)
    assert resumed.defense == audited.defense
    assert resumed.resumed is not None
    assert resumed.resumed["measurements_reused"] == 2


def test_another_threshold_is_another_configuration(
    squeezed: DefendedModel, splits: tuple[Dataset, Dataset], tmp_path: Path
) -> None:
    """Thresholds are not in the state_dict: the defence's description fingerprints them."""
    kwargs = {**KWARGS, "n": 20, "defense_steps": 5}
    run_audit(squeezed, None, splits[1], out_dir=tmp_path, **kwargs)
    detector = squeezed.detectors[0]
    old = detector.threshold
    try:
        detector.threshold = old + 0.1
        with pytest.raises(ValidationError, match=r"identity\.defense"):
            run_audit(squeezed, None, splits[1], out_dir=tmp_path, **kwargs)
    finally:
        detector.threshold = old


def test_random_defence_uses_eot_and_repeats(digits_model, splits: tuple[Dataset, Dataset]) -> None:
    noisy = DefendedModel(digits_model.model, transforms=[RandomNoise(sigma=0.3, seed=5)])
    kwargs = {**KWARGS, "n": 30, "defense_steps": 10, "defense_eot_samples": 4, "defense_votes": 3}
    first = run_audit(noisy, None, splits[1], **kwargs)
    noisy.transforms[0].reseed(9)  # the audit reseeds from its own seed: what came before does not matter
    again = run_audit(noisy, None, splits[1], **kwargs)
    assert first.defense is not None
    assert again.defense is not None
    assert first.defense["config"]["adaptive"]["eot_samples"] == 4
    assert first.defense["config"]["votes"] == 3
    assert first.defense["clean"]["draw_agreement"] is not None
    assert first.defense == again.defense
    assert [f["robust_accuracy"] for f in first.findings] == [f["robust_accuracy"] for f in again.findings]
    assert first.clean_accuracy == again.clean_accuracy
    assert "random" in first.defense["evasion_note"]


def test_normalising_oracle_around_a_defence_is_refused(
    squeezed: DefendedModel, splits: tuple[Dataset, Dataset]
) -> None:
    oracle = TorchOracle(squeezed, input_shape=(1, 8, 8), mean=[0.5], std=[0.5])
    with pytest.raises(ValidationError, match="normalisation inside"):
        run_audit(oracle, None, splits[1], **{**KWARGS, "n": 10})


def test_defense_warnings_read_the_gap() -> None:
    section: dict[str, Any] = {
        "gap": 0.3,
        "config": {"warn_gap": 0.1, "adaptive": {"bpda": []}},
        "transfer": {"robust_accuracy": 0.8},
        "robust_accuracy": 0.5,
        "eps": 0.1,
        "eps_label": "0.1",
        "clean": {"draw_agreement": None},
        "defense": {"detectors": [{"name": "d"}]},
    }
    assert len(defense_warnings(section)) == 1
    assert "30.0 points" in defense_warnings(section)[0]
    assert defense_warnings({**section, "gap": 0.05}) == []
    assert defense_warnings(None) == []


def test_shared_weights_are_saved_once(squeezed: DefendedModel, audited: AuditReport) -> None:
    """The detector holds the classifier: the run folder's safetensors stores its weights once."""
    assert audited.out_dir is not None
    with safe_open(str(audited.out_dir / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        aliases = json.loads(f.metadata()["aliases"])
    assert keys.isdisjoint(aliases)
    assert set(aliases.values()) <= keys
    assert keys | set(aliases) == set(squeezed.state_dict())


def test_run_folder_keeps_the_whole_defence(splits: tuple[Dataset, Dataset], tmp_path: Path) -> None:
    """A defended zoo model is written to the run folder in the defended format and loads back whole."""
    from ramparts import zoo

    config = {"in_channels": 1, "input_size": 8, "num_classes": 10, "hidden": [32]}
    torch.manual_seed(0)
    classifier = zoo.build("mlp", **config).eval()
    defended = feature_squeezing(classifier, splits[0], fpr=0.05)
    kwargs = {**KWARGS, "n": 20, "defense_steps": 2}
    run_audit(
        defended, None, splits[1], out_dir=tmp_path, model_info={"arch": "mlp", "config": config}, **kwargs
    )
    loaded, meta = zoo.load_model(tmp_path)
    assert isinstance(loaded, DefendedModel)
    assert meta["arch"] == "mlp"
    x = splits[1].x[:50]
    with torch.no_grad():
        assert torch.equal(loaded(x), defended(x))
    assert torch.equal(loaded.rejects(x), defended.rejects(x))
