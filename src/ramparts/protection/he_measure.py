"""Run a compiled program encrypted end to end and measure it: the audit's encryption section and the benchmark
(`benchmarks/encrypted_inference.py`) report the same figures from this one function."""

from __future__ import annotations

import time
from typing import Any

import torch

from ramparts.protection.he_eval import decrypt_outputs, encrypt_inputs, evaluate, plan_for, required_keys
from ramparts.protection.he_files import key_sizes
from ramparts.protection.he_model import HEProgram
from ramparts.protection.he_params import make_context

__all__ = ["measure_packing"]


def measure_packing(
    program: HEProgram, x: torch.Tensor, y: torch.Tensor, packing: str, *, n_threads: int | None = None
) -> dict[str, Any]:
    """Encrypt ``x``, evaluate, decrypt in ``packing``: timings (key generation, encryption, evaluation,
    decryption), throughput end to end (``images_per_s``) and of the evaluation alone (``evaluate_images_per_s``),
    bytes per image, the server's keys by kind, and accuracy and agreement against the plaintext program."""
    params = plan_for(program, packing, n=len(x))
    t0 = time.perf_counter()
    context = make_context(params, galois_keys="galois" in required_keys(packing), n_threads=n_threads)
    keygen = time.perf_counter() - t0
    t0 = time.perf_counter()
    inputs = encrypt_inputs(context, x.double(), packing=packing, encoding=program.input_encoding(packing))
    t1 = time.perf_counter()
    result = evaluate(program, inputs)
    t2 = time.perf_counter()
    logits = decrypt_outputs(context, result)
    t3 = time.perf_counter()
    plain = program.plain_forward(x.double())
    n = len(x)
    return {
        "packing": packing,
        "n": n,
        "parameters": params.to_dict(),
        "keys_bytes": key_sizes(context, kinds=required_keys(packing)),
        "keygen_s": keygen,
        "encrypt_s": t1 - t0,
        "evaluate_s": t2 - t1,
        "decrypt_s": t3 - t2,
        "seconds_per_image": (t3 - t0) / n,
        "evaluate_seconds_per_image": (t2 - t1) / n,
        "images_per_s": n / (t3 - t0),
        "evaluate_images_per_s": n / (t2 - t1),
        "input_bytes_per_image": sum(len(b) for b in inputs.serialize_items()) / n,
        "output_bytes_per_image": sum(len(b) for b in result.serialize_items()) / n,
        "max_logit_error": float((logits - plain).abs().max()),
        "agreement": float((logits.argmax(1) == plain.argmax(1)).float().mean()),
        "encrypted_accuracy": float((logits.argmax(1) == y).float().mean()),
        "plaintext_accuracy": float((plain.argmax(1) == y).float().mean()),
    }
