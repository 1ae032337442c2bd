"""`ramparts encrypt`: encrypted inference with CKKS, client and server side as separate commands.

The client runs ``keygen`` (secret.ctx stays with it; public.ctx goes to the server), ``encrypt`` and,
at the end, ``decrypt``; the server runs ``serve`` with the public context only (CryptoNets,
Gilad-Bachrach et al., ICML 2016, on TenSEAL's CKKS, Benaissa et al., ICLR 2021 workshop). ``train``
makes an encryptable (polynomial) model and reports its accuracy cost against ReLU.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ramparts.cli._common import err, load_splits, out, print_json, user_errors
from ramparts.data import DATASET_FORMS
from ramparts.errors import invalid

if TYPE_CHECKING:
    from torch import nn

    from ramparts.data import Dataset
    from ramparts.protection.he_model import HEProgram

encrypt_app = typer.Typer(
    name="encrypt",
    help="Inference on encrypted inputs (CKKS): keygen, encrypt, serve, decrypt; `train` makes a model for it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

SECRET_FILE = "secret.ctx"
PUBLIC_FILE = "public.ctx"
PARAMS_FILE = "params.json"
SPLITS = ("test", "train")

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="TenSEAL threads for key work (default: all cores); SEAL evaluation uses one.",
    ),
]


@encrypt_app.command("train")
@user_errors
def train_command(
    data: Annotated[
        str, typer.Option("--data", "-d", help=f"Dataset: {'; '.join(DATASET_FORMS)}.")
    ] = "digits",
    arch: Annotated[
        str, typer.Option("--arch", "-a", help="Zoo architecture with ReLU layers to replace.")
    ] = "mlp",
    hidden: Annotated[
        str | None, typer.Option(help="MLP hidden widths, comma list (e.g. 32); mlp only.")
    ] = "32",
    activation: Annotated[str, typer.Option(help="Polynomial activation: square or quadratic.")] = "square",
    start: Annotated[str, typer.Option(help="scratch, or relu (train ReLU, then fine-tune).")] = "scratch",
    batch_norm: Annotated[
        bool, typer.Option(help="Batch norm before each activation (folded later).")
    ] = False,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training data.")] = 20,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per step.")] = 64,
    lr: Annotated[float, typer.Option(help="Learning rate (Adam).")] = 3e-3,
    seed: Annotated[int, typer.Option(min=0, help="Seeds weights and shuffling.")] = 0,
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for model.safetensors + model.json.")
    ] = Path("models/encryptable"),
    json_output: JsonOption = False,
) -> None:
    """Train a polynomial (encryptable) model and the ReLU model of the same recipe; save the polynomial one."""
    from ramparts.protection.poly import save_encryptable, train_encryptable
    from ramparts.training import TrainConfig

    train_ds, test_ds = load_splits(data)
    c, h, _ = train_ds.input_shape
    arch_config: dict[str, Any] = {"in_channels": c, "input_size": h, "num_classes": train_ds.num_classes}
    if arch == "mlp" and hidden:
        try:
            arch_config["hidden"] = [int(v) for v in hidden.split(",") if v.strip()]
        except ValueError as exc:
            raise invalid("hidden", hidden, "a comma list of integers, e.g. 32 or 64,32") from exc
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    if not json_output:
        err.print(
            f"Training [bold]{escape(arch)}[/] with {escape(activation)} and with ReLU on {escape(train_ds.name)}"
        )
    report = train_encryptable(
        arch,
        train_ds,
        config=config,
        test=test_ds,
        activation=activation,
        start=start,
        batch_norm=batch_norm,
        arch_config=arch_config,
        progress=not json_output,
    )
    extra = {
        "dataset": data,
        "classes": list(train_ds.classes),
        "input_shape": list(train_ds.input_shape),
        "bounds": [0.0, 1.0],
        "test_accuracy": report.accuracy,
        "encryptable": report.summary(),
    }
    weights = save_encryptable(
        report.model,
        out_dir,
        arch=arch,
        config=arch_config,
        activation=activation,
        batch_norm=batch_norm,
        extra=extra,
    )
    result = {"model": str(weights), **report.summary()}
    if json_output:
        print_json(result)
        return
    out.print(
        f"Saved [bold]{escape(str(weights))}[/]: {escape(activation)} test accuracy {100 * report.accuracy:.2f}% "
        f"vs ReLU {100 * report.relu_accuracy:.2f}% (cost {100 * report.accuracy_cost:+.2f} points)."
    )
    out.print(f"Next: [bold]ramparts encrypt keygen --model {escape(str(out_dir))} --out keys[/]")


@encrypt_app.command("keygen")
@user_errors
def keygen_command(
    model: Annotated[
        str, typer.Option("--model", "-m", help="Encryptable model folder (from `encrypt train`).")
    ],
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Key folder: secret.ctx, public.ctx, params.json.")
    ],
    packing: Annotated[
        str, typer.Option(help="query (one ciphertext per input) or batch (CryptoNets).")
    ] = "batch",
    batch: Annotated[
        int | None,
        typer.Option(
            min=1, help="batch packing: inputs per ciphertext (default: the smallest secure ring's slots)."
        ),
    ] = None,
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
) -> None:
    """Client: plan CKKS parameters for the model and write the secret and public contexts."""
    from ramparts.protection.he_eval import plan_for, required_keys
    from ramparts.protection.he_files import (
        context_fingerprint,
        plausible_bound,
        save_public_context,
        save_secret_context,
    )
    from ramparts.protection.he_model import check_packing
    from ramparts.protection.he_params import make_context

    check_packing(packing)
    program, meta = _load_program(model)
    params = plan_for(program, packing, n=batch or 1)
    keys = required_keys(packing)
    t0 = time.perf_counter()
    context = make_context(params, galois_keys="galois" in keys, n_threads=threads)
    keygen_seconds = time.perf_counter() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    secret = save_secret_context(context, out_dir / SECRET_FILE, params=params)
    public = save_public_context(context, out_dir / PUBLIC_FILE, keys=keys, params=params)
    sizes = public.header["key_bytes"]
    info = {
        "packing": packing,
        "params": params.to_dict(),
        "slots": params.slots,
        "depth": params.depth,
        "program_depth": program.depth,
        "encoding": program.input_encoding(packing),
        "input_shape": list(program.input_shape),
        "num_outputs": program.num_outputs,
        "fingerprint": context_fingerprint(context),
        "server_keys": list(keys),
        "key_bytes": sizes,
        "public_context_bytes": public.bytes,
        "secret_context_bytes": secret.bytes,
        "plausible_max_abs": plausible_bound(params),
        "model": str(model),
        "dataset": meta.get("extra", {}).get("dataset"),
        "keygen_seconds": keygen_seconds,
    }
    (out_dir / PARAMS_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if json_output:
        print_json(info)
        return
    table = Table(title=f"CKKS keys for {escape(str(model))} ({packing} packing)")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("poly modulus degree N", str(params.poly_modulus_degree))
    table.add_row("coefficient modulus bits", f"{list(params.coeff_mod_bit_sizes)} = {params.modulus_bits}")
    table.add_row("scale", f"2^{params.scale_bits}")
    table.add_row("slots / depth (model needs)", f"{params.slots} / {params.depth} ({program.depth})")
    table.add_row("public key", _size(sizes["public_key"]))
    for key in keys:
        table.add_row(f"{key} keys (server)", _size(sizes[key]))
    table.add_row(f"{PUBLIC_FILE} (send to server)", _size(public.bytes))
    table.add_row(f"{SECRET_FILE} (keep private)", _size(secret.bytes))
    out.print(table)
    out.print(
        f"Wrote {escape(str(out_dir))}/{{{SECRET_FILE}, {PUBLIC_FILE}, {PARAMS_FILE}}} in {keygen_seconds:.2f} s."
    )


@encrypt_app.command("encrypt")
@user_errors
def encrypt_command(
    keys: Annotated[Path, typer.Option("--keys", "-k", help="Key folder from `encrypt keygen`.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Ciphertext file to send to the server.")],
    data: Annotated[
        str | None,
        typer.Option("--data", "-d", help=f"Dataset: {'; '.join(DATASET_FORMS)}. Default: the model's."),
    ] = None,
    split: Annotated[
        str, typer.Option(help="test or train (the fixed split of the other commands).")
    ] = "test",
    limit: Annotated[int | None, typer.Option(min=1, help="Encrypt only the first N images.")] = None,
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
) -> None:
    """Client: encrypt images; their labels go to a client-side file next to it (OUT.labels.json)."""
    from ramparts.protection.he_eval import encrypt_inputs
    from ramparts.protection.he_files import load_secret_context, save_ciphertexts

    info = _read_params(keys)
    context = load_secret_context(keys / SECRET_FILE, n_threads=threads)
    dataset = _pick(data or info.get("dataset") or "digits", split, limit)
    if list(dataset.input_shape) != info["input_shape"]:
        raise invalid(
            "data",
            data,
            f"images of the model's input shape {tuple(info['input_shape'])}, got {dataset.input_shape}",
            "pass the dataset the model was trained on",
        )
    x = dataset.x.double()
    t0 = time.perf_counter()
    batch = encrypt_inputs(context, x, packing=info["packing"], encoding=info["encoding"])
    seconds = time.perf_counter() - t0
    saved = save_ciphertexts(batch, out_file, context=context, role="inputs")
    labels_file = _labels_path(out_file)
    labels_file.write_text(
        json.dumps({"data": dataset.name, "split": split, "labels": dataset.y.tolist()}) + "\n",
        encoding="utf-8",
    )
    result = {**saved.summary(), "n": len(dataset), "seconds": seconds, "labels": str(labels_file)}
    if json_output:
        print_json(result)
        return
    out.print(
        f"Encrypted {len(dataset)} images ({info['packing']} packing) in {seconds:.2f} s: {escape(str(out_file))} "
        f"{_size(saved.bytes)} ({_size(saved.bytes / len(dataset))} per image). Labels stay here: "
        f"{escape(str(labels_file))}."
    )


@encrypt_app.command("serve")
@user_errors
def serve_command(
    model: Annotated[str, typer.Option("--model", "-m", help="The encryptable model folder.")],
    public: Annotated[Path, typer.Option("--public", help="public.ctx from the client (never secret.ctx).")],
    in_file: Annotated[Path, typer.Option("--in", "-i", help="Encrypted inputs from `encrypt encrypt`.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Encrypted results for the client.")],
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
) -> None:
    """Server: evaluate the model on encrypted inputs with the public context only."""
    from ramparts.protection.he_eval import evaluate
    from ramparts.protection.he_files import load_ciphertexts, load_public_context, save_ciphertexts

    context = load_public_context(public, n_threads=threads)
    batch = load_ciphertexts(in_file, context, role="inputs")
    program, _ = _load_program(model)
    t0 = time.perf_counter()
    result = evaluate(program, batch)
    seconds = time.perf_counter() - t0
    saved = save_ciphertexts(result, out_file, context=context, role="outputs")
    summary = {
        **saved.summary(),
        "n": batch.n,
        "packing": batch.packing,
        "seconds": seconds,
        "seconds_per_input": seconds / batch.n,
        "inputs_per_second": batch.n / seconds if seconds > 0 else None,
    }
    if json_output:
        print_json(summary)
        return
    out.print(
        f"Evaluated {batch.n} encrypted inputs ({batch.packing} packing) in {seconds:.2f} s "
        f"({seconds / batch.n:.4f} s per input, {batch.n / max(seconds, 1e-9):.1f} inputs/s); "
        f"wrote {escape(str(out_file))} ({_size(saved.bytes)})."
    )


@encrypt_app.command("decrypt")
@user_errors
def decrypt_command(
    keys: Annotated[Path, typer.Option("--keys", "-k", help="Key folder from `encrypt keygen`.")],
    in_file: Annotated[Path, typer.Option("--in", "-i", help="Encrypted results from `encrypt serve`.")],
    labels: Annotated[
        Path | None,
        typer.Option(help="Labels file written by `encrypt encrypt` (OUT.labels.json): adds accuracy."),
    ] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write predictions and logits as JSON.")
    ] = None,
    max_abs: Annotated[
        float | None, typer.Option(help="Largest plausible |logit| (default from the parameters).")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Client: decrypt the results, print predictions (and accuracy with --labels)."""
    from ramparts.protection.he_files import decrypt_checked, load_ciphertexts, load_secret_context

    info = _read_params(keys)
    context = load_secret_context(keys / SECRET_FILE)
    result = load_ciphertexts(in_file, context, role="outputs")
    bound = max_abs if max_abs is not None else float(info["plausible_max_abs"])
    logits = decrypt_checked(context, result, max_abs=bound, source=str(in_file))
    predictions = logits.argmax(dim=1).tolist()
    summary: dict[str, Any] = {"n": len(predictions), "predictions": predictions, "accuracy": None}
    if labels is not None:
        truth = _read_labels(labels, len(predictions))
        summary["accuracy"] = sum(p == t for p, t in zip(predictions, truth, strict=True)) / len(truth)
    if out_file is not None:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(
            json.dumps({**summary, "logits": logits.tolist()}) + "\n",
            encoding="utf-8",
        )
    if json_output:
        print_json(summary)
        return
    shown = ", ".join(str(p) for p in predictions[:20]) + (" ..." if len(predictions) > 20 else "")
    out.print(f"Decrypted {len(predictions)} predictions: {shown}")
    if summary["accuracy"] is not None:
        out.print(f"Accuracy on encrypted inputs: [bold]{100 * summary['accuracy']:.2f}%[/]")


