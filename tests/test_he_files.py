"""Key and ciphertext files (protection/he_files.py): no secret on the server side, every check fires."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
import tenseal as ts
import torch

from ramparts.data import load_digits
from ramparts.errors import ValidationError
from ramparts.protection.he_eval import decrypt_outputs, encrypt_inputs, evaluate, plan_for
from ramparts.protection.he_files import (
    HEFileError,
    IntegrityError,
    SecretKeyError,
    WrongKeyError,
    check_plausible,
    context_fingerprint,
    decrypt_checked,
    key_sizes,
    load_bare,
    load_ciphertexts,
    load_public_context,
    load_secret_context,
    plausible_bound,
    read_header,
    save_ciphertexts,
    save_public_context,
    save_secret_context,
)
from ramparts.protection.he_model import HEProgram, compile_model
from ramparts.protection.he_params import HEParameters, make_context
from ramparts.protection.poly import polynomialize
from ramparts.zoo import build


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    """A small polynomial MLP, its batch-packing parameters, and two key pairs of those parameters."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = polynomialize(build("mlp", in_channels=1, input_size=8, num_classes=10, hidden=[8])).eval()
    program = compile_model(model, (1, 8, 8))
    params = plan_for(program, "batch", n=1)
    return {
        "program": program,
        "params": params,
        "ctx": make_context(params, galois_keys=False, n_threads=1),
        "other": make_context(params, galois_keys=False, n_threads=1),
        "x": load_digits().x[:6].double(),
    }


def _inputs(setup: dict[str, Any]) -> Any:
    """The digits images encrypted under ``setup["ctx"]`` (made once per module)."""
    if "inputs" not in setup:
        program: HEProgram = setup["program"]
        encoding = program.input_encoding("batch")
        setup["inputs"] = encrypt_inputs(setup["ctx"], setup["x"], packing="batch", encoding=encoding)
    return setup["inputs"]


def test_public_context_holds_no_secret_key(setup: dict[str, Any], tmp_path: Path) -> None:
    ctx = setup["ctx"]
    info = save_public_context(ctx, tmp_path / "public.ctx", keys=("relin",), params=setup["params"])
    header = read_header(tmp_path / "public.ctx")
    assert header["kind"] == "public-context"
    assert header["keys"] == ["relin"]
    assert set(header["key_bytes"]) == {"public_key", "relin"}
    assert header["key_bytes"]["relin"] > 0
    assert info.bytes == (tmp_path / "public.ctx").stat().st_size
    public = load_public_context(tmp_path / "public.ctx", n_threads=1)
    assert not public.is_private()
    assert not public.has_secret_key()
    assert public.has_relin_keys()
    assert not public.has_galois_keys()
    with pytest.raises(ValueError, match="Secret key"):
        public.secret_key()
    raw = (tmp_path / "public.ctx").read_bytes()[-sum(header["item_lengths"]) :]
    assert not ts.context_from(raw).is_private()  # the payload itself carries no secret key
    assert context_fingerprint(public) == context_fingerprint(ctx) == header["fingerprint"]
    with pytest.raises(ValidationError, match="no Galois keys"):
        save_public_context(ctx, tmp_path / "g.ctx", keys=("relin", "galois"))


def test_galois_keys_are_written_only_when_asked(tmp_path: Path) -> None:
    params = HEParameters(poly_modulus_degree=4096, coeff_mod_bit_sizes=(30, 25, 30), scale_bits=25)
    ctx = make_context(params, galois_keys=True, n_threads=1)
    sizes = key_sizes(ctx)
    assert sizes["galois"] > 10 * sizes["relin"] > 0
    small = save_public_context(ctx, tmp_path / "a.ctx", keys=("relin",))
    large = save_public_context(ctx, tmp_path / "b.ctx", keys=("relin", "galois"))
    assert large.bytes - small.bytes == pytest.approx(sizes["galois"], rel=0.01)
    public = load_public_context(tmp_path / "b.ctx")
    assert public.has_galois_keys()
    assert not public.is_private()


def test_secret_context_round_trip_and_roles_are_enforced(setup: dict[str, Any], tmp_path: Path) -> None:
    ctx = setup["ctx"]
    save_secret_context(ctx, tmp_path / "secret.ctx", params=setup["params"])
    save_public_context(ctx, tmp_path / "public.ctx")
    assert stat.S_IMODE((tmp_path / "secret.ctx").stat().st_mode) == 0o600
    secret = load_secret_context(tmp_path / "secret.ctx", n_threads=1)
    assert secret.is_private()
    assert context_fingerprint(secret) == context_fingerprint(ctx)
    assert read_header(tmp_path / "secret.ctx")["params"] == setup["params"].to_dict()
    with pytest.raises(SecretKeyError, match="SECRET context"):
        load_public_context(tmp_path / "secret.ctx")  # the server refuses a secret key
    with pytest.raises(SecretKeyError, match="public context cannot decrypt"):
        load_secret_context(tmp_path / "public.ctx")
    with pytest.raises(SecretKeyError, match="public one"):
        save_secret_context(load_public_context(tmp_path / "public.ctx"), tmp_path / "x.ctx")


