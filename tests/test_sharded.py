"""DeviceExecutor with CPU workers, sharded evaluation and shadow training through it (CPU only).

Workers are spawned processes: the task functions below live at module level so that they import by
name. Every executor here uses one torch thread per worker, as the session does (results are compared
bit for bit with runs in this process).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ramparts import zoo
from ramparts.data import load_digits
from ramparts.errors import RampartsTypeError, ValidationError
from ramparts.evasion import ATTACKS
from ramparts.evasion.sharded import ZooModel, evaluate_sharded, robust_accuracy_curve
from ramparts.oracles import TorchOracle
from ramparts.parallel import (
    DeviceExecutor,
    InProcessExecutor,
    TaskError,
    devices,
    executor_for,
    worker_device,
)
from ramparts.privacy import ShadowRecipe, train_shadows
from ramparts.threat import ThreatModel
from ramparts.training import TrainConfig, train

from .test_parallel import fail_on_three, square

CONFIG = {"in_channels": 1, "input_size": 8, "num_classes": 10, "width": 8, "hidden": 32}


def die(code: int) -> int:
    os._exit(code)


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def whoami(_: object) -> tuple[str, int, bool, int]:
    """The worker's device, pid, whether deterministic kernels are on, and its torch threads."""
    return (
        str(worker_device()),
        os.getpid(),
        torch.are_deterministic_algorithms_enabled(),
        torch.get_num_threads(),
    )


def ones(n: int) -> dict[str, torch.Tensor]:
    return {"ones": torch.ones(n), "grad": torch.ones(n, requires_grad=True) * 2}


def broken_start() -> None:
    raise RuntimeError("no licence for this worker")


@pytest.fixture(scope="module")
def workers() -> Iterator[DeviceExecutor]:
    with DeviceExecutor(["cpu", "cpu"], threads=1) as executor:
        yield executor.wait_ready()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """A small_cnn trained briefly on digits, saved as zoo files, and 70 held-out digits."""
    ds = load_digits()
    torch.manual_seed(0)
    model = zoo.build("small_cnn", **CONFIG)
    train(model, ds.subset(range(1400)), config=TrainConfig(epochs=3, lr=3e-3, device="cpu"), progress=False)
    prefix = tmp_path_factory.mktemp("model") / "digits"
    zoo.save_model(model, prefix, arch="small_cnn", config=CONFIG, extra={"input_shape": [1, 8, 8]})
    return prefix, ds.x[1400:1470].contiguous(), ds.y[1400:1470].contiguous()


# ---------------------------------------------------------------- DeviceExecutor


def test_workers_start_on_their_devices_and_map_every_item(workers: DeviceExecutor) -> None:
    assert workers.devices == ["cpu", "cpu"]
    assert [w["name"] for w in workers.workers] == ["cpu", "cpu"]
    pids = {w["pid"] for w in workers.workers}
    assert len(pids) == 2
    assert os.getpid() not in pids
    assert dict(workers.map(square, range(7))) == {i: i * i for i in range(7)}
    seen = dict(workers.map(whoami, range(4)))
    assert {device for device, *_ in seen.values()} == {"cpu"}
    assert {pid for _, pid, *_ in seen.values()} <= pids
    assert {threads for *_, threads in seen.values()} == {1}
    assert worker_device() is None  # not in a worker


def test_results_come_back_as_owned_cpu_tensors(workers: DeviceExecutor) -> None:
    [(_, result)] = list(workers.map(ones, [5]))
    assert torch.equal(result["ones"], torch.ones(5))
    assert torch.equal(result["grad"], torch.full((5,), 2.0))
    assert not result["grad"].requires_grad
    assert not any(t.is_shared() for t in result.values())


def test_tasks_are_dealt_to_whichever_worker_is_free(workers: DeviceExecutor) -> None:
    started = time.monotonic()
    order = [i for i, _ in workers.map(nap, [1.0, 0.1, 0.1, 0.1, 0.1, 0.1])]
    assert time.monotonic() - started < 1.8  # the slow task ran beside the short ones
    assert order.index(0) >= 4  # only the task sent ahead to its worker waited for it
    with DeviceExecutor(["cpu", "cpu"], threads=1, prefetch=0) as free_first:
        assert [i for i, _ in free_first.map(nap, [1.0, 0.1, 0.1, 0.1])][-1] == 0


def test_a_failed_task_is_a_task_error_naming_task_device_and_cause(workers: DeviceExecutor) -> None:
    with pytest.raises(
        TaskError, match=r"^parallel task 1 failed on cpu \(item 3\): ValueError: three"
    ) as info:
        list(workers.map(fail_on_three, [1, 3, 5]))
    assert "worker traceback" in str(info.value)
    assert "fail_on_three" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)
    assert dict(workers.map(square, [2, 3])) == {0: 4, 1: 9}  # the executor goes on


def test_stopping_early_drops_the_running_tasks_results(workers: DeviceExecutor) -> None:
    stream = workers.map(nap, [0.0, 0.6, 0.6])
    assert next(stream)[0] == 0
    stream.close()
    assert dict(workers.map(square, range(4))) == {0: 0, 1: 1, 2: 4, 3: 9}


