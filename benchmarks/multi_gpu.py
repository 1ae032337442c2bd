#!/usr/bin/env python
"""Scaling over GPUs: sharded robust-accuracy evaluation and shadow-model training on 1, 2, 4 devices.

For each g in `--gpus` (those above the visible count are skipped), one `DeviceExecutor` of g workers:

(a) evaluation: PGD-Linf (`--eps` 8/255, `--steps` 10, random start, early stopping off by default so that
    every image costs the same) against ResNet-18 on CIFAR-10 32x32, on N images (the CIFAR-10 test split
    tiled) in shards of `--shard-size`, through `ramparts.evasion.sharded.evaluate_sharded`. N is chosen so
    that g=1 takes about `--target-s` seconds (`--n 0`, measured on two shards in this process first), and
    rounded to a multiple of shards that every g divides. The model is trained here on the first
    `--train-n` test images (cached in `runs/bench/`), or `--model` names saved zoo files.
(b) shadow models: `train_shadows` of `--shadow-k` small_cnn models (each on half of the first
    `--shadow-n` CIFAR-10 test images, `--shadow-epochs` epochs) in chunks of `--shadow-chunk` models,
    the same total for every g.

Two figures per g and section: `end_to_end_s` = worker start-up (spawn, torch import, CUDA context) plus the
first run on the fresh workers (model load, first-call kernel selection included); `warm_s` = the same
run again on the same workers (start-up excluded). Speed-up and efficiency are against g=1, for both;
the issue's targets (>= 1.8x on 2 GPUs, >= 3.4x on 4) are judged on `warm_s`. Every g's merged result is
compared with g=1's: equal adversarial images and the same robust accuracy, exactly (evaluation workers
run with deterministic kernels, `ramparts.parallel.deterministic`, unless `--no-deterministic`; shadow
workers run PyTorch's defaults, as `benchmarks/shadow_training.py` does, and their weights' largest
difference from g=1's is reported for information).

    python benchmarks/multi_gpu.py --gpus 1,2,4 --json $OUT/multi_gpu.json           # H200 x4, ~5 min
    python benchmarks/multi_gpu.py --quick                                            # smoke test
    python benchmarks/multi_gpu.py --device cpu --quick --arch small_cnn --threads 1  # CPU workers

`--oracle-options '{"precision": "bf16"}'` and `--pgd-options '{"compaction": "off"}'` pass keyword
arguments to `TorchOracle` and PGD as they are.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from _common import ROOT, fmt, machine_info, machine_label, md_table
from ramparts import data as rdata
from ramparts import training, zoo
from ramparts.evasion import ATTACKS
from ramparts.evasion.sharded import robust_accuracy_curve
from ramparts.oracles import TorchOracle
from ramparts.parallel import DeviceExecutor, deterministic
from ramparts.privacy import ShadowRecipe, train_shadows
from ramparts.results import EvasionResult
from ramparts.threat import ThreatModel

TARGETS = {2: 1.8, 4: 3.4}  # issue 11 (2 GPUs) and issue 12 (4 GPUs), on warm_s


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def devices_for(args: argparse.Namespace, g: int) -> list[str]:
    return ["cpu"] * g if args.device == "cpu" else [f"cuda:{i}" for i in range(g)]


def worker_threads(args: argparse.Namespace, g: int) -> int:
    return args.threads or max(1, (os.cpu_count() or 1) // g)


def initializer(args: argparse.Namespace) -> Any:
    return deterministic if args.deterministic else None


# ------------------------------------------------------------------------------------------ model


def get_model(args: argparse.Namespace, test: rdata.Dataset) -> tuple[Path, dict[str, Any]]:
    """Saved zoo files of the evaluated model: `--model`, the cached one, or one trained now."""
    if args.model is not None:
        _, meta = zoo.load_model(args.model)
        return args.model, {"path": str(args.model), "given": True, "arch": meta["arch"]}
    config = {"in_channels": 3, "input_size": 32, "num_classes": 10}
    prefix = (
        ROOT / "runs" / "bench" / f"{args.arch}_cifar10_n{args.train_n}_e{args.train_epochs}_s{args.seed}"
    )
    if prefix.with_suffix(".json").is_file():
        _, meta = zoo.load_model(prefix)
        say(f"model: cached {prefix.name}")
        return prefix, {"path": str(prefix), "cached": True, **meta.get("extra", {})}
    device = "cuda:0" if args.device == "cuda" else "cpu"
    say(
        f"model: training {args.arch} on {args.train_n} CIFAR-10 test images for {args.train_epochs} epochs on {device}"
    )
    torch.manual_seed(args.seed)
    model = zoo.build(args.arch, **config)
    cfg = training.TrainConfig(
        epochs=args.train_epochs, batch_size=256, lr=1e-3, seed=args.seed, device=device
    )
    started = time.perf_counter()
    training.train(model, test.subset(range(args.train_n)), config=cfg, progress=False)
    held_out = test.subset(range(args.train_n, len(test)))
    extra = {
        "input_shape": [3, 32, 32],
        "train_seconds": round(time.perf_counter() - started, 1),
        "train_device": device,
        "train_config": cfg.to_dict(),
        "held_out_accuracy": training.evaluate(model, held_out, device=torch.device(device))
        if len(held_out)
        else None,
    }
    zoo.save_model(model.cpu(), prefix, arch=args.arch, config=config, extra=extra)
    say(f"model: {extra['train_seconds']} s, held-out accuracy {extra['held_out_accuracy']}")
    return prefix, {"path": str(prefix), "cached": False, **extra}


def images(test: rdata.Dataset, n: int) -> tuple[Tensor, Tensor]:
    """The first n images of the test split tiled as often as needed."""
    reps = math.ceil(n / len(test))
    return test.x.repeat(reps, 1, 1, 1)[:n].contiguous(), test.y.repeat(reps)[:n].contiguous()


def calibrate(args: argparse.Namespace, prefix: Path, test: rdata.Dataset, lcm: int) -> dict[str, Any]:
    """N for `--n 0`: time one warm shard in this process and scale it to `--target-s` for g=1."""
    device = "cuda:0" if args.device == "cuda" else "cpu"
    if args.deterministic:
        deterministic()
    model, _ = zoo.load_model(prefix)
    oracle = TorchOracle(model, input_shape=(3, 32, 32), device=device, **args.oracle_options)
    attack = ATTACKS.get("pgd")(steps=args.steps, **args.pgd_options)
    threat = ThreatModel(eps=args.eps[0])
    x, y = images(test, args.shard_size)
    times = []
    for _ in range(2):  # the first call loads kernels; the second is timed
        started = time.perf_counter()
        attack(oracle, x, y, threat, seed=args.seed, early_stop=args.early_stop)
        times.append(time.perf_counter() - started)
    rate = args.shard_size / times[1]
    block = args.shard_size * lcm
    n = block * max(1, min(math.ceil(rate * args.target_s / len(args.eps) / block), args.max_n // block))
    del oracle, model
    if args.device == "cuda":
        torch.cuda.empty_cache()
    say(f"calibration: {rate:.0f} images/s on one {device} -> N = {n} ({n // args.shard_size} shards)")
    return {"shard_s": times, "images_per_s": rate, "n": n}


# ------------------------------------------------------------------------------------- evaluation


def evaluate(
    args: argparse.Namespace, executor: DeviceExecutor, prefix: Path, x: Tensor, y: Tensor
) -> list[EvasionResult]:
    attack = ATTACKS.get("pgd")(steps=args.steps, **args.pgd_options)
    curve = robust_accuracy_curve(
        attack,
        prefix,
        x,
        y,
        ThreatModel(norm="linf"),
        args.eps,
        executor=executor,
        shard_size=args.shard_size,
        seed=args.seed,
        early_stop=args.early_stop,
        oracle_options=args.oracle_options,
    )
    return [result for _, result in curve]


def compare(results: list[EvasionResult], reference: list[EvasionResult]) -> dict[str, Any]:
    """How a run's merged results differ from g=1's (all zero and equal when exact)."""
    return {
        "x_adv_equal": all(torch.equal(a.x_adv, b.x_adv) for a, b in zip(results, reference, strict=True)),
        "robust_accuracy_equal": [
            a.robust_accuracy == b.robust_accuracy for a, b in zip(results, reference, strict=True)
        ],
        "max_abs_x_adv_diff": max(
            float((a.x_adv - b.x_adv).abs().max()) for a, b in zip(results, reference, strict=True)
        ),
        "adv_pred_mismatches": sum(
            int((a.adv_pred != b.adv_pred).sum()) for a, b in zip(results, reference, strict=True)
        ),
    }


def eval_section(
    args: argparse.Namespace, gpus: list[int], prefix: Path, x: Tensor, y: Tensor, out: dict[str, Any]
) -> None:
    over_gpu_counts(
        "eval", args, gpus, out, lambda g, reference: eval_run(args, g, prefix, x, y, reference, out)
    )


def over_gpu_counts(
    section: str,
    args: argparse.Namespace,
    gpus: list[int],
    out: dict[str, Any],
    run: Callable[[int, Any], Any],
) -> None:
    """`run(g, reference)` for each GPU count, the first run's result the reference of the others; a
    failing count is recorded in `out["errors"]` and the others go on; the JSON is rewritten after each."""
    reference = None
    for g in gpus:
        try:
            reference = run(g, reference)
        except Exception as exc:  # keep the other g's results
            say(f"{section} g={g} FAILED: {exc!r}")
            out["errors"].append({"section": section, "g": g, "error": repr(exc)})
        write(args, out)


def eval_run(
    args: argparse.Namespace,
    g: int,
    prefix: Path,
    x: Tensor,
    y: Tensor,
    reference: list[EvasionResult] | None,
    out: dict[str, Any],
) -> list[EvasionResult]:
    """One g: start-up, a cold and a warm evaluation; returns the reference for the next g."""
    devices = devices_for(args, g)
    say(f"eval g={g}: starting {devices}")
    started = time.perf_counter()
    with DeviceExecutor(devices, threads=worker_threads(args, g), initializer=initializer(args)) as executor:
        executor.wait_ready()
        startup = time.perf_counter() - started
        say(f"eval g={g}: workers ready in {startup:.1f} s; cold run")
        t0 = time.perf_counter()
        cold = evaluate(args, executor, prefix, x, y)
        cold_s = time.perf_counter() - t0
        say(f"eval g={g}: cold {cold_s:.1f} s; warm run")
        t0 = time.perf_counter()
        warm = evaluate(args, executor, prefix, x, y)
        warm_s = time.perf_counter() - t0
        workers = executor.workers
    reference = reference or warm
    row = {
        "g": g,
        "devices": devices,
        "workers": workers,
        "startup_s": startup,
        "cold_s": cold_s,
        "end_to_end_s": startup + cold_s,
        "warm_s": warm_s,
        "images_per_s_warm": len(x) * len(args.eps) / warm_s,
        "images_per_s_end_to_end": len(x) * len(args.eps) / (startup + cold_s),
        "shard_attack_s_sum": sum(r.elapsed_s for r in warm),
        "warm_over_in_process": (
            len(x) * len(args.eps) / warm_s / out["calibration"]["images_per_s"]
            if "images_per_s" in out["calibration"]
            else None
        ),
        "clean_accuracy": warm[0].clean_accuracy,
        "robust_accuracy": [r.robust_accuracy for r in warm],
        "queries_total": [int(r.queries.sum()) for r in warm],
        "cold_equals_warm": compare(cold, warm)["x_adv_equal"],
        "vs_g1": compare(warm, reference),
    }
    out["eval"].append(row)
    say(
        f"eval g={g}: warm {warm_s:.1f} s ({row['images_per_s_warm']:.0f} images/s), robust accuracy "
        f"{row['robust_accuracy']}, equal to g=1: {row['vs_g1']['x_adv_equal']}"
    )
    return reference


# ---------------------------------------------------------------------------------------- shadows


def shadow_section(
    args: argparse.Namespace, gpus: list[int], test: rdata.Dataset, out: dict[str, Any]
) -> None:
    data = test.subset(range(args.shadow_n))
    recipe = ShadowRecipe(
        args.shadow_arch,
        {},
        epochs=args.shadow_epochs,
        batch_size=128,
        lr=1e-3,
        precision=args.shadow_precision,
    )
    device = "cuda" if args.device == "cuda" else "cpu"
    over_gpu_counts(
        "shadows",
        args,
        gpus,
        out,
        lambda g, reference: shadow_run(args, g, data, recipe, device, reference, out),
    )


def shadow_run(
    args: argparse.Namespace,
    g: int,
    data: rdata.Dataset,
    recipe: ShadowRecipe,
    device: str,
    reference: list[dict[str, Tensor]] | None,
    out: dict[str, Any],
) -> list[dict[str, Tensor]]:
    """One g: start-up, a cold and a warm training of the same models; returns the reference states."""
    devices = devices_for(args, g)
    say(f"shadows g={g}: starting {devices}")
    started = time.perf_counter()
    with DeviceExecutor(devices, threads=worker_threads(args, g), initializer=None) as executor:
        executor.wait_ready()
        startup = time.perf_counter() - started
        runs = []
        for _ in ("cold", "warm"):
            t0 = time.perf_counter()
            pool = train_shadows(
                data,
                args.shadow_k,
                recipe,
                seed=args.seed,
                device=device,
                executor=executor,
                chunk=args.shadow_chunk,
            )
            runs.append((time.perf_counter() - t0, pool.states))
            say(f"shadows g={g}: {runs[-1][0]:.1f} s")
    (cold_s, _), (warm_s, states) = runs
    reference = reference or states
    diff = max(float((a[k] - b[k]).abs().max()) for a, b in zip(states, reference, strict=True) for k in a)
    out["shadows"].append(
        {
            "g": g,
            "devices": devices,
            "startup_s": startup,
            "cold_s": cold_s,
            "end_to_end_s": startup + cold_s,
            "warm_s": warm_s,
            "models_per_min_warm": 60 * args.shadow_k / warm_s,
            "max_abs_weight_diff_vs_g1": diff,
        }
    )
    return reference


# -------------------------------------------------------------------------------------- reporting


def add_scaling(rows: list[dict[str, Any]]) -> None:
    """Speed-up and efficiency against the g=1 row, for both figures."""
    base = next((r for r in rows if r["g"] == 1), None)
    for row in rows:
        for figure in ("warm_s", "end_to_end_s"):
            speedup = base[figure] / row[figure] if base else None
            row[f"speedup_{figure[:-2]}"] = speedup
            row[f"efficiency_{figure[:-2]}"] = speedup / row["g"] if speedup else None


def targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    for section in ("eval", "shadows"):
        for row in out[section]:
            if row["g"] in TARGETS and row.get("speedup_warm") is not None:
                checks.append(
                    {
                        "section": section,
                        "g": row["g"],
                        "target": TARGETS[row["g"]],
                        "speedup_warm": row["speedup_warm"],
                        "met": row["speedup_warm"] >= TARGETS[row["g"]],
                    }
                )
    for row in out["eval"]:
        checks.append(
            {
                "section": "eval",
                "g": row["g"],
                "exact_vs_g1": row["vs_g1"]["x_adv_equal"],
                "met": row["vs_g1"]["x_adv_equal"],
            }
        )
    return checks


def table(out: dict[str, Any]) -> str:
    head = [
        "section",
        "g",
        "start-up s",
        "end-to-end s",
        "warm s",
        "speed-up warm",
        "eff. warm",
        "speed-up e2e",
        "eff. e2e",
        "check",
    ]
    body = []
    for section in ("eval", "shadows"):
        for r in out[section]:
            check = (
                f"robust acc {r['robust_accuracy']}, exact vs g=1: {r['vs_g1']['x_adv_equal']}"
                if section == "eval"
                else f"max weight diff vs g=1 {r['max_abs_weight_diff_vs_g1']:.1e}"
            )
            body.append(
                [
                    section,
                    str(r["g"]),
                    fmt(r["startup_s"], ".1f"),
                    fmt(r["end_to_end_s"], ".1f"),
                    fmt(r["warm_s"], ".1f"),
                    fmt(r.get("speedup_warm"), ".2f") + "x",
                    fmt(r.get("efficiency_warm"), ".0%"),
                    fmt(r.get("speedup_end_to_end"), ".2f") + "x",
                    fmt(r.get("efficiency_end_to_end"), ".0%"),
                    check,
                ]
            )
    return f"{machine_label(out['machine'])}\n\n" + md_table(head, body)


def write(args: argparse.Namespace, out: dict[str, Any]) -> None:
    for section in ("eval", "shadows"):
        add_scaling(out[section])
    out["targets"] = targets(out)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: g CPU workers (a check)")
    p.add_argument("--gpus", type=ints, default=[1, 2, 4], help="worker counts, e.g. 1,2,4")
    p.add_argument("--quick", action="store_true", help="tiny settings: a smoke test of the whole script")
    p.add_argument("--json", type=Path, default=None, help="default: $OUT/multi_gpu.json when $OUT is set")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: cores / g)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-deterministic", dest="deterministic", action="store_false")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--skip-shadows", action="store_true")
    e = p.add_argument_group("evaluation")
    e.add_argument("--model", type=Path, default=None, help="saved zoo model (else trained and cached)")
    e.add_argument("--arch", default="resnet18", choices=sorted(zoo.ARCHITECTURES))
    e.add_argument("--train-n", type=int, default=9000)
    e.add_argument("--train-epochs", type=int, default=15)
    e.add_argument(
        "--eps", type=lambda s: s.split(","), default=["8/255"], help="one or more, comma-separated"
    )
    e.add_argument("--steps", type=int, default=10)
    e.add_argument("--early-stop", action="store_true", help="stop samples once fooled (cost then varies)")
    e.add_argument("--n", type=int, default=0, help="images; 0: enough for --target-s at g=1")
    e.add_argument("--target-s", type=float, default=20.0, help="g=1's evaluation time that --n 0 aims at")
    e.add_argument("--max-n", type=int, default=250_000, help="cap on the N that --n 0 picks")
    e.add_argument("--shard-size", type=int, default=2500)
    e.add_argument(
        "--oracle-options", type=json.loads, default={}, help="JSON: TorchOracle keyword arguments"
    )
    e.add_argument("--pgd-options", type=json.loads, default={}, help="JSON: PGD keyword arguments")
    s = p.add_argument_group("shadow models")
    s.add_argument("--shadow-k", type=int, default=64)
    s.add_argument("--shadow-chunk", type=int, default=16, help="models per task")
    s.add_argument("--shadow-arch", default="small_cnn", choices=sorted(zoo.ARCHITECTURES))
    s.add_argument("--shadow-n", type=int, default=10000, help="records; each model trains on half")
    s.add_argument("--shadow-epochs", type=int, default=10)
    s.add_argument("--shadow-precision", choices=("fp32", "bf16"), default="fp32")
    args = p.parse_args(argv)
    if args.quick:
        args.train_n, args.train_epochs, args.steps = min(args.train_n, 2000), 2, 3
        args.shard_size, args.target_s = min(args.shard_size, 256), 2.0
        args.shadow_k, args.shadow_chunk, args.shadow_n, args.shadow_epochs = 8, 2, 1000, 1
    if args.json is None and os.environ.get("OUT"):
        args.json = Path(os.environ["OUT"]) / "multi_gpu.json"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here (use --device cpu for CPU workers)")
    if 1 not in args.gpus:
        p.error("--gpus must include 1: speed-ups are against g=1")
    if args.shadow_k % args.shadow_chunk:
        p.error("--shadow-k must be a multiple of --shadow-chunk (equal tasks)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.deterministic:
        os.environ.setdefault(
            "CUBLAS_WORKSPACE_CONFIG", ":4096:8"
        )  # before any cuBLAS call, workers inherit it
    visible = torch.cuda.device_count() if args.device == "cuda" else max(args.gpus)
    gpus = [g for g in args.gpus if g <= visible]
    skipped = [g for g in args.gpus if g > visible]
    if skipped:
        say(f"skipping g={skipped}: {visible} device(s) visible")
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    info = machine_info(device, peers=())
    info["gpu_count"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if Path("/dev/shm").is_dir():  # tensors travel to and from the workers through shared memory
        info["dev_shm_gib"] = round(shutil.disk_usage("/dev/shm").total / 2**30, 1)
    test = rdata.load_shared("cifar10")
    out: dict[str, Any] = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "gpus_run": gpus,
        "gpus_skipped": skipped,
        "machine": info,
        "eval": [],
        "shadows": [],
        "errors": [],
        "figures": {
            "startup_s": "DeviceExecutor construction until every worker is ready (spawn, torch import, CUDA context)",
            "end_to_end_s": "startup_s + the first run on the fresh workers (model load, first-call kernels)",
            "warm_s": "the same run again on the same workers: start-up excluded; targets are judged on it",
            "warm_over_in_process": "warm images/s over the calibration's (one warm shard attacked in this process)",
        },
    }
    say(f"{machine_label(info)}; running g={gpus}")
    if not args.skip_eval:
        prefix, out["model"] = get_model(args, test)
        lcm = math.lcm(*gpus)
        if args.n:
            n = math.ceil(args.n / (args.shard_size * lcm)) * args.shard_size * lcm
            out["calibration"] = {"n": n}
        else:
            out["calibration"] = calibrate(args, prefix, test, lcm)
            n = out["calibration"]["n"]
        x, y = images(test, n)
        out["n_images"] = n
        eval_section(args, gpus, prefix, x, y, out)
    if not args.skip_shadows:
        shadow_section(args, gpus, test, out)
    write(args, out)
    print(table(out), flush=True)
    for check in out["targets"]:
        say(f"target {check}")
    if args.json is not None:
        say(f"wrote {args.json}")


if __name__ == "__main__":
    main()
