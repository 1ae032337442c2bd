"""SEAL-level CKKS kernels: lazy weighted sums (batch packing) and a baby-step giant-step mat-vec (query).

TenSEAL (Benaissa et al., ICLR 2021 workshop) manages keys and contexts, but its tensor operations rescale
after every scalar product (``CKKSTensor.mm``) and spend one rotation per input row (``CKKSVector.mm``).
This module runs the same CKKS scheme (Cheon, Kim, Kim & Song, ASIACRYPT 2017) on the Microsoft SEAL
objects TenSEAL ships (``tenseal.sealapi``), with the keys of a TenSEAL context (so key files, fingerprints
and sizes stay TenSEAL's), and implements two kernels:

- :meth:`SealEngine.weighted_sums`: ``out_j = sum_i W[j, i] * ct_i + b_j`` for the CryptoNets packing
  (Gilad-Bachrach et al., ICML 2016: one ciphertext per feature, samples in the slots). Each weight is a
  scalar plaintext encoded at the scale of the prime the rescale drops, products are accumulated at the
  doubled scale and every output is rescaled once, so its scale stays exactly the input's; zero weights
  are skipped (a conv's dense matrix is sparse).
- :meth:`SealEngine.matvec`: the diagonal method of Halevi & Shoup ("Algorithms in HElib", CRYPTO 2014)
  with baby-step giant-step rotations: the input is replicated with period ``n`` over all slots, the
  ``m`` (padded output size) generalised diagonals of the padded ``m x n`` matrix are multiplied by
  ``g`` baby-step rotations of the input and summed under ``ceil(m / g)`` giant-step rotations by ``g``
  (Horner's scheme: ``~2 sqrt(m)`` single-key rotations instead of ``m``), then the ``n / m`` blocks are summed with ``log2(n / m)``
  rotations. The result is replicated with period ``m``: exactly the next layer's input layout, so biases
  are plain vector additions.

SEAL's Python bindings hold the GIL, so operations run one at a time; the kernels keep Python overhead to
one call per homomorphic operation. ``sealapi`` objects only save to and load from paths: bytes go through
a private temporary directory.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from ramparts.errors import RampartsTypeError, ValidationError, invalid

import tenseal as ts  # isort: skip
import tenseal.sealapi as sealapi  # isort: skip

__all__ = ["SealEngine", "proto_fields"]

logger = logging.getLogger(__name__)

# Field numbers of TenSEAL's context protocol buffer (tenseal/proto/tensealcontext.proto).
_PARAMS, _PUBLIC, _PRIVATE = 1, 2, 3
_PUBLIC_KEY, _RELIN_KEYS, _GALOIS_KEYS = 1, 4, 5
_SECRET_KEY = 1

_ENGINES: weakref.WeakKeyDictionary[Any, SealEngine] = weakref.WeakKeyDictionary()


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(data):
            raise ValidationError("context: truncated protocol buffer. Fix: re-create the context.")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def proto_fields(data: bytes) -> dict[int, Any]:
    """The top-level fields of a protocol-buffer message (wire format): number -> bytes or int.

    Enough to read TenSEAL's context message, whose key fields are Microsoft SEAL's own serialisations.
    """
    fields: dict[int, Any] = {}
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            fields[number], i = _varint(data, i)
        elif wire == 2:
            length, i = _varint(data, i)
            if i + length > len(data):
                raise ValidationError("context: truncated protocol buffer. Fix: re-create the context.")
            fields[number] = bytes(data[i : i + length])
            i += length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            fields[number] = bytes(data[i : i + size])
            i += size
        else:
            raise ValidationError(
                f"context: unsupported protocol-buffer wire type {wire}. Fix: re-create it."
            )
    return fields


class _Scratch:
    """A private temporary directory for sealapi's path-only save/load."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="ramparts-seal-")
        self.path = os.path.join(self._dir.name, "item")

    def load(self, obj: Any, data: bytes, *context: Any) -> Any:
        """``obj.load([context,] path)`` on ``data``; returns ``obj``."""
        with open(self.path, "wb") as stream:
            stream.write(data)
        obj.load(*context, self.path)
        return obj

    def save(self, obj: Any) -> bytes:
        """``obj.save(path)`` as bytes."""
        obj.save(self.path)
        with open(self.path, "rb") as stream:
            return stream.read()


