"""The audit's inputs: TorchScript (white-box), ONNX and HTTP APIs (black-box only, with the skipped sections and
why), pickled files refused, the retraining recipe, and the CLI's loader (`load_audit_target`)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn

from ramparts import zoo
from ramparts.audit import AuditReport, run_audit
from ramparts.audit.model import LabelScores, load_audit_model, model_kind, resolve_recipe
from ramparts.audit.run import unavailable_sections
from ramparts.cli._common import load_audit_target
from ramparts.data import Dataset, load_digits
from ramparts.errors import AccessError, UnknownNameError, ValidationError
from ramparts.oracles import Knowledge, OnnxOracle, load_oracle, model_file_kind, torch_file_kind
from ramparts.targets import view_for
from tests.conftest import Trained
from tests.test_oracles_http import _app, _Server

# Tiny budgets: every section that can run does, in a few seconds.
TINY: dict[str, Any] = {
    "eps_grid": "0.1",
    "attacks": "fgsm,pgd",
    "n": 24,
    "reference_eps": 0.1,
    "query_budgets": "10,20",
    "blackbox_n": 8,
    "blackbox_l2_eps": 1.5,
    "theft_seeds": 20,
    "membership_shadows": 2,
    "poisoning_fractions": (0.1,),
    "epochs": 1,
    "encryption": False,
}
BLACK_BOX_ONLY = {"evasion_white_box", "membership", "poisoning"}


@pytest.fixture(scope="module")
def splits() -> tuple[Dataset, Dataset]:
    """The digits the conftest model was trained on (first 1400) and the held-out rest."""
    ds = load_digits()
    return ds.subset(range(1400)), ds.subset(range(1400, len(ds)))


def _onnx(model: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter is deprecated
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 8, 8),),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


@pytest.fixture(scope="module")
def onnx_file(digits_model: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _onnx(digits_model.model, tmp_path_factory.mktemp("onnx") / "digits.onnx")


@pytest.fixture(scope="module")
def script_file(digits_model: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ts") / "digits.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated for torch.export
        torch.jit.save(torch.jit.trace(digits_model.model, torch.zeros(1, 1, 8, 8)), str(path))
    return path


@pytest.fixture(scope="module")
def onnx_audit(
    onnx_file: Path, splits: tuple[Dataset, Dataset], tmp_path_factory: pytest.TempPathFactory
) -> AuditReport:
    oracle, info = load_audit_model(str(onnx_file), splits[1])
    out = tmp_path_factory.mktemp("onnx-audit")
    return run_audit(oracle, splits[0], splits[1], model_info=info, out_dir=out, fail_under=0.1, **TINY)


def test_onnx_model_gets_the_black_box_sections_only(onnx_audit: AuditReport, digits_model: Trained) -> None:
    report = onnx_audit
    skipped = report.config["skipped"]
    assert BLACK_BOX_ONLY | {"encryption"} == set(skipped), skipped
    assert skipped["evasion_white_box"] == "needs gradients, and the model is an ONNX file"
    assert "switched off" in skipped["encryption"], "encryption=False says so rather than blaming the model"
    for section in ("membership", "poisoning"):
        assert "recipe='default'" in skipped[section], "the reason says how to run it anyway"
    assert report.config["recipe"]["arch"] is None
    assert report.findings == []
    assert report.config["checks"] == []
    assert report.worst_case == []
    assert report.reference["robust_accuracy"] is None
    assert report.membership is None
    assert report.poisoning is None
    assert report.blackbox is not None
    assert list(report.blackbox["checks"]) == ["square", "hopskipjump"]
    assert report.theft is not None
    assert report.theft["queries"] > 0
    assert report.gate is not None
    assert report.gate["passed"] is False, "no white-box number: the gate cannot pass"
    assert report.model["kind"] == "onnx"
    assert report.model["knowledge"] == "score"
    assert any(line.startswith("Not run: white-box evasion: needs gradients") for line in report.headlines)
    assert any(line.startswith("Not run: membership inference, poisoning:") for line in report.headlines)
    assert not any("switched off" in line for line in report.headlines), "the user knows what they turned off"
    assert report.out_dir is not None
    saved = json.loads((report.out_dir / "report.json").read_text())
    assert saved["config"]["skipped"] == skipped
    assert (report.out_dir / "report.html").stat().st_size > 0
    # The ONNX answers are the torch model's: the clean accuracy matches on the audited images.
    x, y = torch.as_tensor(report.arrays["x"]), torch.as_tensor(report.arrays["y"])
    assert report.clean_accuracy == pytest.approx(float((digits_model.oracle.labels(x) == y).float().mean()))


def test_onnx_run_folder_resumes(
    onnx_audit: AuditReport, onnx_file: Path, splits: tuple[Dataset, Dataset]
) -> None:
    """An ONNX file is fingerprinted by its bytes, so its run folder resumes instead of being refused."""
    oracle, info = load_audit_model(str(onnx_file), splits[1])
    again = run_audit(
        oracle, splits[0], splits[1], model_info=info, out_dir=onnx_audit.out_dir, fail_under=0.1, **TINY
    )
    assert again.resumed is not None
    assert again.resumed["measurements_reused"] >= 1
    assert again.theft == onnx_audit.theft


def test_default_recipe_runs_membership_on_an_onnx_model(
    onnx_file: Path, splits: tuple[Dataset, Dataset]
) -> None:
    oracle, info = load_audit_model(str(onnx_file), splits[1])
    kwargs = {**TINY, "blackbox": None, "theft": None, "poisoning_fractions": None}
    report = run_audit(oracle, splits[0], splits[1], model_info=info, recipe="default", **kwargs)
    assert report.membership is not None, "LOSS and LiRA read the ONNX model's scores"
    recipe = report.membership["config"]["recipe"]
    assert recipe["arch"] == "small_cnn"
    assert "proxy" in report.config["recipe"]["source"]
    assert "membership" not in report.config["skipped"]
    assert any(
        line.startswith("Membership retrained small_cnn (epochs 1, lr 0.002") for line in report.headlines
    )


def test_torchscript_model_is_audited_white_box_like_the_module(
    script_file: Path, digits_model: Trained, splits: tuple[Dataset, Dataset], tmp_path: Path
) -> None:
    assert torch_file_kind(script_file) == "torchscript"
    oracle, info = load_audit_model(str(script_file), splits[1])
    assert oracle.knowledge == Knowledge.GRADIENT
    assert info["kind"] == "torchscript"
    assert info["parameters"] == sum(p.numel() for p in digits_model.model.parameters())
    kwargs = {**TINY, "blackbox": None, "theft": None, "membership_shadows": 0, "poisoning_fractions": None}
    scripted = run_audit(oracle, None, splits[1], model_info=info, out_dir=tmp_path, **kwargs)
    plain = run_audit(digits_model.model, None, splits[1], **kwargs)
    assert [f["check"] for f in scripted.findings] == ["fgsm", "pgd"]
    assert [f["robust_accuracy"] for f in scripted.findings] == [f["robust_accuracy"] for f in plain.findings]
    assert scripted.reference["robust_accuracy"] == plain.reference["robust_accuracy"]
    assert "evasion_white_box" not in scripted.config["skipped"]
    assert all("switched off" in reason for reason in scripted.config["skipped"].values())
    resumed = run_audit(oracle, None, splits[1], model_info=info, out_dir=tmp_path, **kwargs)
    assert resumed.resumed is not None
    assert resumed.resumed["measurements_reused"] == 2


def test_pickled_torch_save_files_are_refused(
    digits_model: Trained, splits: tuple[Dataset, Dataset], tmp_path: Path
) -> None:
    whole, state = tmp_path / "whole.pt", tmp_path / "state.pth"
    torch.save(digits_model.model, whole)
    torch.save(digits_model.model.state_dict(), state)
    legacy = tmp_path / "legacy.pt"
    torch.save(digits_model.model.state_dict(), legacy, _use_new_zipfile_serialization=False)
    for path in (whole, state, legacy):
        assert torch_file_kind(path) == "pickle"
        with pytest.raises(ValidationError, match=r"^model: .*pickled torch\.save file.*torch\.jit\.script"):
            load_audit_model(str(path), splits[1])
        with pytest.raises(ValidationError, match=r"^oracle: .*never unpickles"):
            load_oracle(str(path))
    junk = tmp_path / "notes.txt"
    junk.write_text("not a model")
    with pytest.raises(ValidationError, match=r"^model: .*TorchScript"):
        load_audit_model(str(junk), splits[1])


def test_state_dict_beside_its_json_is_still_a_zoo_model(
    tmp_path: Path, splits: tuple[Dataset, Dataset]
) -> None:
    """zoo.load_model reads a .pt state dict next to its .json with weights_only=True: not a TorchScript file."""
    model = zoo.build("mlp", in_channels=1, input_size=8, num_classes=10)
    zoo.save_model(
        model, tmp_path / "m", arch="mlp", config={"in_channels": 1, "input_size": 8, "num_classes": 10}
    )
    torch.save(model.state_dict(), tmp_path / "m.pt")
    assert model_file_kind(tmp_path / "m.pt") == "zoo"
    assert model_kind(str(tmp_path / "m.pt")) == "zoo"
    oracle, info = load_audit_model(str(tmp_path / "m.pt"), splits[1])
    assert info["kind"] == "zoo"
    assert info["arch"] == "mlp"
    assert oracle.knowledge == Knowledge.GRADIENT


def test_http_api_is_audited_black_box(
    digits_model: Trained, splits: tuple[Dataset, Dataset], tmp_path: Path
) -> None:
    kwargs = {**TINY, "poisoning_fractions": None, "encryption": True}
    with _Server(_app(digits_model.model)) as server:
        oracle, info = load_audit_model(f"{server.url}/scores?key=s3cret", splits[1])
        scores = run_audit(oracle, None, splits[1], model_info=info, **kwargs)
        config = tmp_path / "labels.json"
        config.write_text(json.dumps({"output_kind": "labels", "output_field": "label", "batch_size": 64}))
        label_oracle, label_info = load_audit_model(
            f"{server.url}/labels", splits[1], oracle_config=str(config)
        )
        labels = run_audit(label_oracle, None, splits[1], model_info=label_info, **kwargs)
    assert "s3cret" not in json.dumps(info), "the report shows the URL without its query"
    assert info["kind"] == "http"
    assert info["api"]["output_kind"] == "probabilities"
    assert set(scores.config["skipped"]) == {"evasion_white_box", "membership", "poisoning", "encryption"}
    assert "training data" in scores.config["skipped"]["membership"]
    assert "HTTP prediction API" in scores.config["skipped"]["encryption"]
    assert scores.blackbox is not None
    assert list(scores.blackbox["checks"]) == ["square", "hopskipjump"]
    assert scores.theft is not None
    assert label_info["knowledge"] == "label"
    assert "evasion_black_box/square" in labels.config["skipped"], "Square needs scores"
    assert "answers labels only" in labels.config["skipped"]["evasion_black_box/square"]
    assert labels.blackbox is not None
    assert list(labels.blackbox["checks"]) == ["hopskipjump"]
    assert labels.theft is not None
    assert labels.clean_accuracy == scores.clean_accuracy, "labels and scores agree on the clean predictions"
    x, y = torch.as_tensor(scores.arrays["x"]), torch.as_tensor(scores.arrays["y"])
    assert scores.clean_accuracy == pytest.approx(float((digits_model.oracle.labels(x) == y).float().mean()))


def test_label_scores_never_reach_a_score_view(digits_model: Trained, onnx_file: Path) -> None:
    """The one-hot scores a label-only model gives the audit's clean pass are not offered to attacks."""
    x = digits_model.x
    wrapped = LabelScores(OnnxOracle(onnx_file, labels_only=True))
    assert wrapped.knowledge == Knowledge.LABEL
    assert torch.equal(wrapped.log_probs(x).argmax(1), digits_model.oracle.labels(x))
    assert torch.allclose(wrapped.log_probs(x).exp().sum(1), torch.ones(len(x)))
    with pytest.raises(AccessError, match="score access"):
        view_for(wrapped, Knowledge.SCORE, len(x))


