"""Encrypted inference: client encryption, server evaluation, client decryption (SEAL kernels).

Keys and contexts are TenSEAL's (Benaissa et al., ICLR 2021 workshop): :func:`make_context` makes them,
:mod:`ramparts.protection.he_files` stores them. Ciphertexts and arithmetic are Microsoft SEAL's CKKS
(Cheon, Kim, Kim & Song, ASIACRYPT 2017) through :mod:`ramparts.protection.he_seal`, which uses the same
keys. Every linear part is a dense float64 matrix (a conv is its sparse dense matrix); every stage costs
one rescale for the linear part and one for its activation. Two packings:

- ``query``: one ciphertext per input, the input replicated over the slots with the first layer's period;
  dense layers are baby-step giant-step diagonal products (Halevi & Shoup, CRYPTO 2014) whose output is
  replicated as the next layer needs, so biases are plain additions. Needs Galois keys.
- ``batch`` (CryptoNets, Gilad-Bachrach et al., ICML 2016): one ciphertext per input number holding up to
  ``slots`` inputs; layers are lazy weighted sums (one rescale per output). No Galois keys are needed.

A ``product`` activation ``y * (a*y + b)`` computes its second factor as a second linear map with the
folded weights ``a*W`` and bias ``a*bias + b`` (same level; the query packing shares the rotations).
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ramparts.errors import RampartsTypeError, ValidationError, check_int, invalid
from ramparts.protection.he_model import PACKINGS, ConvLinear, HEProgram, check_packing
from ramparts.protection.he_params import HEParameters, plan_parameters
from ramparts.protection.he_seal import DiagonalPlan, SealEngine

import tenseal as ts  # isort: skip

__all__ = [
    "PACKINGS",
    "EncryptedBatch",
    "decrypt_outputs",
    "encrypt_inputs",
    "evaluate",
    "plan_for",
    "required_keys",
]

logger = logging.getLogger(__name__)

#: Smallest scale the planner gives the query packing: the MNIST CNN's logits were 6e-3 off at 2**28
#: (N = 8192, 0.41 s a query) against 1e-6 at 2**40 (N = 16384, 0.84 s); the batch packing was 1e-3 off at 2**28.
QUERY_MIN_SCALE_BITS = 30

_QUERY_CACHE: weakref.WeakKeyDictionary[
    HEProgram, tuple[SealEngine, list[list[DiagonalPlan]], list[dict[Any, Any]]]
] = weakref.WeakKeyDictionary()


@dataclass
class EncryptedBatch:
    """Ciphertexts (SEAL) and what is needed to read them.

    ``payload``: for ``query`` one ciphertext per input; for ``batch`` one list per chunk of at most
    ``slots`` inputs, holding one ciphertext per feature (inputs) or per output (results);
    ``meta["chunks"]`` holds the chunk sizes. ``meta`` is JSON-ready: the input encoding for inputs,
    ``{"outputs": k, ...}`` for results. ``context`` is the TenSEAL context whose keys they use.
    """

    packing: str
    n: int
    payload: list[Any]
    meta: dict[str, Any] = field(default_factory=dict)
    context: Any = field(default=None, repr=False)

    def _flat(self) -> list[Any]:
        return (
            [ct for chunk in self.payload for ct in chunk] if self.packing == "batch" else list(self.payload)
        )

    def serialize_items(self) -> list[bytes]:
        """One byte string per ciphertext (SEAL's compressed format), chunk by chunk, in order."""
        items = self._flat()
        if items and isinstance(items[0], ts.CKKSVector):
            return [item.serialize() for item in items]
        if self.context is None:
            raise invalid(
                "batch", "a batch without its context", "a batch from encrypt_inputs() or evaluate()"
            )
        return SealEngine.for_context(self.context).to_bytes(items)

    @classmethod
    def deserialize_items(
        cls, context: ts.Context, items: list[bytes], *, packing: str, n: int, meta: dict[str, Any]
    ) -> EncryptedBatch:
        """Rebuild a batch from :meth:`serialize_items`' bytes, linked to ``context``."""
        _check_context(context)
        check_packing(packing)
        check_int("n", n, 1)
        width = 1
        if packing == "batch":
            chunks = meta.get("chunks", [])
            if not isinstance(chunks, list) or sum(chunks) != n:
                raise invalid(
                    "meta", meta, f"'chunks' summing to n={n}", "pass the meta that came with the items"
                )
            width = (
                int(meta["outputs"])
                if "outputs" in meta
                else int(meta.get("encoding", {}).get("features", 0))
            )
        expected = n if packing == "query" else len(meta["chunks"]) * width
        if len(items) != expected:
            raise invalid("items", f"{len(items)} items", f"{expected} for packing={packing!r} and n={n}")
        engine = SealEngine.for_context(context)
        cts = []
        for i, item in enumerate(items):
            try:
                cts.append(engine.from_bytes(item))
            except Exception as exc:  # SEAL raises ValueError/RuntimeError on corrupt or foreign bytes
                raise invalid(
                    f"items[{i}]",
                    f"{len(item)} bytes",
                    f"a serialized SEAL ciphertext for this context ({exc})",
                    "the file is corrupt or was not written for these parameters",
                ) from exc
        payload: list[Any] = cts
        if packing == "batch":
            payload = [cts[i : i + width] for i in range(0, len(cts), width)]
        return cls(packing=packing, n=n, payload=payload, meta=dict(meta), context=context)


def required_keys(packing: str) -> tuple[str, ...]:
    """Evaluation keys the server needs: relinearisation always, Galois (rotations) for ``query``."""
    return ("relin", "galois") if check_packing(packing) == "query" else ("relin",)


def plan_for(
    program: HEProgram,
    packing: str,
    *,
    n: int = 1,
    scale_bits: int | None = None,
    precision_bits: int | None = None,
) -> HEParameters:
    """Secure parameters for ``program`` in ``packing``: its depth and the slots its vectors need.

    ``query`` needs slots for the largest layer period (``HEProgram.periods``) and a scale of at least
    ``2**QUERY_MIN_SCALE_BITS`` (its rotations add key-switching noise); ``batch`` puts up to ``slots``
    inputs per ciphertext, so ``n`` only sets how many chunks are used, never the ring size.
    ``scale_bits`` / ``precision_bits`` go to :func:`plan_parameters`.
    """
    check_int("n", n, 1)
    depth = program.depth_for(packing)
    if packing == "batch":
        return plan_parameters(depth, scale_bits=scale_bits, precision_bits=precision_bits)
    return plan_parameters(
        depth,
        min_slots=max(program.periods()),
        scale_bits=scale_bits,
        precision_bits=precision_bits,
        min_scale_bits=QUERY_MIN_SCALE_BITS,
    )


def _check_context(context: Any, param: str = "context") -> None:
    if not isinstance(context, ts.Context):
        raise invalid(param, type(context).__name__, "a tenseal.Context", cls=RampartsTypeError)


def encrypt_inputs(
    context: ts.Context, x: torch.Tensor, *, packing: str, encoding: dict[str, Any]
) -> EncryptedBatch:
    """Encrypt ``x`` [n, *input_shape] for ``encoding`` (from ``HEProgram.input_encoding(packing)``)."""
    _check_context(context)
    check_packing(packing)
    if not isinstance(encoding, dict) or encoding.get("packing") != packing or "features" not in encoding:
        raise invalid(
            "encoding",
            encoding,
            f"the program's input_encoding({packing!r})",
            "pass program.input_encoding(packing)",
        )
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or len(x) == 0:
        raise invalid("x", getattr(x, "shape", x), "a non-empty tensor [n, *input_shape]")
    flat = x.detach().to("cpu", torch.float64).reshape(len(x), -1).numpy()
    if flat.shape[1] != encoding["features"]:
        raise invalid(
            "x", tuple(x.shape), f"{encoding['features']} features per input", "pass the model's inputs"
        )
    engine = SealEngine.for_context(context)
    if packing == "batch":
        chunks = [flat[i : i + engine.slots] for i in range(0, len(flat), engine.slots)]
        payload: list[Any] = [[engine.encrypt(column) for column in chunk.T] for chunk in chunks]
        meta = {"encoding": encoding, "chunks": [len(c) for c in chunks]}
        return EncryptedBatch(packing=packing, n=len(flat), payload=payload, meta=meta, context=context)
    period = int(encoding["period"])
    if engine.slots % period or period < flat.shape[1]:
        raise invalid(
            "encoding",
            encoding,
            f"a period >= {flat.shape[1]} dividing the {engine.slots} slots",
            "create the context with plan_for(program, 'query')",
        )
    padded = np.zeros((len(flat), period))
    padded[:, : flat.shape[1]] = flat
    payload = [engine.encrypt(np.tile(row, engine.slots // period)) for row in padded]
    return EncryptedBatch(
        packing=packing, n=len(flat), payload=payload, meta={"encoding": encoding}, context=context
    )


@dataclass
class _Layer:
    """One stage as dense maps: the main one, plus the ``a*W, a*bias + b`` branch of a product."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    activation: str


def _layers(program: HEProgram) -> list[_Layer]:
    layers = []
    for stage in program.stages:
        lin = stage.linear.dense() if isinstance(stage.linear, ConvLinear) else stage.linear
        weights, biases = [lin.weight], [lin.bias]
        if stage.activation == "product":
            weights.append(stage.a * lin.weight)
            biases.append(stage.a * lin.bias + stage.b)
        layers.append(_Layer(weights, biases, stage.activation))
    return layers


def evaluate(program: HEProgram, batch: EncryptedBatch) -> EncryptedBatch:
    """Server side: run ``program`` on the ciphertexts; needs only the public context's evaluation keys."""
    if not isinstance(program, HEProgram):
        raise invalid(
            "program", type(program).__name__, "an HEProgram (compile_model())", cls=RampartsTypeError
        )
    if not isinstance(batch, EncryptedBatch):
        raise invalid("batch", type(batch).__name__, "an EncryptedBatch", cls=RampartsTypeError)
    expected = program.input_encoding(batch.packing)
    if batch.meta.get("encoding") != expected:
        raise invalid(
            "batch",
            batch.meta.get("encoding"),
            f"inputs encrypted for this program ({expected})",
            "encrypt with encoding=program.input_encoding(packing)",
        )
    engine = SealEngine.for_context(batch.context)
    layers = _layers(program)
    meta: dict[str, Any] = {"outputs": program.num_outputs}
    if batch.packing == "batch":
        out = [_eval_batch(engine, chunk, layers, program.output_shift) for chunk in batch.payload]
        meta["chunks"] = batch.meta.get("chunks")
    else:
        engine.galois_keys  # noqa: B018  (fails early, naming the fix, when the context has none)
        plans, caches = _query_plans(program, engine, layers)
        out = [_eval_query(engine, ct, layers, plans, caches, program.output_shift) for ct in batch.payload]
    return EncryptedBatch(packing=batch.packing, n=batch.n, payload=out, meta=meta, context=batch.context)


def _query_plans(
    program: HEProgram, engine: SealEngine, layers: list[_Layer]
) -> tuple[list[list[DiagonalPlan]], list[dict[Any, Any]]]:
    """The diagonal plans of ``program`` and their encoded plaintexts, kept while program and engine live.

    Encoding the diagonals costs about a third of a query; a server answering single queries reuses
    them (memory: one plaintext per non-zero diagonal, ~0.8 MB each at N = 16384 and 6 primes).
    """
    kept = _QUERY_CACHE.get(program)
    if kept is not None and kept[0] is engine:
        return kept[1], kept[2]
    plans = [
        [DiagonalPlan(w, period, engine.slots) for w in layer.weights]
        for layer, period in zip(layers, program.periods(), strict=True)
    ]
    caches: list[dict[Any, Any]] = [{} for _ in layers]
    _QUERY_CACHE[program] = (engine, plans, caches)
    return plans, caches


def _activate(engine: SealEngine, ys: list[Any], activation: str) -> Any:
    if activation == "square":
        return engine.square(ys[0])
    if activation == "product":
        return engine.multiply(ys[0], ys[1])
    return ys[0]


def _eval_batch(engine: SealEngine, chunk: list[Any], layers: list[_Layer], shift: float) -> list[Any]:
    h = chunk
    for layer in layers:
        ys = [engine.weighted_sums(h, w, b) for w, b in zip(layer.weights, layer.biases, strict=True)]
        h = [_activate(engine, list(pair), layer.activation) for pair in zip(*ys, strict=True)]
    return [engine.add_scalar(ct, shift) for ct in h]


def _eval_query(
    engine: SealEngine,
    ct: Any,
    layers: list[_Layer],
    plans: list[list[DiagonalPlan]],
    caches: list[dict[Any, Any]],
    shift: float,
) -> Any:
    h = ct
    for layer, layer_plans, cache in zip(layers, plans, caches, strict=True):
        ys = engine.matvec(h, layer_plans, cache)
        for y, plan, bias in zip(ys, layer_plans, layer.biases, strict=True):
            padded = np.zeros(plan.m)
            padded[: len(bias)] = bias
            engine.add_vector(y, np.tile(padded, engine.slots // plan.m))
        h = _activate(engine, ys, layer.activation)
    return engine.add_scalar(h, shift)


def decrypt_outputs(context: ts.Context, result: EncryptedBatch) -> torch.Tensor:
    """Client side: the logits [n, num_outputs] (float64); refuses a public context."""
    _check_context(context)
    if not context.is_private():
        raise invalid(
            "context",
            "a public context (no secret key)",
            "the client's private context, the one that encrypted the inputs",
            "decrypt on the client with the context from make_context() / keygen, never the server's copy",
        )
    if not isinstance(result, EncryptedBatch) or "outputs" not in result.meta:
        raise invalid("result", type(result).__name__, "the EncryptedBatch returned by evaluate()")
    k = int(result.meta["outputs"])
    engine = SealEngine.for_context(context)
    rows: list[np.ndarray] = []
    try:
        for item in result.payload:
            if isinstance(item, ts.CKKSVector):  # a bare TenSEAL vector (he_files.load_bare)
                rows.append(np.asarray(item.decrypt(context.secret_key())[:k], dtype=np.float64)[None])
            elif result.packing == "query":
                rows.append(engine.decrypt(item)[:k][None])
            else:
                rows.append(np.stack([engine.decrypt(ct) for ct in item], axis=1))
    except (ValueError, RuntimeError) as exc:  # SEAL refuses ciphertexts of other parameters
        raise ValidationError(
            f"context: cannot decrypt the result with this key ({exc}). Fix: use the context that encrypted it."
        ) from exc
    if result.packing == "batch":
        chunks = result.meta.get("chunks") or []
        if len(chunks) != len(rows):
            raise invalid("result", f"{len(rows)} chunks", f"meta['chunks'] of {len(rows)} sizes")
        rows = [r[:c] for r, c in zip(rows, chunks, strict=True)]
    out = torch.from_numpy(np.concatenate(rows))
    if len(out) != result.n or out.shape[1] != k:
        raise invalid(
            "result",
            f"{tuple(out.shape)} outputs",
            f"n={result.n} x {k}",
            "pass the batch evaluate() returned",
        )
    return out
