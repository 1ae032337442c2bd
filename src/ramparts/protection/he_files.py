"""Versioned files for CKKS keys and ciphertexts: the client's secret context, the server's public one, data.

Encrypted inference (CryptoNets, Gilad-Bachrach et al., ICML 2016) has two parties: the client keeps the
secret key and sends the server a *public* context (the public key, the relinearisation keys and, for
the per-query packing, the Galois/rotation keys) and ciphertexts; the server returns ciphertexts only
the client can read. TenSEAL (Benaissa et al., ICLR 2021 workshop) serialises the contexts (protocol
buffers) and Microsoft SEAL the CKKS ciphertexts (Cheon et al., ASIACRYPT 2017; :mod:`he_seal` evaluates
them), but neither records which key a ciphertext belongs to: one decrypted under another key of the same
parameters is silent garbage. These files add what is missing.

Layout of every file: ``MAGIC`` (12 bytes), the header length (8 bytes, little-endian), a UTF-8 JSON
header, then the payload (serialised items, concatenated: one context, or one SEAL ciphertext each). The header holds the format and
version, the kind (``secret-context``, ``public-context`` or ``ciphertext``), the context's
*fingerprint* (sha256 of the context serialised with its public key only: the same for the secret and
the public context of one key pair), per-item lengths, the payload's sha256, and for ciphertexts the
packing, the number of inputs and the encoding metadata. Loading checks all of it: a ciphertext of
another key names both fingerprints, a changed byte fails the checksum, parse failures name the
file, a public context that holds a secret key (or a secret context given as public) is refused.

The checksum detects corruption, not forgery: anyone can recompute it. Authenticating results would need
a MAC the server cannot compute, which is out of scope here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ramparts.errors import ValidationError, check_int, invalid, unknown

if TYPE_CHECKING:
    import tenseal as ts

    from ramparts.protection.he_eval import EncryptedBatch
    from ramparts.protection.he_params import HEParameters

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "KEY_KINDS",
    "MAGIC",
    "FileInfo",
    "HEFileError",
    "IntegrityError",
    "SecretKeyError",
    "WrongKeyError",
    "check_plausible",
    "context_fingerprint",
    "decrypt_checked",
    "key_sizes",
    "load_bare",
    "load_ciphertexts",
    "load_public_context",
    "load_secret_context",
    "plausible_bound",
    "read_header",
    "save_ciphertexts",
    "save_public_context",
    "save_secret_context",
]

logger = logging.getLogger(__name__)

MAGIC = b"RAMPARTS-HE\n"
FORMAT = "ramparts-he"
FORMAT_VERSION = 1
KINDS: tuple[str, ...] = ("secret-context", "public-context", "ciphertext")
KEY_KINDS: tuple[str, ...] = ("relin", "galois")
ROLES: tuple[str, ...] = ("inputs", "outputs")
_LENGTH = struct.Struct("<Q")
_MAX_HEADER = 1 << 24  # 16 MiB: a header is a few kB; anything larger is not ours


class HEFileError(ValidationError):
    """A key or ciphertext file that cannot be used as given."""


class IntegrityError(HEFileError):
    """A file whose payload does not match its checksum or lengths (tampered or truncated)."""


class WrongKeyError(HEFileError):
    """A ciphertext made under another key pair than the context given, or decrypted values that show it."""


class SecretKeyError(HEFileError):
    """A secret key where only public material is allowed, or a missing one where decryption needs it."""


@dataclass(frozen=True)
class FileInfo:
    """What a save wrote: the path, total bytes, the header, and bytes per item (one per ciphertext)."""

    path: Path
    bytes: int
    header: dict[str, Any]
    item_bytes: tuple[int, ...] = field(default_factory=tuple)

    def summary(self) -> dict[str, Any]:
        """JSON-ready sizes: total, per item, per input (for ciphertexts)."""
        n = self.header.get("n")
        return {
            "path": str(self.path),
            "kind": self.header["kind"],
            "bytes": self.bytes,
            "items": len(self.item_bytes),
            "bytes_per_item": (sum(self.item_bytes) / len(self.item_bytes)) if self.item_bytes else None,
            "bytes_per_input": (self.bytes / n) if isinstance(n, int) and n > 0 else None,
        }


def context_fingerprint(context: ts.Context) -> str:
    """sha256 (hex) of the context serialised with its public key only: identifies the key pair.

    The secret context and the public context made from it give the same fingerprint; TenSEAL's
    serialisation of one public key is deterministic.
    """
    data = context.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    return hashlib.sha256(data).hexdigest()


def key_sizes(context: ts.Context, *, kinds: Sequence[str] = KEY_KINDS) -> dict[str, int]:
    """Serialised bytes by kind: ``public_key`` (with parameters) and each of ``kinds`` (0 when absent).

    Measured by serialising with and without each kind, so the numbers are what a file would hold
    (Galois keys are tens of MB: leave them out of ``kinds`` when their size is not needed).
    """
    for kind in kinds:
        if kind not in KEY_KINDS:
            raise unknown("kinds", kind, KEY_KINDS)
    base = len(
        context.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
        )
    )
    sizes = {"public_key": base}
    present = {"relin": context.has_relin_keys(), "galois": context.has_galois_keys()}
    for kind in kinds:
        sizes[kind] = 0
        if present[kind]:
            full = context.serialize(
                save_public_key=True,
                save_secret_key=False,
                save_galois_keys=kind == "galois",
                save_relin_keys=kind == "relin",
            )
            sizes[kind] = len(full) - base
    return sizes


def save_secret_context(
    context: ts.Context,
    path: str | os.PathLike[str],
    *,
    params: HEParameters | None = None,
    extra: Mapping[str, Any] | None = None,
) -> FileInfo:
    """Write the client's context (public and secret key; no evaluation keys) readable by the owner only."""
    if not context.is_private():
        raise SecretKeyError(
            "context: expected a private context holding the secret key, got a public one. "
            "Fix: save the context returned by make_context(), before make_context_public()."
        )
    payload = context.serialize(
        save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    header = _context_header("secret-context", context, params, extra, keys=())
    return _write(Path(path), header, [payload], private=True)


def save_public_context(
    context: ts.Context,
    path: str | os.PathLike[str],
    *,
    keys: Sequence[str] = ("relin",),
    params: HEParameters | None = None,
    extra: Mapping[str, Any] | None = None,
) -> FileInfo:
    """Write the server's context: public key plus the evaluation ``keys`` (``relin``, ``galois``), no secret.

    ``keys`` is what the packing needs (``he_eval.required_keys(packing)``); Galois keys are tens of MB,
    so they are written only when asked for. The header records each kind's size.
    """
    wanted = tuple(keys)
    for key in wanted:
        if key not in KEY_KINDS:
            raise unknown("keys", key, KEY_KINDS)
    if "galois" in wanted and not context.has_galois_keys():
        raise invalid(
            "keys",
            list(wanted),
            "key kinds the context holds (it has no Galois keys)",
            "create it with make_context(params, galois_keys=True) for the per-query packing",
        )
    payload = context.serialize(
        save_public_key=True,
        save_secret_key=False,
        save_galois_keys="galois" in wanted,
        save_relin_keys="relin" in wanted,
    )
    header = _context_header("public-context", context, params, extra, keys=wanted)
    return _write(Path(path), header, [payload], private=False)


def load_secret_context(path: str | os.PathLike[str], *, n_threads: int | None = None) -> ts.Context:
    """Read a file written by :func:`save_secret_context`; refuses a public context (it cannot decrypt)."""
    file = Path(path)
    header, items = _read(file)
    if header["kind"] != "secret-context":
        raise SecretKeyError(
            f"{file}: expected the client's secret context (kind 'secret-context'), got {header['kind']!r}. "
            "Fix: pass the secret.ctx written by `ramparts encrypt keygen`; the public context cannot decrypt."
        )
    context = _parse_context(file, items[0], n_threads)
    if not context.is_private():
        raise SecretKeyError(
            f"{file}: the file claims a secret context but holds no secret key. Fix: re-run keygen."
        )
    _check_fingerprint(file, header, context)
    return context


def load_public_context(path: str | os.PathLike[str], *, n_threads: int | None = None) -> ts.Context:
    """Read a file written by :func:`save_public_context`; refuses anything that holds a secret key."""
    file = Path(path)
    header, items = _read(file)
    if header["kind"] == "secret-context":
        raise SecretKeyError(
            f"{file}: this is the client's SECRET context; the server must only receive the public one. "
            "Fix: pass public.ctx (written next to secret.ctx by `ramparts encrypt keygen`), and keep secret.ctx "
            "on the client."
        )
    if header["kind"] != "public-context":
        raise HEFileError(
            f"{file}: expected a public context (kind 'public-context'), got {header['kind']!r}. "
            "Fix: pass public.ctx from `ramparts encrypt keygen`."
        )
    context = _parse_context(file, items[0], n_threads)
    if context.is_private():
        raise SecretKeyError(
            f"{file}: the public context holds a secret key. Fix: re-create it with save_public_context()."
        )
    _check_fingerprint(file, header, context)
    return context


def save_ciphertexts(
    batch: EncryptedBatch,
    path: str | os.PathLike[str],
    *,
    context: ts.Context,
    role: str = "inputs",
    extra: Mapping[str, Any] | None = None,
) -> FileInfo:
    """Write an :class:`~ramparts.protection.he_eval.EncryptedBatch` (inputs or results) with its header.

    ``context`` is the one the ciphertexts were made under (secret or public: the fingerprint is the
    same); ``role`` is ``"inputs"`` or ``"outputs"``.
    """
    if role not in ROLES:
        raise unknown("role", role, ROLES)
    items = batch.serialize_items()
    header = {
        "kind": "ciphertext",
        "role": role,
        "scheme": "ckks",
        "packing": batch.packing,
        "n": batch.n,
        "meta": _jsonable(getattr(batch, "meta", {}), "batch.meta"),
        "fingerprint": context_fingerprint(context),
        "extra": _jsonable(dict(extra or {}), "extra"),
    }
    return _write(Path(path), header, items, private=False)


def load_ciphertexts(
    path: str | os.PathLike[str], context: ts.Context, *, role: str | None = None
) -> EncryptedBatch:
    """Read ciphertexts written by :func:`save_ciphertexts` under ``context``; every check runs first.

    A file made under another key pair raises :class:`WrongKeyError` naming both fingerprints, a changed
    byte :class:`IntegrityError`; ``role`` (``"inputs"``/``"outputs"``), when given, must match.
    """
    from ramparts.protection.he_eval import EncryptedBatch

    file = Path(path)
    header, items = _read(file)
    if header["kind"] != "ciphertext":
        raise HEFileError(
            f"{file}: expected a ciphertext file, got a {header['kind']!r} file. Fix: pass the .ct file "
            "written by `ramparts encrypt encrypt` or `serve`."
        )
    if role is not None and header.get("role") != role:
        raise HEFileError(
            f"{file}: expected encrypted {role}, got encrypted {header.get('role')}. "
            f"Fix: pass the file of {role} (inputs come from `encrypt`, outputs from `serve`)."
        )
    _check_fingerprint(file, header, context)
    try:
        return EncryptedBatch.deserialize_items(
            context, items, packing=header["packing"], n=header["n"], meta=header.get("meta", {})
        )
    except (ValueError, RuntimeError, TypeError) as exc:
        raise HEFileError(
            f"{file}: could not read the ciphertexts ({exc}). Fix: re-create the file."
        ) from exc


def load_bare(path: str | os.PathLike[str], context: ts.Context, *, outputs: int) -> EncryptedBatch:
    """Read a bare TenSEAL ``CKKSVector`` file (no Ramparts header) as one query result of ``outputs`` logits.

    Nothing ties such bytes to a key or checks their integrity, so decrypt them with
    :func:`decrypt_checked`: its plausibility check is then the only guard against a wrong key.
    """
    import tenseal as ts

    from ramparts.protection.he_eval import EncryptedBatch

    file = Path(path)
    if not file.is_file():
        raise invalid("path", str(file), "an existing ciphertext file", "check the path")
    check = check_int("outputs", outputs, 1)
    data = file.read_bytes()
    if data.startswith(MAGIC):
        raise HEFileError(
            f"{file}: has a Ramparts header. Fix: read it with load_ciphertexts(), which checks it."
        )
    try:
        vector = ts.ckks_vector_from(context, data)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise HEFileError(
            f"{file}: TenSEAL could not read a CKKS vector ({exc}): wrong file, truncated or corrupted. "
            "Fix: re-send the ciphertext."
        ) from exc
    logger.warning("%s has no header: its key and integrity cannot be checked before decryption", file)
    return EncryptedBatch(packing="query", n=1, payload=[vector], meta={"outputs": check})


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON header of a key or ciphertext file (sizes, fingerprint, packing...), payload checked."""
    return _read(Path(path))[0]


def check_plausible(values: torch.Tensor, *, max_abs: float, source: str = "ciphertext") -> torch.Tensor:
    """``values`` if finite and within ``max_abs``; else :class:`WrongKeyError` ("wrong key or corrupted").

    CKKS decryption under the wrong secret key does not fail: it gives numbers spread uniformly over the
    whole range the remaining modulus represents (``q_level / scale``). Honest model outputs sit far
    inside it, so values beyond a quarter of that range are, with overwhelming probability, garbage.
    """
    if not math.isfinite(max_abs) or max_abs <= 0:
        raise invalid("max_abs", max_abs, "a finite bound > 0")
    finite = bool(torch.isfinite(values).all())
    largest = float(values.abs().max()) if values.numel() else 0.0
    if not finite or largest > max_abs:
        raise WrongKeyError(
            f"{source}: decrypted values look like noise (largest |value| {largest:.3g} > {max_abs:.3g}, "
            f"finite: {finite}): wrong key or corrupted ciphertext. Fix: decrypt with the secret context the "
            "inputs were encrypted with, and re-send the ciphertext; raise max_abs only if the model's outputs "
            "really are that large."
        )
    return values


def plausible_bound(params: HEParameters) -> float:
    """A quarter of the range a level-0 CKKS ciphertext represents: ``2**(first_prime - scale_bits - 1) / 4``."""
    return 2.0 ** (params.coeff_mod_bit_sizes[0] - params.scale_bits - 1) / 4


def decrypt_checked(
    context: ts.Context, result: EncryptedBatch, *, max_abs: float, source: str = "ciphertext"
) -> torch.Tensor:
    """Decrypt with :func:`he_eval.decrypt_outputs` after checking the key, then :func:`check_plausible`."""
    from ramparts.protection.he_eval import decrypt_outputs

    if not context.is_private():
        raise SecretKeyError(
            f"{source}: the context has no secret key and cannot decrypt. Fix: decrypt on the client with "
            "secret.ctx; the server only ever holds public.ctx."
        )
    return check_plausible(decrypt_outputs(context, result), max_abs=max_abs, source=source)


def _context_header(
    kind: str,
    context: ts.Context,
    params: HEParameters | None,
    extra: Mapping[str, Any] | None,
    *,
    keys: tuple[str, ...],
) -> dict[str, Any]:
    sizes = key_sizes(context, kinds=keys)
    return {
        "kind": kind,
        "scheme": "ckks",
        "params": params.to_dict() if params is not None else None,
        "keys": list(keys),
        "key_bytes": sizes,
        "fingerprint": context_fingerprint(context),
        "extra": _jsonable(dict(extra or {}), "extra"),
    }


def _write(file: Path, header: dict[str, Any], items: Sequence[bytes], *, private: bool) -> FileInfo:
    payload = b"".join(items)
    full = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        **header,
        "item_lengths": [len(i) for i in items],
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    head = json.dumps(full, sort_keys=True).encode("utf-8")
    file.parent.mkdir(parents=True, exist_ok=True)
    if private:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        stream = os.fdopen(fd, "wb")
    else:
        stream = file.open("wb")
    with stream:
        stream.write(MAGIC + _LENGTH.pack(len(head)) + head + payload)
    total = len(MAGIC) + _LENGTH.size + len(head) + len(payload)
    logger.info("wrote %s (%s, %d bytes)", file, header["kind"], total)
    return FileInfo(path=file, bytes=total, header=full, item_bytes=tuple(len(i) for i in items))


def _read(file: Path) -> tuple[dict[str, Any], list[bytes]]:
    if not file.is_file():
        raise invalid("path", str(file), "an existing key or ciphertext file", "check the path")
    data = file.read_bytes()
    if not data.startswith(MAGIC):
        raise HEFileError(
            f"{file}: not a Ramparts key or ciphertext file (no {MAGIC!r} magic). Fix: pass a file written by "
            "`ramparts encrypt`; a bare TenSEAL ciphertext has no header to check, decrypt it with check_plausible."
        )
    start = len(MAGIC) + _LENGTH.size
    if len(data) < start:
        raise IntegrityError(f"{file}: truncated before its header. Fix: copy the file again.")
    (length,) = _LENGTH.unpack(data[len(MAGIC) : start])
    if length > _MAX_HEADER or start + length > len(data):
        raise IntegrityError(
            f"{file}: truncated or corrupted header (length {length}). Fix: copy the file again."
        )
    try:
        header = json.loads(data[start : start + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"{file}: corrupted header ({exc}). Fix: copy the file again.") from exc
    _check_header(file, header)
    payload = data[start + length :]
    lengths = header["item_lengths"]
    if sum(lengths) != len(payload):
        raise IntegrityError(
            f"{file}: payload is {len(payload)} bytes, the header lists {sum(lengths)} "
            "(truncated or appended to). Fix: copy the file again."
        )
    digest = hashlib.sha256(payload).hexdigest()
    if digest != header["payload_sha256"]:
        raise IntegrityError(
            f"{file}: payload checksum mismatch (sha256 {digest[:16]}..., header says "
            f"{header['payload_sha256'][:16]}...): the file was modified or corrupted. Fix: re-create or re-send it."
        )
    items, offset = [], 0
    for n in lengths:
        items.append(payload[offset : offset + n])
        offset += n
    return header, items


def _check_header(file: Path, header: Any) -> None:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise HEFileError(
            f"{file}: header is not a {FORMAT!r} header. Fix: pass a file written by `ramparts encrypt`."
        )
    if header.get("version") != FORMAT_VERSION:
        raise HEFileError(
            f"{file}: format version {header.get('version')!r}, this Ramparts reads version {FORMAT_VERSION}. "
            "Fix: re-create the file with this version of Ramparts."
        )
    if header.get("kind") not in KINDS:
        raise HEFileError(f"{file}: unknown kind {header.get('kind')!r}; expected one of {', '.join(KINDS)}.")
    lengths = header.get("item_lengths")
    if (
        not isinstance(lengths, list)
        or not lengths
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in lengths)
        or not isinstance(header.get("payload_sha256"), str)
        or not isinstance(header.get("fingerprint"), str)
    ):
        raise IntegrityError(
            f"{file}: header lacks item lengths, checksum or fingerprint. Fix: re-create the file."
        )


def _parse_context(file: Path, data: bytes, n_threads: int | None) -> ts.Context:
    import tenseal as ts

    try:
        return ts.context_from(data, n_threads=n_threads)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise HEFileError(
            f"{file}: TenSEAL could not read the context ({exc}). Fix: re-create it with keygen."
        ) from exc


def _check_fingerprint(file: Path, header: dict[str, Any], context: ts.Context) -> None:
    actual = context_fingerprint(context)
    if header["fingerprint"] != actual:
        raise WrongKeyError(
            f"{file}: encrypted with another key: the file's key fingerprint is {header['fingerprint'][:16]}..., "
            f"the context given has {actual[:16]}.... Fix: use the keys the file was made with (the secret.ctx/"
            "public.ctx of the same `ramparts encrypt keygen` run)."
        )


def _jsonable(value: Any, name: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise invalid(name, value, "JSON-serialisable metadata", f"convert it ({exc})") from exc