def test_resolve_recipe_says_what_is_retrained_and_why() -> None:
    own = {"arch": "small_cnn", "config": {"in_channels": 1, "input_size": 8, "num_classes": 10}}
    arch, source = resolve_recipe("auto", own, trained_here=False, kind="zoo")
    assert arch == "small_cnn"
    assert "own architecture" in source
    wide = {"arch": "mlp", "config": {"in_channels": 1, "input_size": 8, "num_classes": 10, "hidden": [64]}}
    arch, reason = resolve_recipe("auto", wide, trained_here=False, kind="zoo")
    assert arch is None
    assert "hidden" in reason
    assert resolve_recipe("auto", None, trained_here=False, kind="torchscript")[0] is None
    assert resolve_recipe("auto", None, trained_here=True, kind="trained_here")[0] == "small_cnn"
    assert resolve_recipe("default", None, trained_here=False, kind="onnx")[0] == "small_cnn"
    assert resolve_recipe("lenet5", None, trained_here=False, kind="onnx")[0] == "lenet5"
    with pytest.raises(UnknownNameError, match=r"^recipe: .*Allowed: auto, .*default"):
        resolve_recipe("resnet-9000", None, trained_here=False, kind="onnx")


def test_unavailable_sections_of_each_kind(
    onnx_file: Path, script_file: Path, splits: tuple[Dataset, Dataset]
) -> None:
    train, test = splits
    assert unavailable_sections(None, test, train_ds=train) == {}
    onnx, onnx_info = load_audit_model(str(onnx_file), test)
    assert set(unavailable_sections(onnx, test, train_ds=train, model_info=onnx_info)) == {
        "evasion_white_box",
        "membership",
        "poisoning",
        "encryption",
    }
    assert set(unavailable_sections(onnx, test, train_ds=train, model_info=onnx_info, recipe="default")) == {
        "evasion_white_box",
        "encryption",
    }
    script, script_info = load_audit_model(str(script_file), test)
    assert set(unavailable_sections(script, test, model_info=script_info)) == {"membership", "poisoning"}


