#!/usr/bin/env python
"""Shadow-model training over Ray: one node vs two nodes, against the in-process executor.

Starts a real Ray cluster on 127.0.0.1 with the `ray` CLI: a head node with `--cpus-per-node` CPUs, times
`privacy.shadow.train_shadows` (K models, one per task) through `RayExecutor`, adds a worker node with as many
CPUs, times it again, and stops the cluster (`ray stop --force`, which stops every Ray process of this user).
The in-process executor on the same data is the baseline; the weights trained on Ray are checked to equal it.
On one host the two "nodes" share its cores: this measures the executor and Ray's overhead, and how work
spreads to a second node, not a second machine's hardware.

    python benchmarks/ray_shadows.py --k 8 --cpus-per-node 1 --json benchmarks/ray_shadows.cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from _common import machine_info
from ramparts import data as rdata
from ramparts.parallel import Executor, InProcessExecutor, RayExecutor
from ramparts.privacy import ShadowPool, ShadowRecipe, train_shadows

RAY = Path(sys.executable).with_name("ray")


def ray_cli(*args: str) -> None:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([str(RAY), *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"ray {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def timed_pool(executor: Executor, args: argparse.Namespace, data: rdata.Dataset) -> tuple[float, ShadowPool]:
    recipe = ShadowRecipe(args.arch, {}, epochs=args.epochs, batch_size=64, lr=2e-3)
    t0 = time.perf_counter()
    pool = train_shadows(data, args.k, recipe, seed=0, chunk=1, executor=executor)
    return time.perf_counter() - t0, pool


def same(a: ShadowPool, b: ShadowPool) -> bool:
    return all(torch.equal(x[n], y[n]) for x, y in zip(a.states, b.states, strict=True) for n in x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--arch", default="small_cnn")
    p.add_argument("--cpus-per-node", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    data = rdata.load_digits()
    torch.set_num_threads(args.cpus_per_node)  # what one Ray task gets (Ray sets OMP_NUM_THREADS = num_cpus)
    rows: list[dict[str, Any]] = []
    base_s, base = timed_pool(InProcessExecutor(), args, data)
    rows.append({"executor": "in-process", "nodes": 1, "seconds": base_s, "equal_to_in_process": True})
    print(f"in-process ({args.cpus_per_node} thread): {base_s:.1f} s", flush=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    common = [
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={args.cpus_per_node}",
        "--num-gpus=0",
        "--disable-usage-stats",
    ]
    try:
        ray_cli("start", "--head", f"--port={port}", "--include-dashboard=false", *common)
        executor = RayExecutor(f"127.0.0.1:{port}")
        for nodes in (1, 2):
            if nodes == 2:
                ray_cli("start", f"--address=127.0.0.1:{port}", *common)
                import ray

                while sum(n["Alive"] for n in ray.nodes()) < 2:
                    time.sleep(0.2)
            timed_pool(executor, argparse.Namespace(**{**vars(args), "k": nodes}), data)  # warm the workers
            seconds, pool = timed_pool(executor, args, data)
            rows.append(
                {
                    "executor": "ray",
                    "nodes": nodes,
                    "seconds": seconds,
                    "equal_to_in_process": same(pool, base),
                }
            )
            print(
                f"ray, {nodes} node(s): {seconds:.1f} s, equal: {rows[-1]['equal_to_in_process']}", flush=True
            )
        executor.close()
    finally:
        ray_cli("stop", "--force")
    one, two = rows[1]["seconds"], rows[2]["seconds"]
    result = {
        "settings": vars(args) | {"json": None, "records": len(data)},
        "machine": machine_info(torch.device("cpu"), peers=()),
        "rows": rows,
        "two_over_one_node_speedup": one / two,
    }
    print(f"2 nodes vs 1: {one / two:.2f}x; 1 node vs in-process: {base_s / one:.2f}x", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