def test_ciphertext_round_trip_sizes_and_evaluation(setup: dict[str, Any], tmp_path: Path) -> None:
    ctx, program = setup["ctx"], setup["program"]
    info = save_ciphertexts(_inputs(setup), tmp_path / "in.ct", context=ctx, role="inputs")
    summary = info.summary()
    assert summary["bytes_per_input"] == pytest.approx(info.bytes / 6)
    assert summary["items"] == len(info.item_bytes) == 64  # batch: one ciphertext per input feature
    assert info.header["packing"] == "batch"
    save_public_context(ctx, tmp_path / "public.ctx")
    public = load_public_context(tmp_path / "public.ctx")
    result = evaluate(program, load_ciphertexts(tmp_path / "in.ct", public, role="inputs"))
    save_ciphertexts(result, tmp_path / "out.ct", context=public, role="outputs")
    logits = decrypt_checked(
        ctx,
        load_ciphertexts(tmp_path / "out.ct", ctx, role="outputs"),
        max_abs=plausible_bound(setup["params"]),
    )
    expected = program.plain_forward(setup["x"])
    assert torch.allclose(logits, expected, atol=1e-2)
    with pytest.raises(HEFileError, match="expected encrypted inputs"):
        load_ciphertexts(tmp_path / "out.ct", ctx, role="inputs")
    with pytest.raises(SecretKeyError, match="no secret key"):
        decrypt_checked(public, result, max_abs=100.0)


def test_ciphertext_of_another_key_names_both_fingerprints(setup: dict[str, Any], tmp_path: Path) -> None:
    save_ciphertexts(_inputs(setup), tmp_path / "in.ct", context=setup["ctx"])
    mine, theirs = context_fingerprint(setup["ctx"]), context_fingerprint(setup["other"])
    with pytest.raises(WrongKeyError, match="another key") as caught:
        load_ciphertexts(tmp_path / "in.ct", setup["other"])
    assert mine[:16] in str(caught.value)
    assert theirs[:16] in str(caught.value)


@pytest.mark.parametrize("where", ["payload", "truncate", "header", "magic"])
def test_tampered_or_truncated_files_are_refused(setup: dict[str, Any], tmp_path: Path, where: str) -> None:
    path = tmp_path / "in.ct"
    save_ciphertexts(_inputs(setup), path, context=setup["ctx"])
    data = bytearray(path.read_bytes())
    if where == "payload":
        data[-1000] ^= 0x01
        expected: tuple[type[Exception], str] = (IntegrityError, "checksum mismatch")
    elif where == "truncate":
        data = data[:-10]
        expected = (IntegrityError, "truncated")
    elif where == "header":
        data = bytearray(bytes(data).replace(b'"version": 1', b'"version": 9', 1))
        expected = (HEFileError, "version 9")
    else:
        data[:4] = b"XXXX"
        expected = (HEFileError, "magic")
    path.write_bytes(bytes(data))
    with pytest.raises(expected[0], match=expected[1]):
        load_ciphertexts(path, setup["ctx"])


def test_wrong_key_decryption_without_header_is_caught(setup: dict[str, Any]) -> None:
    """Bare TenSEAL bytes (no header) decrypted under another key: the plausibility check catches it."""
    result = evaluate(setup["program"], _inputs(setup))
    items = result.serialize_items()
    stolen = type(result).deserialize_items(
        setup["other"], items, packing=result.packing, n=result.n, meta=result.meta
    )
    garbage = decrypt_outputs(setup["other"], stolen)
    bound = plausible_bound(setup["params"])
    with pytest.raises(WrongKeyError, match="wrong key or corrupted ciphertext"):
        check_plausible(garbage, max_abs=bound)
    honest = decrypt_outputs(setup["ctx"], result)
    assert torch.equal(check_plausible(honest, max_abs=bound), honest)
    with pytest.raises(WrongKeyError, match="finite: False"):
        check_plausible(torch.tensor([1.0, float("nan")]), max_abs=bound)


def test_bare_tenseal_vector_is_checked_after_decryption(setup: dict[str, Any], tmp_path: Path) -> None:
    logits = [3.5, -2.0, 0.25, 7.0, 1.0, 0.0, -4.0, 2.0, 5.5, -1.5]
    good, bad, cut = tmp_path / "good.bin", tmp_path / "bad.bin", tmp_path / "cut.bin"
    good.write_bytes(ts.ckks_vector(setup["ctx"], logits).serialize())
    bad.write_bytes(ts.ckks_vector(setup["other"], logits).serialize())
    cut.write_bytes(good.read_bytes()[:-50])
    bound = plausible_bound(setup["params"])
    values = decrypt_checked(setup["ctx"], load_bare(good, setup["ctx"], outputs=10), max_abs=bound)
    assert torch.allclose(values, torch.tensor([logits], dtype=torch.float64), atol=1e-4)
    with pytest.raises(WrongKeyError, match="wrong key or corrupted ciphertext"):
        decrypt_checked(setup["ctx"], load_bare(bad, setup["ctx"], outputs=10), max_abs=bound)
    with pytest.raises(HEFileError, match=r"cut\.bin"):
        load_bare(cut, setup["ctx"], outputs=10)