class SealEngine:
    """The SEAL objects of one TenSEAL context: encoder, evaluator, keys (secret only if the context has it).

    Relinearisation and Galois keys are loaded on first use (the Galois keys are tens of MB).
    """

    def __init__(self, context: ts.Context) -> None:
        if not isinstance(context, ts.Context):
            raise invalid("context", type(context).__name__, "a tenseal.Context", cls=RampartsTypeError)
        self._ts = context
        self.private = bool(context.is_private())
        self.has_galois = bool(context.has_galois_keys())
        self.scale = float(context.global_scale)
        self._scratch = _Scratch()
        public = proto_fields(
            context.serialize(
                save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
            )
        )
        parms = self._scratch.load(sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS), public[_PARAMS])
        self.context = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
        self.slots = parms.poly_modulus_degree() // 2
        self.encoder = sealapi.CKKSEncoder(self.context)
        self.evaluator = sealapi.Evaluator(self.context)
        pk = self._scratch.load(sealapi.PublicKey(), proto_fields(public[_PUBLIC])[_PUBLIC_KEY], self.context)
        self.encryptor = sealapi.Encryptor(self.context, pk)
        self.decryptor: Any = None
        if self.private:
            private = proto_fields(
                context.serialize(
                    save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
                )
            )
            secret = proto_fields(private[_PRIVATE])[_SECRET_KEY]
            self.decryptor = sealapi.Decryptor(
                self.context, self._scratch.load(sealapi.SecretKey(), secret, self.context)
            )
        self._relin: Any = None
        self._galois: Any = None

    @classmethod
    def for_context(cls, context: ts.Context) -> SealEngine:
        """The engine of ``context``, cached while the context lives and its keys do not change."""
        if not isinstance(context, ts.Context):
            raise invalid("context", type(context).__name__, "a tenseal.Context", cls=RampartsTypeError)
        engine = _ENGINES.get(context)
        if (
            engine is None
            or engine.private != context.is_private()
            or engine.has_galois != context.has_galois_keys()
            or engine.scale != context.global_scale
        ):
            engine = cls(context)
            _ENGINES[context] = engine
        return engine

    def _keys(self, field: int) -> Any:
        data = proto_fields(
            self._ts.serialize(
                save_public_key=False,
                save_secret_key=False,
                save_galois_keys=field == _GALOIS_KEYS,
                save_relin_keys=field == _RELIN_KEYS,
            )
        )
        blob = proto_fields(data[_PUBLIC]).get(field)
        if not blob:
            return None
        kind = sealapi.RelinKeys() if field == _RELIN_KEYS else sealapi.GaloisKeys()
        return self._scratch.load(kind, blob, self.context)

    @property
    def relin_keys(self) -> Any:
        """SEAL relinearisation keys (loaded once)."""
        if self._relin is None:
            self._relin = self._keys(_RELIN_KEYS)
            if self._relin is None:
                raise ValidationError(
                    "context: it holds no relinearisation keys. Fix: use the context from make_context()."
                )
        return self._relin

    @property
    def galois_keys(self) -> Any:
        """SEAL Galois (rotation) keys (loaded once); an error naming the fix when the context has none."""
        if self._galois is None:
            self._galois = self._keys(_GALOIS_KEYS) if self.has_galois else None
            if self._galois is None:
                raise invalid(
                    "context",
                    "a context without Galois keys",
                    "Galois keys for packing='query' (required_keys('query'))",
                    "create the context with make_context(..., galois_keys=True), or use packing='batch'",
                )
        return self._galois

    # ----- encoding, encryption, bytes -----

    def encrypt(self, values: np.ndarray) -> Any:
        """A fresh ciphertext of ``values`` (at most ``slots`` reals) at the context's scale, top level."""
        plain = sealapi.Plaintext()
        self.encoder.encode(np.asarray(values, dtype=np.float64).tolist(), self.scale, plain)
        out = sealapi.Ciphertext()
        self.encryptor.encrypt(plain, out)
        return out

    def decrypt(self, ct: Any) -> np.ndarray:
        """All slots of ``ct`` (float64); needs the secret key."""
        if self.decryptor is None:
            raise invalid(
                "context",
                "a public context (no secret key)",
                "the client's private context",
                "decrypt on the client with the context from make_context()",
            )
        plain = sealapi.Plaintext()
        self.decryptor.decrypt(ct, plain)
        return np.asarray(self.encoder.decode_double(plain), dtype=np.float64)

    def to_bytes(self, cts: Sequence[Any]) -> list[bytes]:
        """SEAL's (compressed) serialisation of each ciphertext."""
        return [self._scratch.save(ct) for ct in cts]

    def from_bytes(self, data: bytes) -> Any:
        """A ciphertext from :meth:`to_bytes`; SEAL checks it is valid for this context."""
        return self._scratch.load(sealapi.Ciphertext(), data, self.context)

    # ----- helpers -----

    def _top_prime(self, ct: Any) -> float:
        """The prime a rescale of ``ct`` drops (the last of its level's modulus)."""
        moduli = self.context.get_context_data(ct.parms_id()).parms().coeff_modulus()
        return float(moduli[-1].value())

    def _scalar(self, value: float, parms_id: Any, scale: float) -> Any:
        plain = sealapi.Plaintext()
        self.encoder.encode(float(value), parms_id, scale, plain)
        return plain

    def _vector(self, values: np.ndarray, parms_id: Any, scale: float) -> Any:
        plain = sealapi.Plaintext()
        self.encoder.encode(values.tolist(), parms_id, scale, plain)
        return plain

    def _zero(self, parms_id: Any, scale: float) -> Any:
        out = sealapi.Ciphertext()
        self.encryptor.encrypt_zero(parms_id, out)
        out.scale = scale
        return out

    def add_scalar(self, ct: Any, value: float) -> Any:
        """``ct + value`` in every slot (in place; returns ``ct``)."""
        if value:
            self.evaluator.add_plain_inplace(ct, self._scalar(value, ct.parms_id(), ct.scale))
        return ct

    def add_vector(self, ct: Any, values: np.ndarray) -> Any:
        """``ct + values`` slot-wise (``values`` of ``slots`` numbers; in place; returns ``ct``)."""
        if np.any(values):
            self.evaluator.add_plain_inplace(ct, self._vector(values, ct.parms_id(), ct.scale))
        return ct

    def square(self, ct: Any) -> Any:
        """``ct^2``: square, relinearise, rescale (one level)."""
        out = sealapi.Ciphertext()
        self.evaluator.square(ct, out)
        self.evaluator.relinearize_inplace(out, self.relin_keys)
        self.evaluator.rescale_to_next_inplace(out)
        return out

    def multiply(self, a: Any, b: Any) -> Any:
        """``a * b`` (same level and scale): multiply, relinearise, rescale (one level)."""
        out = sealapi.Ciphertext()
        self.evaluator.multiply(a, b, out)
        self.evaluator.relinearize_inplace(out, self.relin_keys)
        self.evaluator.rescale_to_next_inplace(out)
        return out

    def rotate(self, ct: Any, steps: int) -> Any:
        """``ct`` rotated left by ``steps`` slots (SEAL composes power-of-two keys when ``steps`` has none)."""
        out = sealapi.Ciphertext()
        self.evaluator.rotate_vector(ct, int(steps), self.galois_keys, out)
        return out

    # ----- kernels -----

    def weighted_sums(self, inputs: Sequence[Any], weight: np.ndarray, bias: np.ndarray) -> list[Any]:
        """``out_j = sum_i weight[j, i] * inputs[i] + bias[j]``: one rescale per output, scale preserved.

        All ``inputs`` share one level and scale (one layer of the batch packing). Each non-zero weight is
        a scalar plaintext at the scale of the prime the rescale drops, so the outputs keep the inputs'
        scale exactly; zero weights cost nothing.
        """
        if weight.shape[1] != len(inputs):
            raise invalid("weight", weight.shape, f"[out, {len(inputs)}] for {len(inputs)} inputs")
        parms_id, scale = inputs[0].parms_id(), inputs[0].scale
        prime = self._top_prime(inputs[0])
        evaluator, encoder = self.evaluator, self.encoder
        plain, term = sealapi.Plaintext(), sealapi.Ciphertext()
        outputs = []
        for j in range(weight.shape[0]):
            acc: Any = None
            for i in np.flatnonzero(weight[j]).tolist():
                encoder.encode(float(weight[j, i]), parms_id, prime, plain)
                if acc is None:
                    acc = sealapi.Ciphertext()
                    evaluator.multiply_plain(inputs[i], plain, acc)
                else:
                    evaluator.multiply_plain(inputs[i], plain, term)
                    evaluator.add_inplace(acc, term)
            if acc is None:
                acc = self._zero(parms_id, scale * prime)
            if bias[j]:
                evaluator.add_plain_inplace(acc, self._scalar(float(bias[j]), parms_id, acc.scale))
            evaluator.rescale_to_next_inplace(acc)
            outputs.append(acc)
        return outputs

    def diagonal_plan(self, weight: np.ndarray, n: int) -> DiagonalPlan:
        """Pre-rotated generalised diagonals of ``weight`` [out, in] for :meth:`matvec` (plain, not encoded)."""
        return DiagonalPlan(weight, n, self.slots)

    def matvec(self, x: Any, plans: Sequence[DiagonalPlan], cache: dict[Any, Any]) -> list[Any]:
        """``W @ x`` for each plan's ``W`` (sharing the baby steps), replicated with period ``m`` (rescaled).

        ``x`` must be replicated with period ``plans[0].n``; ``cache`` keeps the encoded diagonals across
        calls at one level (pass the same dict for every query of one evaluation).
        """
        first = plans[0]
        parms_id = x.parms_id()
        prime = self._top_prime(x)
        baby = [x]
        for _ in range(1, first.g):
            baby.append(self.rotate(baby[-1], 1))
        evaluator, term = self.evaluator, sealapi.Ciphertext()
        outputs = []
        for p, plan in enumerate(plans):
            total: Any = None
            for j in reversed(range(len(plan.groups))):  # Horner: every giant step is one rotation by g
                if total is not None:
                    total = self.rotate(total, plan.g)
                inner: Any = None
                for i, diagonal in plan.groups[j]:
                    key = (id(plan), j, i)
                    plain = cache.get(key)
                    if plain is None:
                        plain = cache[key] = self._vector(diagonal, parms_id, prime)
                    if inner is None:
                        inner = sealapi.Ciphertext()
                        evaluator.multiply_plain(baby[i], plain, inner)
                    else:
                        evaluator.multiply_plain(baby[i], plain, term)
                        evaluator.add_inplace(inner, term)
                if inner is None:
                    continue
                if total is None:
                    total = inner
                else:
                    evaluator.add_inplace(total, inner)
            if total is None:
                total = self._zero(parms_id, x.scale * prime)
            evaluator.rescale_to_next_inplace(total)
            step = plan.n // 2
            while step >= plan.m:
                evaluator.add_inplace(total, self.rotate(total, step))
                step //= 2
            outputs.append(total)
            logger.debug("matvec %d: %d diagonals, %d rotations", p, plan.diagonals, plan.rotations)
        return outputs


