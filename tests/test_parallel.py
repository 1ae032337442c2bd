"""Tests for ramparts.parallel: the in-process executor, executor_for's errors, and Ray on a real cluster.

The ``ray`` tests start a two-node cluster on 127.0.0.1 with the ``ray start`` CLI (a head and one
worker node, one CPU each). The task functions below are module-level functions of this module, so Ray
pickles them by reference: the workers import ``tests.test_parallel``, which the driver ships to them
with ``runtime_env={"py_modules": [<this tests folder>]}`` (the way a user ships code a node lacks).
On one host the workers would also find it without that, since Ray puts the driver's current directory
on their path; on a cluster of several machines that directory does not exist, so the tests do what
works there.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ramparts import parallel, zoo
from ramparts.data import load_digits
from ramparts.errors import RampartsError, RampartsTypeError, ValidationError
from ramparts.parallel import (
    ClusterError,
    InProcessExecutor,
    RayExecutor,
    RayUnavailableError,
    executor_for,
)
from ramparts.training import TrainConfig, train

TESTS_DIR = Path(__file__).resolve().parent
RAY = Path(sys.executable).with_name("ray")


def square(x: int) -> int:
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"three is not allowed, got {x}")
    return x


def train_mlp(seed: int) -> dict[str, torch.Tensor]:
    """A shadow-model-like task: train a small MLP on digits for one epoch, deterministically."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same thread count in the driver and in a Ray worker
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = zoo.build("mlp", in_channels=1, input_size=8, num_classes=10, hidden=(32,))
            config = TrainConfig(epochs=1, batch_size=64, lr=1e-2, seed=seed, device="cpu")
            train(model, load_digits(), config=config, progress=False)
    finally:
        torch.set_num_threads(threads)
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def where(x: int) -> tuple[int, str, int]:
    """``x * x`` with the Ray node id and worker pid that computed it; busy long enough to spread."""
    import ray

    time.sleep(0.5)
    return x * x, ray.get_runtime_context().get_node_id(), os.getpid()


