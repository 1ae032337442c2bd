#!/usr/bin/env python
"""Peer measurement for issue 8: Concrete ML (Zama, TFHE) on the digits MLP 64-32-10 with x^2.

Runs in its OWN virtual environment, outside git (Concrete ML pins torch 2.3.1, scikit-learn 1.5.0 and
onnx, which clash with the project's venv), so it does not import ramparts:

    python3 -m venv .venv-concrete && .venv-concrete/bin/pip install concrete-ml==1.9.0
    export OMP_WAIT_POLICY=PASSIVE
    .venv-concrete/bin/python benchmarks/concrete_ml_digits.py --threads 1 --n-fhe 20
    .venv-concrete/bin/python benchmarks/concrete_ml_digits.py --threads 1 --n-fhe 30 --p-error 0.01 --append
    .venv-concrete/bin/python benchmarks/concrete_ml_digits.py --threads 0 --n-fhe 10 --p-error 0.01 \\
        --n-bits "" --qat-bits 3 --rounding 6 --append

The model and data are those of our encrypted-inference benchmark: scikit-learn's 8x8 digits scaled to
[0, 1] (``load_digits().images / 16``, exactly ``ramparts.data.load_digits``), the 75/25 stratified split
of ``ramparts.data.train_test_split(seed=0)`` (449 test images, same indices), and a float PyTorch MLP
64-32-10 whose hidden activation is the square (CryptoNets: Gilad-Bachrach et al., ICML 2016).

Concrete ML cannot run that float model as is: it quantises it to small integers, either after training
(``compile_torch_model``) or by training the same layers with Brevitas quantisers (QAT,
``compile_brevitas_qat_model``, ``--qat-bits``), and runs it under TFHE (Chillotti, Gama, Georgieva & Izabachene, "TFHE: Fast Fully
Homomorphic Encryption over the Torus", J. Cryptology 2020), where every non-linear step, here the
square and every re-quantisation, is a programmable bootstrap (a table lookup on an encrypted integer).
So the peer runs the *same network, quantised*: the script sweeps the bit widths (weights and
activations) and ``rounding_threshold_bits`` (accumulator rounding before each lookup) in FHE
*simulation* on the whole test split, keeps the cheapest setting whose accuracy is within
``--tolerance`` of the float model, then measures that setting under real FHE execution: key generation,
per-image encrypt / run / decrypt times, accuracy on the first ``--n-fhe`` test images and agreement with
the simulation, and the sizes of the serialised keys and ciphertexts.

The JSON (``--out``) holds the versions, the machine and the thread setting. ``--threads 1`` sets
``OMP_NUM_THREADS`` and its kin before anything is imported (Concrete's runtime parallelises loops
with OpenMP); ``--threads 0`` leaves the library defaults. PyTorch (training, calibration) always runs
on one thread, so that the trained weights do not depend on ``--threads``. The FHE rows record process
CPU time over wall time, which shows how many cores the runtime really used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")
HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; thread settings must be known before numpy/torch are imported."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--threads", type=int, default=1, help="threads for OpenMP/BLAS/torch; 0 = library defaults"
    )
    p.add_argument("--n-fhe", type=int, default=40, help="test images run under real FHE (the first n)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-bits", default="4,5,6", help="comma list of post-training quantisation bit widths")
    p.add_argument(
        "--qat-bits", default="3,4", help="comma list of bit widths for Brevitas QAT variants ('' = none)"
    )
    p.add_argument(
        "--rounding", default="none,6", help="comma list of rounding_threshold_bits ('none' = off)"
    )
    p.add_argument(
        "--p-error",
        type=float,
        default=None,
        help="error probability per lookup; default: Concrete ML's (about 2^-40)",
    )
    p.add_argument("--tolerance", type=float, default=0.01, help="accepted accuracy loss vs float (fraction)")
    p.add_argument("--out", type=Path, default=HERE / "concrete_ml_digits.json")
    p.add_argument("--append", action="store_true", help="add this run to the runs already in --out")
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads > 0:
    for _var in THREAD_VARS:
        os.environ[_var] = str(ARGS.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn import datasets, model_selection  # noqa: E402
from torch import nn  # noqa: E402


class SquareMLP(nn.Module):
    """Linear(64, 32) -> x^2 -> Linear(32, 10): the digits model of our benchmark, on flat inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits; ``pow(2)`` exports to ONNX ``Pow``, a univariate op Concrete turns into one lookup."""
        return self.fc2(self.fc1(x).pow(2))


def load_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits in [0, 1] as [N, 64] float32 and the split of ``ramparts.data.train_test_split``."""
    bunch = datasets.load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0).reshape(len(bunch.images), 64)
    y = np.asarray(bunch.target, dtype=np.int64)
    n_test = round(len(x) * 0.25)
    train_idx, test_idx = model_selection.train_test_split(
        np.arange(len(x)), test_size=n_test, random_state=seed, stratify=y
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def train_float(
    x: np.ndarray, y: np.ndarray, args: argparse.Namespace, *, model: nn.Module | None = None
) -> nn.Module:
    """Adam on cross-entropy, seeded; by default the float reference Concrete ML then quantises."""
    torch.manual_seed(args.seed)
    model = SquareMLP() if model is None else model
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(args.seed)
    for _ in range(args.epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), args.batch_size):
            idx = perm[start : start + args.batch_size]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    return model.eval()


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of [N, 10] scores."""
    return float((np.asarray(logits).argmax(1) == y).mean())


def make_qat_mlp(bits: int) -> nn.Module:
    """The same MLP for quantisation-aware training with Brevitas: inputs, weights and the square's
    output quantised to ``bits`` (Concrete ML's recommended path for neural networks)."""
    import brevitas.nn as qnn

    class QATSquareMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q0 = qnn.QuantIdentity(bit_width=bits, return_quant_tensor=True)
            self.fc1 = qnn.QuantLinear(64, 32, bias=True, weight_bit_width=bits)
            self.q1 = qnn.QuantIdentity(bit_width=bits, return_quant_tensor=True)
            self.fc2 = qnn.QuantLinear(32, 10, bias=True, weight_bit_width=bits)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(self.q1(self.fc1(self.q0(x)).pow(2)))

    return QATSquareMLP()


def _settings(args: argparse.Namespace) -> list[tuple[str, int, int | None]]:
    """(method, bits, rounding) triples to compile: PTQ over ``--n-bits``, QAT over ``--qat-bits``."""
    roundings = [None if r.strip().lower() == "none" else int(r) for r in args.rounding.split(",")]
    out = [("ptq", int(b), r) for b in args.n_bits.split(",") if b for r in roundings]
    out += [("qat", int(b), r) for b in args.qat_bits.split(",") if b for r in roundings]
    return out


def sweep(
    model: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    args: argparse.Namespace,
) -> tuple[list[dict[str, Any]], dict[tuple[str, int, int | None], Any]]:
    """Compile every setting and score it in FHE simulation on the whole test split."""
    from concrete.ml.torch.compile import compile_brevitas_qat_model, compile_torch_model

    rows: list[dict[str, Any]] = []
    modules: dict[tuple[str, int, int | None], Any] = {}
    qat_models: dict[int, tuple[nn.Module, float, float]] = {}
    for method, bits, rounding in _settings(args):
        row: dict[str, Any] = {"method": method, "n_bits": bits, "rounding_threshold_bits": rounding}
        if method == "qat" and bits not in qat_models:
            t0 = time.perf_counter()
            qat = train_float(x_train, y_train, args, model=make_qat_mlp(bits))
            with torch.no_grad():
                qat_acc = accuracy(qat(torch.from_numpy(x_test)).numpy(), y_test)
            qat_models[bits] = (qat, qat_acc, time.perf_counter() - t0)
        t0 = time.perf_counter()
        try:
            if method == "ptq":
                qm = compile_torch_model(
                    model, x_train, n_bits=bits, rounding_threshold_bits=rounding, p_error=args.p_error
                )
            else:
                qat, row["acc_qat_torch"], train_s = qat_models[bits]
                row["qat_train_s"] = round(train_s, 2)
                qm = compile_brevitas_qat_model(
                    qat, x_train, rounding_threshold_bits=rounding, p_error=args.p_error
                )
        except Exception as exc:  # a setting Concrete refuses (e.g. accumulator over 16 bits) is a result
            row["error"] = f"{type(exc).__name__}: {exc}"[:400]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            continue
        row["compile_s"] = round(time.perf_counter() - t0, 2)
        row["max_bit_width"] = int(qm.fhe_circuit.graph.maximum_integer_bit_width())
        row["pbs_count"] = int(qm.fhe_circuit.programmable_bootstrap_count)
        row["complexity"] = float(qm.fhe_circuit.complexity)
        row["size_of_bootstrap_keys"] = int(qm.fhe_circuit.size_of_bootstrap_keys)
        row["acc_quantized_clear"] = accuracy(qm.forward(x_test, fhe="disable"), y_test)
        t0 = time.perf_counter()
        row["acc_fhe_simulation"] = accuracy(qm.forward(x_test, fhe="simulate"), y_test)
        row["simulate_s"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
        modules[(method, bits, rounding)] = qm
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows, modules


def pick(rows: list[dict[str, Any]], float_acc: float, tolerance: float) -> dict[str, Any]:
    """The lowest-complexity compiled setting whose simulated accuracy is within tolerance of float."""
    ok = [r for r in rows if "error" not in r and r["acc_fhe_simulation"] >= float_acc - tolerance]
    pool = ok or [r for r in rows if "error" not in r]
    if not pool:
        raise SystemExit("no (n_bits, rounding) setting compiled; see the sweep rows")
    return (
        min(pool, key=lambda r: r["complexity"]) if ok else max(pool, key=lambda r: r["acc_fhe_simulation"])
    )


def measure_fhe(qm: Any, x_test: np.ndarray, y_test: np.ndarray, n: int) -> dict[str, Any]:
    """Key generation, then encrypt / run / decrypt one image at a time on the first n test images."""
    circuit = qm.fhe_circuit
    t0 = time.perf_counter()
    circuit.keygen(force=True)
    keygen_s = time.perf_counter() - t0
    keys_bytes = len(circuit.keys.serialize())
    eval_keys_bytes = len(circuit.keys.evaluation.serialize())
    enc_s, run_s, dec_s, run_cpu_s, in_bytes, out_bytes = [], [], [], [], [], []
    fhe_logits, sim_logits = [], []
    for i in range(n):
        xi = x_test[i : i + 1]
        q = qm.quantize_input(xi)
        t0 = time.perf_counter()
        enc = circuit.encrypt(q)
        t1, c1 = time.perf_counter(), time.process_time()
        res = circuit.run(enc)
        t2, c2 = time.perf_counter(), time.process_time()
        dec = circuit.decrypt(res)
        t3 = time.perf_counter()
        enc_s.append(t1 - t0)
        run_s.append(t2 - t1)
        run_cpu_s.append(c2 - c1)
        dec_s.append(t3 - t2)
        in_bytes.append(len(enc.serialize()))
        out_bytes.append(len(res.serialize()))
        fhe_logits.append(qm.post_processing(qm.dequantize_output(dec)))
        sim_logits.append(qm.forward(xi, fhe="simulate"))
    fhe = np.concatenate(fhe_logits)
    sim = np.concatenate(sim_logits)
    return {
        "n": n,
        "acc_fhe": accuracy(fhe, y_test[:n]),
        "acc_fhe_simulation_same_images": accuracy(sim, y_test[:n]),
        "agreement_fhe_vs_simulation": float((fhe.argmax(1) == sim.argmax(1)).mean()),
        "keygen_s": round(keygen_s, 3),
        "encrypt_s_mean": round(float(np.mean(enc_s)), 4),
        "run_s_mean": round(float(np.mean(run_s)), 4),
        "run_cpu_s_mean": round(float(np.mean(run_cpu_s)), 4),
        "run_cpu_over_wall": round(float(np.sum(run_cpu_s) / np.sum(run_s)), 2),
        "run_s_median": round(float(np.median(run_s)), 4),
        "run_s_min": round(float(np.min(run_s)), 4),
        "run_s_max": round(float(np.max(run_s)), 4),
        "decrypt_s_mean": round(float(np.mean(dec_s)), 5),
        "latency_s_mean": round(float(np.mean(np.add(np.add(enc_s, run_s), dec_s))), 4),
        "keys_serialized_bytes": keys_bytes,
        "evaluation_keys_serialized_bytes": eval_keys_bytes,
        "size_of_secret_keys": int(circuit.size_of_secret_keys),
        "size_of_bootstrap_keys": int(circuit.size_of_bootstrap_keys),
        "size_of_keyswitch_keys": int(circuit.size_of_keyswitch_keys),
        "input_ciphertext_bytes_per_image": int(np.mean(in_bytes)),
        "output_ciphertext_bytes_per_image": int(np.mean(out_bytes)),
        "p_error": float(circuit.p_error),
        "global_p_error": float(circuit.global_p_error),
    }


def versions() -> dict[str, str]:
    """Package versions and the machine, for the JSON."""
    from importlib.metadata import version

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "concrete-ml": version("concrete-ml"),
        "concrete-python": version("concrete-python"),
        "torch": torch.__version__,
        "scikit-learn": version("scikit-learn"),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": str(os.cpu_count()),
    }


def write_runs(path: Path, result: dict[str, Any], *, append: bool) -> None:
    """Write ``{"benchmark", "runs": [...]}``; with ``append`` keep the runs already in the file."""
    runs: list[dict[str, Any]] = []
    if append and path.is_file():
        old = json.loads(path.read_text())
        runs = list(old["runs"]) if "runs" in old else [old]
    runs.append(result)
    path.write_text(json.dumps({"benchmark": "concrete_ml_digits", "runs": runs}, indent=2) + "\n")


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train, sweep in simulation, measure the chosen setting under FHE, write the JSON."""
    torch.set_num_threads(1)  # training is tiny; one thread keeps it identical whatever --threads says
    started = time.perf_counter()
    x_train, y_train, x_test, y_test = load_split(args.seed)
    t0 = time.perf_counter()
    model = train_float(x_train, y_train, args)
    train_s = time.perf_counter() - t0
    with torch.no_grad():
        float_acc = accuracy(model(torch.from_numpy(x_test)).numpy(), y_test)
    print(f"float accuracy {float_acc:.4f} ({train_s:.1f}s training)", file=sys.stderr, flush=True)
    rows, modules = sweep(model, x_train, y_train, x_test, y_test, args)
    chosen = pick(rows, float_acc, args.tolerance)
    qm = modules[(chosen["method"], chosen["n_bits"], chosen["rounding_threshold_bits"])]
    n_fhe = min(args.n_fhe, len(x_test))
    fhe = measure_fhe(qm, x_test, y_test, n_fhe)
    with torch.no_grad():
        fhe["acc_float_same_images"] = accuracy(
            model(torch.from_numpy(x_test[:n_fhe])).numpy(), y_test[:n_fhe]
        )
    result = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "threads": args.threads if args.threads > 0 else "library default",
        "thread_env": {v: os.environ.get(v) for v in THREAD_VARS},
        "versions": versions(),
        "data": {
            "name": "sklearn digits / 16",
            "n_train": len(x_train),
            "n_test": len(x_test),
            "split_seed": args.seed,
        },
        "model": "Linear(64,32) -> x^2 -> Linear(32,10); ptq: the float model quantised by compile_torch_model; "
        "qat: the same layers trained with Brevitas quantisers, compiled by compile_brevitas_qat_model",
        "training": {
            "optimizer": "adam",
            "lr": args.lr,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "seconds": round(train_s, 2),
        },
        "acc_float": float_acc,
        "tolerance": args.tolerance,
        "p_error_requested": args.p_error,
        "sweep": rows,
        "chosen": chosen,
        "fhe": fhe,
        "total_s": round(time.perf_counter() - started, 1),
    }
    write_runs(args.out, result, append=args.append)
    print(json.dumps({"chosen": chosen, "fhe": fhe}, indent=2))
    return result


if __name__ == "__main__":
    assert ARGS is not None
    main(ARGS)