class DiagonalPlan:
    """The generalised diagonals of a padded ``m x n`` matrix, grouped for baby-step giant-step.

    ``m`` = next power of two of the outputs, ``n`` = that of the inputs (at least ``m``); diagonal ``k``
    holds ``W[t mod m, (t + k) mod n]`` over all slots ``t`` (so the output is replicated with period
    ``m``), pre-rotated by the giant step ``j * g`` it will be rotated back by. All-zero diagonals are
    dropped.
    """

    def __init__(self, weight: np.ndarray, n: int, slots: int) -> None:
        out, d = weight.shape
        self.m = _next_pow2(out)
        self.n = max(n, self.m, _next_pow2(d))
        if slots % self.n:
            raise invalid("slots", slots, f"a multiple of the layer's period {self.n}", "use a larger ring")
        padded = np.zeros((self.m, self.n))
        padded[:out, :d] = weight
        self.g = 1 << math.ceil(math.log2(self.m) / 2)
        t = np.arange(slots)
        self.groups: list[list[tuple[int, np.ndarray]]] = []
        self.diagonals = 0
        for j in range(math.ceil(self.m / self.g)):
            group = []
            for i in range(self.g):
                k = j * self.g + i
                if k >= self.m:
                    break
                diagonal = padded[t % self.m, (t + k) % self.n]
                if np.any(diagonal):
                    group.append((i, np.roll(diagonal, j * self.g)))
            self.diagonals += len(group)
            self.groups.append(group)
        last = max((j for j, group in enumerate(self.groups) if group), default=0)
        self.rotations = (self.g - 1) + last + int(math.log2(self.n // self.m))


def _next_pow2(v: int) -> int:
    return 1 << max(v - 1, 0).bit_length()