def sleep_then_return(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _ray_cli(*args: str, env: dict[str, str]) -> None:
    """Run ``ray ARGS``; on failure, fail with Ray's own output."""
    done = subprocess.run([str(RAY), *args], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"ray {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- in-process (default run)


def test_in_process_yields_every_index_and_result() -> None:
    executor = InProcessExecutor()
    assert executor.name == "in-process"
    assert list(executor.map(square, [3, 1, 4, 1, 5])) == [(0, 9), (1, 1), (2, 16), (3, 1), (4, 25)]
    assert list(executor.map(square, [])) == []
    executor.close()


def test_in_process_yields_each_result_before_running_the_next_task() -> None:
    calls: list[int] = []

    def record(x: int) -> int:
        calls.append(x)
        return x

    stream = InProcessExecutor().map(record, [0, 1, 2])
    assert next(stream) == (0, 0)
    assert calls == [0]


def test_in_process_exception_propagates_naming_the_item() -> None:
    results: list[tuple[int, int]] = []
    with pytest.raises(ValueError, match="three is not allowed") as info:
        results.extend(InProcessExecutor().map(fail_on_three, [1, 2, 3, 4]))
    assert results == [(0, 1), (1, 2)]
    assert info.value.__notes__ == ["parallel task 2 failed on item 3"]


@pytest.mark.parametrize(
    ("num_cpus", "num_gpus"), [(-1, 0), (1, -0.5), (True, 0), ("1", 0), (float("nan"), 0)]
)
def test_resources_are_checked(num_cpus: object, num_gpus: object) -> None:
    with pytest.raises(ValidationError, match=r"num_[cg]pus"):
        InProcessExecutor().map(square, [1], num_cpus=num_cpus, num_gpus=num_gpus)  # type: ignore[arg-type]


def test_ray_refuses_lambdas_and_nested_functions() -> None:
    def nested(x: int) -> int:
        return x

    executor = RayExecutor.__new__(RayExecutor)  # not connected: the check comes before any Ray call
    for fn in (nested, lambda x: x):
        with pytest.raises(RampartsTypeError, match=r"^fn: expected a function defined at module level"):
            executor.map(fn, [1])


def test_executor_for_none_runs_in_process() -> None:
    executor = executor_for(None)
    assert isinstance(executor, InProcessExecutor)
    assert dict(executor.map(square, range(4))) == {0: 0, 1: 1, 2: 4, 3: 9}


def test_importing_parallel_does_not_import_ray() -> None:
    code = "import sys, ramparts.parallel; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("address", ["auto", "127.0.0.1:6379", "ray://head:10001"])
def test_executor_for_without_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(RayUnavailableError, match=r"--ray.*pip install 'ramparts\[ray\]'") as info:
        executor_for(address)
    assert isinstance(info.value, ImportError)
    assert isinstance(info.value.__cause__, ImportError)


@pytest.mark.parametrize(
    "address", ["", "localhost", "http://h:1", "h:port", "ray://h", "h:70000", "h:0", "a b:1", 6379]
)
def test_bad_address_is_refused_naming_ray_and_the_forms(address: object) -> None:
    with pytest.raises(ValidationError, match=r"^--ray: expected .*'auto'|^--ray: expected a port"):
        executor_for(address)  # type: ignore[arg-type]


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_unreachable_cluster_is_a_clear_error(scheme: str) -> None:
    address = f"{scheme}127.0.0.1:{_free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(ClusterError, match=r"--ray: expected the address of a running Ray cluster") as info:
        RayExecutor(address)
    assert time.monotonic() - started < 10
    assert "ray start --head" in str(info.value)
    assert "ray status" in str(info.value)
    assert isinstance(info.value, RampartsError)
    assert isinstance(info.value, ConnectionError)
    assert isinstance(info.value.__cause__, OSError)


def test_auto_without_a_cluster_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    message = "Could not find any running Ray instance."  # what ray.init(address="auto") raises then

    def no_cluster(**kwargs: object) -> None:
        raise ConnectionError(message)

    monkeypatch.setattr(ray, "init", no_cluster)
    with pytest.raises(ClusterError, match=r"^--ray: expected the address of a running Ray cluster") as info:
        executor_for("auto")
    assert "ray start --head" in str(info.value)
    assert str(info.value.__cause__) == message


# ---------------------------------------------------------------- a real two-node Ray cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayExecutor]:
    """A head and a worker node on 127.0.0.1 (one CPU each), and a RayExecutor connected to them.

    Two ``ray start`` on one host work as they are in Ray 2.60: each node picks free ports for its raylet,
    object manager and agents, and both share the default temp dir (as ``ray.cluster_utils.Cluster``
    does). Teardown runs ``ray stop --force``, which stops every Ray process of this user on the machine.
    """
    port = _free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"]
    executor: RayExecutor | None = None
    try:
        _ray_cli("start", "--head", f"--port={port}", "--include-dashboard=false", *common, env=env)
        _ray_cli("start", f"--address=127.0.0.1:{port}", *common, env=env)
        executor = RayExecutor(f"127.0.0.1:{port}", runtime_env={"py_modules": [str(TESTS_DIR)]})
        import ray

        deadline = time.monotonic() + 30
        while sum(node["Alive"] for node in ray.nodes()) < 2:
            assert time.monotonic() < deadline, f"the worker node did not join: {ray.nodes()}"
            time.sleep(0.2)
        yield executor
    finally:
        if executor is not None:
            executor.close()
        _ray_cli("stop", "--force", env=env)


@pytest.mark.ray
def test_ray_results_equal_in_process_results(cluster: RayExecutor) -> None:
    items = list(range(10))
    on_ray = list(cluster.map(square, items))
    assert sorted(i for i, _ in on_ray) == items
    assert dict(on_ray) == dict(InProcessExecutor().map(square, items))


@pytest.mark.ray
def test_ray_trained_weights_equal_in_process_weights(cluster: RayExecutor) -> None:
    seeds = [0, 1]
    on_ray = dict(cluster.map(train_mlp, seeds))
    here = dict(InProcessExecutor().map(train_mlp, seeds))
    assert sorted(on_ray) == [0, 1]
    for i in range(len(seeds)):
        assert on_ray[i].keys() == here[i].keys()
        for name in here[i]:
            assert torch.equal(on_ray[i][name], here[i][name]), name
    assert not torch.equal(here[0]["net.1.weight"], here[1]["net.1.weight"])  # the seed matters


@pytest.mark.ray
def test_ray_tasks_run_on_both_nodes(cluster: RayExecutor) -> None:
    import ray

    results = dict(cluster.map(where, range(6)))
    assert sorted(results) == list(range(6))
    assert [results[i][0] for i in range(6)] == [i * i for i in range(6)]
    alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert {node for _, node, _ in results.values()} == alive
    assert len(alive) == 2
    assert os.getpid() not in {pid for _, _, pid in results.values()}


@pytest.mark.ray
def test_ray_yields_in_completion_order(cluster: RayExecutor) -> None:
    order = [i for i, _ in cluster.map(sleep_then_return, [3.0, 0.0, 0.0, 0.0])]
    assert sorted(order) == [0, 1, 2, 3]
    assert order[-1] == 0  # the slow first task finishes last; the others were yielded before it


@pytest.mark.ray
def test_ray_exception_propagates_naming_the_item(cluster: RayExecutor) -> None:
    with pytest.raises(ValueError, match="three is not allowed") as info:
        list(cluster.map(fail_on_three, [1, 3, 5]))
    assert info.value.__notes__ == ["parallel task 1 failed on item 3"]
    assert "fail_on_three" in str(info.value)  # the remote traceback is kept


@pytest.mark.ray
def test_second_connection_in_one_process_is_refused(cluster: RayExecutor) -> None:
    with pytest.raises(ClusterError, match="close the other RayExecutor"):
        RayExecutor(cluster.address)


def test_module_exports_the_documented_api() -> None:
    assert {"Executor", "InProcessExecutor", "RayExecutor", "executor_for"} <= set(parallel.__all__)


@pytest.mark.ray
def test_shadow_models_trained_on_ray_equal_in_process(cluster: RayExecutor, tmp_path: Path) -> None:
    from ramparts.data import load_digits
    from ramparts.privacy import ShadowRecipe, train_shadows

    ds = load_digits().subset(range(300))
    recipe = ShadowRecipe("mlp", {"hidden": [16]}, epochs=2, batch_size=64, lr=1e-3)
    here = train_shadows(ds, 4, recipe, seed=3, chunk=1)
    on_ray = train_shadows(ds, 4, recipe, seed=3, chunk=1, executor=cluster, run_dir=tmp_path)
    assert torch.equal(here.masks, on_ray.masks)
    for a, b in zip(here.states, on_ray.states, strict=True):
        for name in a:
            assert torch.equal(a[name], b[name]), name
    assert len(list(tmp_path.glob("shadow-*.safetensors"))) == 4, "each model saved as its task finished"