@encrypt_app.command("info")
@user_errors
def info_command(
    path: Annotated[Path, typer.Argument(help="A secret.ctx, public.ctx or .ct file.")],
    json_output: JsonOption = False,
) -> None:
    """Show a key or ciphertext file's header (checksum verified): kind, key fingerprint, keys and sizes."""
    from ramparts.protection.he_files import read_header

    header = read_header(path)
    summary = {
        "path": str(path),
        "bytes": path.stat().st_size,
        **{k: v for k, v in header.items() if k not in ("item_lengths", "payload_sha256")},
        "items": len(header["item_lengths"]),
        "bytes_per_item": sum(header["item_lengths"]) / len(header["item_lengths"]),
    }
    if json_output:
        print_json(summary)
        return
    table = Table(title=f"{escape(str(path))}: {header['kind']} (checksum ok)")
    table.add_column("field")
    table.add_column("value")
    table.add_row("fingerprint", header["fingerprint"][:16] + "...")
    table.add_row("size", f"{_size(summary['bytes'])} in {summary['items']} item(s)")
    if header["kind"] == "ciphertext":
        table.add_row("role / packing / inputs", f"{header['role']} / {header['packing']} / {header['n']}")
        table.add_row("bytes per input", _size(summary["bytes"] / max(int(header["n"]), 1)))
    else:
        for key, size in header.get("key_bytes", {}).items():
            table.add_row(f"{key} bytes", _size(size))
        if header.get("params"):
            table.add_row("parameters", escape(json.dumps(header["params"])))
    out.print(table)


