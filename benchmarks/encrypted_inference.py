"""Issue 8: inference on CKKS-encrypted inputs, per query and batched (CryptoNets' packing), on two models.

- the digits MLP 64-32-10 with x^2 activations (trained here on 75% of the embedded digits);
- the MNIST CNN of TenSEAL's tutorial size (`encryptable_cnn`: conv 4 x 7x7 stride 3, x^2, dense 256 -> 64, x^2,
  dense 64 -> 10), trained here on the MNIST training split, evaluated encrypted on the whole test split.

For each: plaintext accuracy (ReLU twin beside it), encrypted accuracy and agreement with the plaintext model,
seconds per single query, images per second with full slots (batch packing), bytes per image, key sizes, all
on `--threads` threads. Targets (issue 8, 2 CPU cores): digits per query <= 0.5 s and batched >= 1000 images/s;
MNIST CNN per query <= 2 s, batched >= 100 images/s, encrypted accuracy >= 97%. Reference points and the
Concrete ML peer: `benchmarks/encrypted_inference_references.md`, `benchmarks/concrete_ml_digits.json`.

    .venv/bin/python benchmarks/encrypted_inference.py --json benchmarks/encrypted_inference.json
    .venv/bin/python benchmarks/encrypted_inference.py --quick          # smoke run, a minute
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
from ramparts import data as rdata
from ramparts.protection.he_eval import plan_for
from ramparts.protection.he_measure import measure_packing
from ramparts.protection.he_model import HEProgram, compile_model
from ramparts.protection.poly import train_encryptable
from ramparts.training import TrainConfig

log = logging.getLogger("benchmarks.encrypted_inference")
TARGETS = {
    "digits_mlp": {"query_s": 0.5, "batch_images_per_s": 1000.0},
    "mnist_cnn": {"query_s": 2.0, "batch_images_per_s": 100.0, "encrypted_accuracy": 0.97},
}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch and HE threads")
    p.add_argument("--models", default="digits_mlp,mnist_cnn")
    p.add_argument("--queries", type=int, default=20, help="single encrypted queries timed per model")
    p.add_argument(
        "--mnist-n", type=int, default=10_000, help="MNIST test images evaluated encrypted (batch)"
    )
    p.add_argument("--mnist-epochs", type=int, default=5)
    p.add_argument("--digits-epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 queries, 1,000 MNIST images, 1 epoch")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.quick:
        args.queries, args.mnist_n, args.mnist_epochs, args.digits_epochs = 2, 1000, 1, 10
    return args


def train_model(name: str, args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any], rdata.Dataset]:
    """The polynomial model (and its ReLU twin's accuracy) and the test split it is evaluated on."""
    if name == "digits_mlp":
        train_ds, test = rdata.train_test_split(rdata.load_digits(), test_fraction=0.25, seed=args.seed)
        arch, arch_config, epochs, lr = "mlp", {"hidden": [32]}, args.digits_epochs, 3e-3
    else:
        train_ds, test = rdata.load_shared("mnist", split="train"), rdata.load_shared("mnist", split="test")
        arch, arch_config, epochs, lr = "encryptable_cnn", {}, args.mnist_epochs, 2e-3
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=64, seed=args.seed, device="cpu")
    report = train_encryptable(arch, train_ds, config=config, test=test, arch_config=arch_config)
    return report.model.eval(), {"arch": arch, "arch_config": arch_config, **report.summary()}, test


def run_packing(
    program: HEProgram, x: torch.Tensor, y: torch.Tensor, packing: str, threads: int
) -> dict[str, Any]:
    """:func:`measure_packing`, logged."""
    row = measure_packing(program, x, y, packing, n_threads=threads)
    log.info("%s: %s", packing, {k: v for k, v in row.items() if k not in ("parameters", "keys_bytes")})
    return row


def batch_inputs(test: rdata.Dataset, n: int, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images, repeated to fill whole ciphertexts (``slots`` samples each) when fewer."""
    x, y = test.x[:n], test.y[:n]
    full = -(-max(len(x), 1) // slots) * slots
    reps = -(-full // len(x))
    return x.repeat(reps, 1, 1, 1)[:full], y.repeat(reps)[:full]


def main() -> None:
    args = parse()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    rows: dict[str, Any] = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        t0 = time.perf_counter()
        model, training, test = train_model(name, args)
        program = compile_model(model, tuple(test.input_shape))
        slots = plan_for(program, "batch").slots
        n_batch = args.mnist_n if name == "mnist_cnn" else len(test)
        xb, yb = (
            batch_inputs(test, n_batch, slots)
            if name == "digits_mlp"
            else (test.x[:n_batch], test.y[:n_batch])
        )
        batch = run_packing(program, xb, yb, "batch", args.threads)
        query = run_packing(program, test.x[: args.queries], test.y[: args.queries], "query", args.threads)
        rows[name] = {
            "training": training,
            "depth": program.depth,
            "program": program.describe(),
            "batch": batch,
            "query": query,
            "targets": TARGETS[name],
            "seconds": round(time.perf_counter() - t0, 1),
        }
    info = C.machine_info(torch.device("cpu"), peers=("tenseal",))
    print(f"encrypted inference on {C.machine_label(info)}, {args.threads} threads")
    head = [
        "model",
        "packing",
        "n",
        "N",
        "s / image",
        "images / s",
        "kB in / image",
        "enc. acc",
        "agree",
        "max err",
    ]
    table = [
        [
            name,
            p["packing"],
            str(p["n"]),
            str(p["parameters"]["poly_modulus_degree"]),
            f"{p['seconds_per_image']:.3f}",
            f"{p['images_per_s']:.0f}",
            f"{p['input_bytes_per_image'] / 1024:.1f}",
            f"{p['encrypted_accuracy']:.4f}",
            f"{p['agreement']:.4f}",
            f"{p['max_logit_error']:.1e}",
        ]
        for name, r in rows.items()
        for p in (r["batch"], r["query"])
    ]
    print(C.md_table(head, table))
    if args.json is not None:
        out = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
        out |= {"machine": info, "models": rows}
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