def test_load_audit_target_for_the_cli(
    onnx_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = load_audit_target(str(onnx_file), "digits", epochs=1, quiet=False)
    assert target["kind"] == "onnx"
    assert target["data"] == "digits"
    assert len(target["train"]) + len(target["test"]) == 1797
    assert "evasion_white_box" in target["skipped"]
    assert "Will not run" in capsys.readouterr().err
    model = zoo.build("small_cnn", in_channels=1, input_size=8, num_classes=10)
    zoo.save_model(
        model,
        tmp_path / "zoo" / "model",
        arch="small_cnn",
        config={"in_channels": 1, "input_size": 8, "num_classes": 10},
        extra={"dataset": "digits", "input_shape": [1, 8, 8]},
    )
    own = load_audit_target(str(tmp_path / "zoo"), None, epochs=1, quiet=True)
    assert own["kind"] == "zoo"
    assert own["data"] == "digits"
    assert own["skipped"] == {}
    assert own["info"]["arch"] == "small_cnn"
    none = load_audit_target(None, None, epochs=1, quiet=True)
    assert none["model"] is None
    assert none["kind"] == "trained_here"
    with pytest.raises(ValidationError, match=r"^--oracle-config"):
        load_audit_target(str(onnx_file), None, epochs=1, quiet=True, oracle_config="api.json")


def test_image_folder_of_the_wrong_size_is_refused_then_resized(onnx_file: Path, tmp_path: Path) -> None:
    """An image folder of 16x16 digits does not fit the 8x8 ONNX model; FOLDER@8x8 resizes it to fit."""
    digits = load_digits()
    for label in range(10):
        (tmp_path / str(label)).mkdir()
    for i in range(60):
        img = (digits.x[i, 0] * 255).round().to(torch.uint8).repeat_interleave(2, 0).repeat_interleave(2, 1)
        Image.fromarray(img.numpy()).save(tmp_path / str(int(digits.y[i])) / f"{i}.png")
    with pytest.raises(ValidationError, match=r"^data: .*ONNX model's input shape"):
        load_audit_target(str(onnx_file), str(tmp_path), epochs=1, quiet=True)
    target = load_audit_target(str(onnx_file), f"{tmp_path}@8x8", epochs=1, quiet=True)
    assert target["test"].input_shape == (1, 8, 8)
    assert target["model"].labels(target["test"].x).shape == (len(target["test"]),)


def test_zoo_model_retrains_its_own_architecture(splits: tuple[Dataset, Dataset], tmp_path: Path) -> None:
    """recipe='auto' on a zoo mlp: membership's shadow models are mlps too, and the report says so."""
    config = {"in_channels": 1, "input_size": 8, "num_classes": 10}
    zoo.save_model(zoo.build("mlp", **config), tmp_path / "model", arch="mlp", config=config)
    oracle, info = load_audit_model(str(tmp_path), splits[1])
    kwargs = {**TINY, "blackbox": None, "theft": None, "poisoning_fractions": None, "attacks": "fgsm"}
    report = run_audit(oracle, splits[0], splits[1], model_info=info, **kwargs)
    assert report.membership is not None
    assert report.membership["config"]["recipe"]["arch"] == "mlp"
    assert report.config["recipe"]["arch"] == "mlp"
    assert "own architecture" in report.config["recipe"]["source"]
    assert "membership" not in report.config["skipped"]
