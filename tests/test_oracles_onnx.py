"""OnnxOracle: a torch model exported to ONNX answers like the model, within float tolerance."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from ramparts.errors import AccessError, ValidationError
from ramparts.oracles import Knowledge, OnnxOracle, as_oracle, load_oracle
from ramparts.oracles.onnx import OutputKind
from ramparts.targets import view_for
from tests.conftest import Trained


def _export(
    model: nn.Module, path: Path, *, dynamic: bool = True, shape: tuple[int, ...] = (1, 8, 8)
) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated
        torch.onnx.export(
            model,
            (torch.zeros(1, *shape),),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["out"],
            dynamic_axes={"image": {0: "batch"}, "out": {0: "batch"}} if dynamic else None,
        )
    return path


@pytest.fixture(scope="module")
def logits_file(digits_model: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(digits_model.model, tmp_path_factory.mktemp("onnx") / "digits.onnx")


@pytest.fixture(scope="module")
def proba_file(digits_model: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = nn.Sequential(digits_model.model, nn.Softmax(dim=1)).eval()
    return _export(model, tmp_path_factory.mktemp("onnx") / "digits-proba.onnx")


def test_log_probs_and_labels_equal_torch(digits_model: Trained, logits_file: Path) -> None:
    oracle = OnnxOracle(logits_file, batch_size=16)  # 64 rows: four batches
    x = digits_model.x
    expected = digits_model.oracle.log_probs(x)
    assert oracle.input_shape == (1, 8, 8)
    assert oracle.num_classes == 10
    assert oracle.knowledge == Knowledge.SCORE
    assert oracle.input_name == "image"
    torch.testing.assert_close(oracle.log_probs(x), expected, atol=1e-5, rtol=0)
    assert torch.equal(oracle.labels(x), expected.argmax(1))
    assert oracle.log_probs(x[:0]).shape == (0, 10)


def test_probabilities_output_explicit_and_auto(
    digits_model: Trained, logits_file: Path, proba_file: Path
) -> None:
    x = digits_model.x
    expected = digits_model.oracle.log_probs(x)
    outputs: OutputKind
    for outputs in ("probabilities", "auto"):
        oracle = OnnxOracle(proba_file, outputs=outputs)
        torch.testing.assert_close(oracle.log_probs(x).exp(), expected.exp(), atol=1e-6, rtol=0)
        # Log-probabilities of the likely classes match too (the tail is float32 softmax underflow).
        likely = expected > -15
        torch.testing.assert_close(oracle.log_probs(x)[likely], expected[likely], atol=1e-4, rtol=0)
    assert "probabilities" in repr(OnnxOracle(proba_file, outputs="auto"))
    assert "logits" in repr(OnnxOracle(logits_file, outputs="auto"))


def test_labels_only_hides_scores(digits_model: Trained, logits_file: Path) -> None:
    oracle = OnnxOracle(logits_file, labels_only=True)
    assert oracle.knowledge == Knowledge.LABEL
    with pytest.raises(AccessError, match="score access"):
        view_for(oracle, Knowledge.SCORE, len(digits_model.x))
    box = view_for(oracle, Knowledge.LABEL, len(digits_model.x))
    assert not hasattr(box, "log_probs")
    assert torch.equal(box.labels(digits_model.x), digits_model.oracle.labels(digits_model.x))
    with pytest.raises(AccessError, match="labels only"):
        oracle.log_probs(digits_model.x)


def test_fixed_batch_model_is_fed_in_its_batch_size(digits_model: Trained, tmp_path: Path) -> None:
    path = _export(digits_model.model, tmp_path / "fixed.onnx", dynamic=False)
    oracle = OnnxOracle(path)
    assert oracle.batch_size == 1
    x = digits_model.x[:5]
    torch.testing.assert_close(oracle.log_probs(x), digits_model.oracle.log_probs(x), atol=1e-5, rtol=0)


def test_missing_and_non_onnx_files(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"path: expected an existing \.onnx file.*Fix: check the path"):
        OnnxOracle(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_text("this is not a model")
    with pytest.raises(ValidationError, match=r"path: expected an ONNX model file.*torch\.onnx\.export"):
        OnnxOracle(junk)


def test_shape_mismatches(digits_model: Trained, logits_file: Path) -> None:
    with pytest.raises(ValidationError, match=r"input_shape: expected the model's input shape \(1, 8, 8\)"):
        OnnxOracle(logits_file, input_shape=(1, 28, 28))
    with pytest.raises(ValidationError, match="num_classes: expected the model's 10 outputs"):
        OnnxOracle(logits_file, num_classes=3)
    oracle = OnnxOracle(logits_file)
    with pytest.raises(ValidationError, match=r"x: expected inputs of shape \(N, 1, 8, 8\)"):
        oracle.labels(torch.zeros(2, 1, 9, 9))


def test_bad_options(logits_file: Path) -> None:
    with pytest.raises(ValidationError, match=r"outputs: unknown name 'softmax'\. Allowed: auto, logits"):
        OnnxOracle(logits_file, outputs="softmax")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="batch_size: expected an integer >= 1"):
        OnnxOracle(logits_file, batch_size=0)
    with pytest.raises(ValidationError, match="providers: unknown name 'NoSuchExecutionProvider'"):
        OnnxOracle(logits_file, providers=["NoSuchExecutionProvider"])
    with pytest.raises(ValidationError, match="device: expected 'cpu' or 'cuda'"):
        OnnxOracle(logits_file, device="meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is absent")
def test_cuda_without_gpu_runtime_is_a_clear_error(logits_file: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    with pytest.raises(
        ValidationError, match=r"device: expected a device onnxruntime can use.*onnxruntime-gpu"
    ):
        OnnxOracle(logits_file, device="cuda")


def test_as_oracle_and_load_oracle_take_onnx_paths(digits_model: Trained, logits_file: Path) -> None:
    x = digits_model.x[:8]
    for oracle in (as_oracle(str(logits_file)), as_oracle(logits_file), load_oracle(str(logits_file))):
        assert isinstance(oracle, OnnxOracle)
        assert torch.equal(oracle.labels(x), digits_model.oracle.labels(x))


def test_load_oracle_reads_a_trained_model_with_its_metadata(digits_model: Trained, tmp_path: Path) -> None:
    from ramparts.oracles import TorchOracle
    from ramparts.zoo import build, save_model

    config = {"in_channels": 1, "input_size": 8, "num_classes": 10}
    torch.manual_seed(0)
    model = build("mlp", **config)
    extra = {"input_shape": [1, 8, 8], "mean": [0.5], "std": [0.25]}
    save_model(model, tmp_path / "m", arch="mlp", config=config, extra=extra)
    oracle = load_oracle(str(tmp_path / "m.json"))
    assert isinstance(oracle, TorchOracle)
    assert (oracle.input_shape, oracle.num_classes) == ((1, 8, 8), 10)
    x = digits_model.x[:4]
    with torch.no_grad():
        expected = model((x - 0.5) / 0.25).log_softmax(1)
    torch.testing.assert_close(oracle.log_probs(x), expected)
    assert isinstance(load_oracle(str(tmp_path / "m")), TorchOracle)  # the prefix works too
    with pytest.raises(
        ValidationError, match=r"input_shape: expected the shape .* was trained on, \(1, 8, 8\)"
    ):
        load_oracle(str(tmp_path / "m.json"), input_shape=(1, 28, 28))
    with pytest.raises(ValidationError, match=r"oracle: expected a model saved by `ramparts train`.*http"):
        load_oracle(str(tmp_path / "nothing-here"))
    with pytest.raises(ValidationError, match="config_path: expected a config only with an http"):
        load_oracle(str(tmp_path / "m.json"), config_path=tmp_path / "api.json")