def _load_program(path: str) -> tuple[HEProgram, dict[str, Any]]:
    """Compile the model at ``path`` (a polynomial model file, or any zoo model: ReLU ones are refused)."""
    from ramparts.protection.he_model import compile_model
    from ramparts.protection.poly import is_encryptable_file, load_encryptable
    from ramparts.zoo import load_model

    module: nn.Module
    if is_encryptable_file(path):
        module, meta = load_encryptable(path)
    else:
        module, meta = load_model(path)
    extra = meta.get("extra", {}) if isinstance(meta.get("extra"), dict) else {}
    shape = extra.get("input_shape")
    if shape is None:
        config = meta.get("config", {})
        if "in_channels" not in config or "input_size" not in config:
            raise invalid(
                "model",
                path,
                "a model whose JSON records its input shape",
                "save it with `ramparts encrypt train`",
            )
        shape = [config["in_channels"], config["input_size"], config["input_size"]]
    return compile_model(module, tuple(int(s) for s in shape)), meta


def _read_params(keys: Path) -> dict[str, Any]:
    file = keys / PARAMS_FILE
    if not file.is_file():
        raise invalid(
            "keys", str(keys), f"a key folder holding {PARAMS_FILE}", "run `ramparts encrypt keygen` first"
        )
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid("keys", str(file), "a JSON parameters file", f"re-run keygen ({exc})") from exc
    if not isinstance(info, dict) or not {"packing", "encoding", "input_shape"} <= set(info):
        raise invalid(
            "keys", str(file), "the params.json written by `ramparts encrypt keygen`", "re-run keygen"
        )
    return info


def _pick(spec: str, split: str, limit: int | None) -> Dataset:
    if split not in SPLITS:
        raise invalid("split", split, f"one of {', '.join(SPLITS)}")
    train_ds, test_ds = load_splits(spec)
    dataset: Dataset = test_ds if split == "test" else train_ds
    if limit is not None and limit < len(dataset):
        import torch

        dataset = dataset.subset(torch.arange(limit))
    return dataset


def _labels_path(out_file: Path) -> Path:
    return out_file.with_name(out_file.name + ".labels.json")


def _read_labels(file: Path, n: int) -> list[int]:
    try:
        labels = json.loads(file.read_text(encoding="utf-8")).get("labels")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise invalid(
            "labels", str(file), "the OUT.labels.json written by `encrypt encrypt`", str(exc)
        ) from exc
    if not isinstance(labels, list) or len(labels) != n:
        raise invalid(
            "labels",
            str(file),
            f"{n} labels (one per decrypted prediction)",
            "pass the labels file of the same `encrypt encrypt` run",
        )
    return [int(v) for v in labels]


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