def test_map_refuses_bad_functions_and_gpu_tasks_on_cpu_workers(workers: DeviceExecutor) -> None:
    with pytest.raises(RampartsTypeError, match=r"^fn: expected a function defined at module level"):
        workers.map(lambda v: v, [1])
    with pytest.raises(ValidationError, match=r"^num_gpus: expected 0 for a DeviceExecutor with CPU workers"):
        workers.map(square, [1], num_gpus=1)


def test_a_dead_worker_is_reported_and_the_others_carry_on() -> None:
    with DeviceExecutor(["cpu", "cpu"], threads=1) as executor:
        with pytest.raises(TaskError, match=r"^parallel task 0 on cpu: its worker died \(.*exit code 7\)"):
            list(executor.map(die, [7]))
        assert dict(executor.map(square, range(3))) == {0: 0, 1: 1, 2: 4}
        procs = list(executor._procs)
    assert [p.exitcode for p in procs].count(0) == 1  # the survivor stopped cleanly on close
    with pytest.raises(ValidationError, match="closed DeviceExecutor"):
        executor.map(square, [1])


def test_initializer_runs_in_each_worker_and_a_failing_start_is_named() -> None:
    from ramparts.parallel import deterministic

    with DeviceExecutor(["cpu"], threads=1, initializer=deterministic) as executor:
        [(_, (device, _, strict, _))] = list(executor.map(whoami, [0]))
    assert device == "cpu"
    assert strict
    broken = DeviceExecutor(["cpu"], threads=1, initializer=broken_start)
    with pytest.raises(TaskError, match=r"^the worker for cpu failed to start: RuntimeError: no licence"):
        broken.wait_ready()


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ([], r"^devices: expected 'all' or a non-empty list"),
        (["gpu"], r"^devices: expected 'all' or a non-empty list"),
        ("cpu", r"^devices: expected 'all' or a non-empty list"),
        (["cuda:99"], r"^devices: expected a CUDA device below cuda:"),
    ],
)
def test_bad_devices_are_refused(devices: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DeviceExecutor(devices)  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_all_without_a_gpu_says_what_to_do() -> None:
    with pytest.raises(ValidationError, match=r"pass \['cpu', 'cpu'\] for CPU workers"):
        DeviceExecutor("all")
    with pytest.raises(ValidationError, match=r"^--ray: expected a visible CUDA GPU"):
        executor_for("gpus")


def test_each_gpu_worker_sees_only_its_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment a worker starts with (GPU workers cannot start here: no GPU)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert devices._worker_environ("cuda:1", 4) == {
        "CUDA_VISIBLE_DEVICES": "1",
        "OMP_NUM_THREADS": "4",
        "MKL_NUM_THREADS": "4",
    }
    assert devices._worker_environ("cpu", 1)["CUDA_VISIBLE_DEVICES"] == ""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, GPU-5e1f")  # cuda:N is the Nth GPU this process sees
    assert devices._worker_environ("cuda:0", 1)["CUDA_VISIBLE_DEVICES"] == "3"
    assert devices._worker_environ("cuda:1", 1)["CUDA_VISIBLE_DEVICES"] == "GPU-5e1f"


def test_starting_workers_leaves_this_process_environment_alone() -> None:
    before = dict(os.environ)
    executor = DeviceExecutor(["cpu"], threads=1)
    try:
        assert dict(os.environ) == before
    finally:
        executor.close()


@pytest.mark.parametrize("spec", ["cpus", "cpus:0", "gpus:0"])
def test_executor_for_device_forms_need_a_count(spec: str) -> None:
    with pytest.raises(ValidationError, match=r"^--ray: expected 'gpus', 'gpus:N' or 'cpus:N'"):
        executor_for(spec)


def test_executor_for_cpus_gives_cpu_workers() -> None:
    executor = executor_for("cpus:1")
    try:
        assert isinstance(executor, DeviceExecutor)
        assert executor.devices == ["cpu"]
    finally:
        executor.close()


# ---------------------------------------------------------------- sharded evaluation


def test_sharded_evaluation_equals_the_single_process_run(
    saved: tuple[Path, torch.Tensor, torch.Tensor], workers: DeviceExecutor
) -> None:
    prefix, x, y = saved
    attack = ATTACKS.get("pgd")(steps=5)
    threat = ThreatModel(eps=0.1)
    model, _ = zoo.load_model(prefix)
    reference = attack(TorchOracle(model, input_shape=(1, 8, 8)), x, y, threat, seed=4, batch_size=24)
    assert 0 < reference.success_rate < 1, "the test needs both outcomes"
    finished: list[int] = []
    sharded = evaluate_sharded(
        attack,
        prefix,
        x,
        y,
        threat,
        shard_size=24,
        executor=workers,
        seed=4,
        on_shard=lambda i, r: finished.append(i),
    )
    assert sorted(finished) == [0, 1, 2]  # 70 images: shards of 24, 24, 22
    for name in ("x_adv", "success", "queries", "backwards", "adv_pred", "clean_pred", "labels"):
        assert torch.equal(getattr(sharded, name), getattr(reference, name)), name
    assert sharded.robust_accuracy == reference.robust_accuracy
    other_seed = evaluate_sharded(attack, prefix, x, y, threat, shard_size=24, executor=workers, seed=5)
    assert not torch.equal(other_seed.x_adv, reference.x_adv)  # the seed reaches the shards


def test_a_zoo_model_of_tensors_in_process_gives_the_same_result(
    saved: tuple[Path, torch.Tensor, torch.Tensor], workers: DeviceExecutor
) -> None:
    prefix, x, y = saved
    model, _ = zoo.load_model(prefix)
    spec = ZooModel.from_module(model, "small_cnn", CONFIG, input_shape=(1, 8, 8))
    attack = ATTACKS.get("fgsm")()
    threat = ThreatModel(eps=0.15)
    from_files = evaluate_sharded(attack, prefix, x, y, threat, shard_size=32, executor=workers)
    here = evaluate_sharded(attack, spec, x, y, threat, shard_size=32, executor=InProcessExecutor())
    there = evaluate_sharded(attack, spec, x, y, threat, shard_size=32, executor=workers)
    for result in (here, there):
        assert torch.equal(result.x_adv, from_files.x_adv)
        assert torch.equal(result.success, from_files.success)


def test_robust_accuracy_curve_falls_with_eps(saved: tuple[Path, torch.Tensor, torch.Tensor]) -> None:
    prefix, x, y = saved
    curve = robust_accuracy_curve(
        ATTACKS.get("fgsm")(), prefix, x, y, ThreatModel(), [0.01, "8/255", 0.3], shard_size=40
    )
    assert [eps for eps, _ in curve] == pytest.approx([0.01, 8 / 255, 0.3])
    assert {result.threat["eps"] for _, result in curve} == {eps for eps, _ in curve}
    accuracy = [result.robust_accuracy for _, result in curve]
    assert curve[0][1].clean_accuracy >= accuracy[0] > accuracy[2]


def test_sharded_evaluation_checks_its_inputs(saved: tuple[Path, torch.Tensor, torch.Tensor]) -> None:
    prefix, x, y = saved
    pgd, threat = ATTACKS.get("pgd")(), ThreatModel()
    with pytest.raises(ValidationError, match=r"^shard_size: expected an integer >= 1"):
        evaluate_sharded(pgd, prefix, x, y, threat, shard_size=0)
    with pytest.raises(ValidationError, match=r"^model: expected a zoo model with its JSON"):
        evaluate_sharded(pgd, prefix.with_name("missing"), x, y, threat, shard_size=8)
    with pytest.raises(ValidationError, match=r"^oracle_options: expected a dict of TorchOracle arguments"):
        evaluate_sharded(pgd, prefix, x, y, threat, shard_size=8, oracle_options={"colour": "red"})
    with pytest.raises(ValidationError, match=r"^y: expected a tensor of shape \(70,\)"):
        evaluate_sharded(pgd, prefix, x, y[:5], threat, shard_size=8)
    with pytest.raises(RampartsTypeError, match=r"^attack: expected an EvasionAttack instance"):
        evaluate_sharded("pgd", prefix, x, y, threat, shard_size=8)  # type: ignore[arg-type]


def test_oracle_options_reach_the_workers_oracle(
    saved: tuple[Path, torch.Tensor, torch.Tensor], workers: DeviceExecutor
) -> None:
    prefix, x, y = saved
    attack, threat = ATTACKS.get("fgsm")(), ThreatModel(eps=0.15)
    plain = evaluate_sharded(attack, prefix, x, y, threat, shard_size=35, executor=workers)
    small = evaluate_sharded(
        attack, prefix, x, y, threat, shard_size=35, executor=workers, oracle_options={"batch_size": 7}
    )
    assert torch.equal(plain.x_adv, small.x_adv)
    with pytest.raises(TaskError, match=r"batch_size: expected an integer >= 1") as info:
        evaluate_sharded(
            attack, prefix, x, y, threat, shard_size=35, executor=workers, oracle_options={"batch_size": -1}
        )
    assert isinstance(info.value.__cause__, ValidationError)


# ---------------------------------------------------------------- shadow models on workers


def test_shadow_models_trained_on_workers_equal_in_process(workers: DeviceExecutor, tmp_path: Path) -> None:
    ds = load_digits().subset(range(300))
    recipe = ShadowRecipe("mlp", {"hidden": [16]}, epochs=2, batch_size=64, lr=1e-3)
    here = train_shadows(ds, 4, recipe, seed=3, chunk=1)
    there = train_shadows(ds, 4, recipe, seed=3, chunk=1, executor=workers, run_dir=tmp_path)
    assert torch.equal(here.masks, there.masks)
    for a, b in zip(here.states, there.states, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), name
    assert not torch.equal(here.states[0]["net.1.weight"], here.states[1]["net.1.weight"])
    assert len(list(tmp_path.glob("shadow-*.safetensors"))) == 4
