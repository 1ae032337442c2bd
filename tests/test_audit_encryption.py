"""Tests for the audit's encryption section: encryptable as it is, or at the measured cost of an x^2 twin."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import ramparts.audit.encryption
from ramparts import zoo
from ramparts.audit import AuditReport, Check, run_audit
from ramparts.data import Dataset, load_digits, train_test_split
from ramparts.errors import ValidationError
from ramparts.protection.poly import polynomialize
from ramparts.training import TrainConfig, train

KWARGS: dict[str, Any] = {
    "eps_grid": (0.1,),
    "attacks": [Check("fgsm", "fgsm", {}, "linf", "FGSM")],
    "n": 24,
    "seed": 0,
    "reference_eps": 0.1,
    "blackbox": None,
    "theft": None,
    "membership_shadows": 0,
    "poisoning_fractions": None,
    "epochs": 3,
    "encryption_queries": 2,
}


@pytest.fixture(scope="module")
def splits() -> tuple[Dataset, Dataset]:
    return train_test_split(load_digits(), test_fraction=0.25, seed=0)


def _mlp(train_ds: Dataset, poly: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = zoo.build("mlp", in_channels=1, input_size=8, num_classes=10, hidden=[32])
    if poly:
        model = polynomialize(model)
    train(model, train_ds, config=TrainConfig(epochs=5, lr=3e-3, batch_size=64, seed=0), progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def relu_audit(splits: tuple[Dataset, Dataset], tmp_path_factory: pytest.TempPathFactory) -> AuditReport:
    out = tmp_path_factory.mktemp("relu")
    return run_audit(_mlp(splits[0], poly=False), splits[0], splits[1], out_dir=out, **KWARGS)


def test_an_encryptable_model_is_measured_as_it_is(splits: tuple[Dataset, Dataset]) -> None:
    report = run_audit(_mlp(splits[0], poly=True), splits[0], splits[1], **KWARGS)
    section = report.encryption
    assert section is not None
    assert section["as_is"]["encryptable"] is True
    assert section["twin"] is None
    measured = section["measured"]
    assert measured["model"] == "the audited model"
    for packing, n in (("batch", 24), ("query", 2)):
        row = measured[packing]
        assert row["n"] == n
        assert row["agreement"] == 1.0
        assert row["max_logit_error"] < 1e-2
        assert row["images_per_s"] > 0
        assert row["input_bytes_per_image"] > 1000
    assert measured["batch"]["keys_bytes"]["relin"] > 0
    assert measured["query"]["keys_bytes"]["galois"] > measured["query"]["keys_bytes"]["relin"]
    assert "galois" not in measured["batch"]["keys_bytes"]
    assert any(line.startswith("Encryption: the audited model runs") for line in report.headlines)


def test_a_relu_model_gets_a_measured_twin(relu_audit: AuditReport) -> None:
    section = relu_audit.encryption
    assert section is not None
    assert section["as_is"]["encryptable"] is False
    assert "ReLU" in section["as_is"]["reason"]
    twin = section["twin"]
    assert twin["arch"] == "mlp"
    assert 0.5 < twin["accuracy"] <= 1.0
    assert twin["cost_vs_audited"] == pytest.approx(relu_audit.clean_accuracy - twin["accuracy"])
    assert section["measured"]["batch"]["agreement"] == 1.0
    assert any(line.startswith("Encryption: not as it is") for line in relu_audit.headlines)


def test_section_is_in_json_and_html(relu_audit: AuditReport) -> None:
    assert relu_audit.out_dir is not None
    report = json.loads((relu_audit.out_dir / "report.json").read_text())
    assert report["version"] == 4
    assert report["encryption"]["twin"]["arch"] == "mlp"
    html = (relu_audit.out_dir / "report.html").read_text()
    assert "Encryption: can this model be served on encrypted inputs?" in html
    assert "CryptoNets" in html


def test_resume_reuses_the_section(
    relu_audit: AuditReport, splits: tuple[Dataset, Dataset], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert relu_audit.out_dir is not None
    for f in relu_audit.out_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the recorded encryption section should have been reused")

    monkeypatch.setattr(ramparts.audit.encryption, "_measure", never)
    resumed = run_audit(_mlp(splits[0], poly=False), splits[0], splits[1], out_dir=tmp_path, **KWARGS)
    assert resumed.encryption == relu_audit.encryption


def test_twin_recipe_follows_the_input() -> None:
    assert ramparts.audit.encryption.twin_recipe((1, 28, 28), 5)["arch"] == "encryptable_cnn"
    assert ramparts.audit.encryption.twin_recipe((1, 8, 8), 5)["arch_config"] == {"hidden": [32]}
    assert ramparts.audit.encryption.twin_recipe((3, 32, 32), 5)["arch_config"] == {"hidden": [64]}


def test_switched_off_and_bad_values(splits: tuple[Dataset, Dataset]) -> None:
    model = _mlp(splits[0], poly=True)
    assert run_audit(model, splits[0], splits[1], **{**KWARGS, "encryption": False}).encryption is None
    with pytest.raises(ValidationError, match="encryption_queries"):
        run_audit(model, splits[0], splits[1], **{**KWARGS, "encryption_queries": 0})
