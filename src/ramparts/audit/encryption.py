"""The audit's encryption section: can the audited model be served on CKKS-encrypted inputs, and at what cost.

Dataset protection (issue 8): the client encrypts, the server computes on ciphertexts (CKKS: Cheon, Kim, Kim &
Song, ASIACRYPT 2017, through TenSEAL), only the client decrypts. The section first tries to compile the audited
model as it is (`compile_model`: linear layers, one first convolution, average pooling, folded batch norm and
polynomial activations). A model with ReLU or max pooling is not encryptable as it is; where the audit knows the
training data it then trains an encryptable twin (CryptoNets' x^2 activations, Gilad-Bachrach et al., ICML 2016)
with the audit's recipe beside its ReLU version, so the accuracy cost is measured, not guessed. Whatever model can
be encrypted is then run encrypted on the audited images in both packings: a batch of them in CryptoNets'
packing (one ciphertext per feature, samples in the slots) and a few single queries (one ciphertext per input):
agreement with the plaintext model, seconds, bytes per image, and the evaluation keys the server needs. One step
of the run: recorded in metrics.json under `encryption`, reused on resume when the configuration matches.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from torch import nn

from ramparts.audit.model import TRAIN_BATCH, TRAIN_LR
from ramparts.data import Dataset
from ramparts.errors import check_int
from ramparts.protection.he_measure import measure_packing
from ramparts.protection.he_model import HEProgram, UnsupportedLayerError, compile_model
from ramparts.protection.poly import train_encryptable
from ramparts.training import TrainConfig

if TYPE_CHECKING:
    from ramparts.audit.runner import AuditRun

DEFAULT_QUERIES = 3
CITATIONS = {
    "CKKS": 'Cheon, Kim, Kim & Song, "Homomorphic Encryption for Arithmetic of Approximate Numbers", ASIACRYPT 2017',
    "CryptoNets": 'Gilad-Bachrach et al., "CryptoNets: Applying Neural Networks to Encrypted Data with High '
    'Throughput and Accuracy", ICML 2016',
}

# Progress steps of the section: compiling, the encryptable twin (when needed), encrypted inference.
STEPS = 3


def twin_recipe(input_shape: tuple[int, ...], epochs: int) -> dict[str, Any]:
    """The encryptable twin trained when the audited model cannot be encrypted as it is: the one-convolution
    CNN of TenSEAL's MNIST tutorial for one-channel images of 28 pixels or more, else an MLP with one hidden
    layer (32 units up to 16 pixels, as the digits' 64-32-10; 64 above), x^2 activations either way."""
    c, h = input_shape[0], input_shape[-1]
    arch, arch_config = (
        ("encryptable_cnn", {}) if c == 1 and h >= 28 else ("mlp", {"hidden": [32 if h <= 16 else 64]})
    )
    return {
        "arch": arch,
        "arch_config": arch_config,
        "activation": "square",
        "epochs": epochs,
        "lr": TRAIN_LR,
        "batch_size": TRAIN_BATCH,
    }


def encryption_config(
    input_shape: tuple[int, ...], *, twin: bool, epochs: int, queries: int = DEFAULT_QUERIES
) -> dict[str, Any]:
    """config.json's `encryption`: what the section's measurements depend on (`twin`: training data known)."""
    check_int("encryption_queries", queries, 1)
    return {"queries": queries, "twin": twin_recipe(input_shape, epochs) if twin else None}


def encryption_section(
    run: AuditRun, module: nn.Module, train_ds: Dataset | None, test_ds: Dataset, config: dict[str, Any]
) -> dict[str, Any]:
    """Run (or reuse) the encryption measurements; the section of metrics.json and report.json."""
    return run.one_step("encryption", config, lambda: _measure(run, module, train_ds, test_ds, config))


def _measure(
    run: AuditRun, module: nn.Module, train_ds: Dataset | None, test_ds: Dataset, config: dict[str, Any]
) -> dict[str, Any]:
    shape = tuple(test_ds.input_shape)
    run.status("compiling the model")
    audited = copy.deepcopy(module).cpu().eval()
    try:
        program: HEProgram | None = compile_model(audited, shape)
        as_is: dict[str, Any] = {"encryptable": True, "depth": program.depth if program else None}
        candidate, source = audited, "the audited model"
    except UnsupportedLayerError as exc:
        program, as_is, candidate, source = None, {"encryptable": False, "reason": str(exc)}, None, None
    run.tick()
    twin = None
    recipe = config["twin"]
    if program is None and recipe is not None and train_ds is not None:
        run.status(f"training an encryptable {recipe['arch']} (x^2) and its ReLU twin")
        report = train_encryptable(
            recipe["arch"],
            train_ds,
            config=TrainConfig(
                epochs=recipe["epochs"], lr=recipe["lr"], batch_size=recipe["batch_size"], seed=run.seed
            ),
            test=test_ds,
            activation=recipe["activation"],
            arch_config=recipe["arch_config"],
        )
        twin = {
            **{k: report.summary()[k] for k in ("accuracy", "relu_accuracy", "accuracy_cost", "seconds")},
            "arch": recipe["arch"],
            "cost_vs_audited": run.clean_accuracy - report.accuracy,
        }
        candidate, source = report.model.cpu().eval(), f"an encryptable {recipe['arch']} (x^2) trained here"
        program = compile_model(candidate, shape)
    run.tick()
    if program is None or candidate is None:
        return {"result": {"encryptable": False}, "as_is": as_is, "twin": None, "measured": None}
    run.status("encrypted inference, batch and per query")
    x = run.x.detach().cpu()
    y = run.y.detach().cpu()
    measured = {
        "model": source,
        "depth": program.depth,
        "batch": measure_packing(program, x, y, "batch"),
        "query": measure_packing(program, x[: config["queries"]], y[: config["queries"]], "query"),
    }
    run.tick()
    return {
        "result": {"encryptable": True, "as_is": as_is["encryptable"]},
        "as_is": as_is,
        "twin": twin,
        "measured": measured,
    }
