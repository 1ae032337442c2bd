"""CKKS core: planner, compiler and both packings against the float64 plain program (digits)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ramparts.data import load_digits, train_test_split
from ramparts.protection import he_eval as he
from ramparts.protection.he_model import UnsupportedLayerError, compile_model
from ramparts.protection.he_params import (
    HEParameters,
    InsecureParametersError,
    check_security,
    make_context,
    plan_parameters,
)
from ramparts.protection.he_seal import DiagonalPlan, SealEngine, proto_fields
from ramparts.protection.poly import Quadratic, Square
from ramparts.training import TrainConfig, train

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def split() -> tuple:
    torch.set_num_threads(1)
    return train_test_split(load_digits(), test_fraction=0.25, seed=0)


def _trained(model: nn.Module, split: tuple) -> nn.Module:
    torch.manual_seed(0)
    train(model, split[0], config=TrainConfig(epochs=5, batch_size=64, lr=1e-3, seed=0), progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def mlp(split: tuple) -> nn.Module:
    return _trained(nn.Sequential(nn.Flatten(), nn.Linear(64, 32), Square(), nn.Linear(32, 10)), split)


@pytest.fixture(scope="module")
def small_cnn(split: tuple) -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2), Square(), nn.Flatten(), nn.Linear(18, 8), Square(), nn.Linear(8, 10)
    )
    return _trained(model, split)


def _roundtrip(model: nn.Module, x: torch.Tensor, packing: str) -> tuple[torch.Tensor, torch.Tensor]:
    program = compile_model(model, SHAPE)
    params = he.plan_for(program, packing, n=len(x))
    context = make_context(params, galois_keys=packing == "query", n_threads=1)
    batch = he.encrypt_inputs(context, x, packing=packing, encoding=program.input_encoding(packing))
    return he.decrypt_outputs(context, he.evaluate(program, batch)), program.plain_forward(x)


def test_planner_is_secure_and_minimal() -> None:
    params = plan_parameters(3)
    check_security(params)
    assert (params.poly_modulus_degree, params.depth, params.slots) == (8192, 3, 4096)
    assert params.coeff_mod_bit_sizes[1:-1] == (params.scale_bits,) * 3
    assert HEParameters.from_dict(params.to_dict()) == params
    assert plan_parameters(3, min_slots=5000).poly_modulus_degree == 16384
    cnn = plan_parameters(5)  # the MNIST CNN: 2**28 keeps it in N = 8192 (he_seal's exact scales)
    assert (cnn.poly_modulus_degree, cnn.coeff_mod_bit_sizes) == (8192, (38, 28, 28, 28, 28, 28, 38))


def test_planner_refuses_insecure_parameters() -> None:
    with pytest.raises(InsecureParametersError, match="at most 109 bits"):
        check_security(
            HEParameters(poly_modulus_degree=4096, coeff_mod_bit_sizes=(40, 30, 40), scale_bits=30)
        )
    with pytest.raises(InsecureParametersError):
        make_context(
            HEParameters(poly_modulus_degree=8192, coeff_mod_bit_sizes=(60, 40, 40, 40, 60), scale_bits=40),
            galois_keys=False,
        )


def test_unsupported_layer_names_layer_and_alternative() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))
    with pytest.raises(UnsupportedLayerError, match=r"layer 2 \(ReLU\).*ramparts\.protection\.poly\.Square"):
        compile_model(model, SHAPE)
    late_conv = nn.Sequential(nn.Conv2d(1, 2, 3), Square(), nn.Conv2d(2, 2, 3))
    with pytest.raises(UnsupportedLayerError, match=r"layer 2 \(Conv2d\) is not the first layer"):
        compile_model(late_conv, SHAPE)


class _ZooLike(nn.Module):
    def __init__(self, *, skip: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 3), Square(), nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(72, 10))
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.classifier(h + h if self.skip else h)


def test_compiler_walks_features_then_classifier_and_checks_forward() -> None:
    torch.manual_seed(4)
    program = compile_model(_ZooLike().eval(), SHAPE)
    assert [op["op"] for op in program.describe()] == ["conv2d", "square", "dense"]
    with pytest.raises(UnsupportedLayerError, match="do not reproduce its forward"):
        compile_model(_ZooLike(skip=True).eval(), SHAPE)


def test_compiler_folds_batch_norm_pool_and_quadratic() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.BatchNorm2d(3),
        nn.AvgPool2d(2),
        Quadratic(),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(27, 10),
        nn.BatchNorm1d(10),
    )
    for bn in (model[1], model[7]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    model.eval()
    program = compile_model(model, SHAPE)
    x = torch.rand(4, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(program.plain_forward(x), model.double()(x.double()), atol=1e-9)
    assert [op["op"] for op in program.describe()] == ["conv2d", "dense", "product", "dense"]
    assert (program.depth, program.depth_for("batch"), program.depth_for("query")) == (4, 4, 4)


def test_query_packing_replicates_with_the_layer_period(mlp: nn.Module, split: tuple) -> None:
    program = compile_model(mlp, SHAPE)
    encoding = program.input_encoding("query")
    assert (encoding["kind"], encoding["period"], program.periods()) == ("replicated", 64, [64, 32])
    out, ref = _roundtrip(mlp, split[1].x[:4], "query")
    assert (out - ref).abs().max() < 1e-2
    assert torch.equal(out.argmax(1), ref.argmax(1))


def test_wide_hidden_layer_and_biases_through_the_diagonal_product(split: tuple) -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 70), Square(), nn.Linear(70, 10)).eval()
    program = compile_model(model, SHAPE)
    assert program.periods() == [128, 128]  # 70 outputs pad to 128 > 64 inputs
    out, ref = _roundtrip(model, split[1].x[:1], "query")
    assert (out - ref).abs().max() < 1e-2


def test_plain_bias_after_a_tenseal_product_breaks_the_next_one_but_not_ours() -> None:
    """The issue's pitfall: in TenSEAL's vector layout a plain bias added after ``mm`` breaks the next ``mm``.

    Our query packing owns its layout (outputs repeated with the next layer's period), so the same two-layer
    model with biases is right."""
    import tenseal as ts

    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Linear(16, 4)).double().eval()
    with torch.no_grad():
        model[1].bias.uniform_(-1.0, 1.0)  # a bias of the size trained models have, so the error shows
    w1, b1 = model[1].weight.detach().numpy().T, model[1].bias.detach().numpy()
    w2 = model[2].weight.detach().numpy().T
    x = torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    context = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[40, 30, 30, 30, 40], n_threads=1)
    context.global_scale = 2**30
    context.generate_galois_keys()
    hidden = ts.ckks_vector(context, x.flatten().tolist()).mm(w1.tolist()) + b1.tolist()
    naive = np.array(hidden.mm(w2.tolist()).decrypt())
    expected = (x.flatten().numpy() @ w1 + b1) @ w2
    assert np.abs(naive - expected).max() > 0.1  # the bias lands where the next product reads garbage
    out, ref = _roundtrip(model, x, "query")
    assert torch.allclose(ref[0], torch.from_numpy(expected) + model[2].bias.detach(), atol=1e-9)
    assert (out - ref).abs().max() < 1e-2


def test_batch_packing_full_digits_split(mlp: nn.Module, split: tuple) -> None:
    out, ref = _roundtrip(mlp, split[1].x, "batch")
    assert out.shape == ref.shape == (len(split[1].x), 10)
    assert (out - ref).abs().max() < 1e-2
    assert torch.equal(out.argmax(1), ref.argmax(1))


def test_small_cnn_both_packings(small_cnn: nn.Module, split: tuple) -> None:
    for packing, n in (("batch", 100), ("query", 1)):
        out, ref = _roundtrip(small_cnn, split[1].x[:n], packing)
        assert (out - ref).abs().max() < 1e-2, packing
        assert torch.equal(out.argmax(1), ref.argmax(1))


def test_server_context_cannot_decrypt(split: tuple) -> None:
    torch.manual_seed(3)
    program = compile_model(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval(), SHAPE)
    context = make_context(he.plan_for(program, "batch"), galois_keys=False, n_threads=1)
    batch = he.encrypt_inputs(
        context, split[1].x[:3], packing="batch", encoding=program.input_encoding("batch")
    )
    server = context.copy()
    server.make_context_public()
    items = he.EncryptedBatch.deserialize_items(
        server, batch.serialize_items(), packing="batch", n=3, meta=batch.meta
    )
    result = he.evaluate(program, items)
    with pytest.raises(ValueError, match="public context"):
        he.decrypt_outputs(server, result)
    back = he.EncryptedBatch.deserialize_items(
        context, result.serialize_items(), packing="batch", n=3, meta=result.meta
    )
    assert torch.equal(
        he.decrypt_outputs(context, back).argmax(1), program.plain_forward(split[1].x[:3]).argmax(1)
    )
    assert he.required_keys("batch") == ("relin",)
    assert he.required_keys("query") == ("relin", "galois")


@pytest.mark.slow
def test_query_packing_full_digits_split(mlp: nn.Module, split: tuple) -> None:
    out, ref = _roundtrip(mlp, split[1].x, "query")
    assert (out - ref).abs().max() < 1e-2
    assert torch.equal(out.argmax(1), ref.argmax(1))


@pytest.mark.slow
def test_three_layer_quadratic_carries_the_constant(split: tuple) -> None:
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 20), Quadratic(), nn.Linear(20, 16), Quadratic(), nn.Linear(16, 10)
    )
    model = _trained(model, split)
    for packing, n in (("query", 2), ("batch", 50)):
        out, ref = _roundtrip(model, split[1].x[:n], packing)
        assert (out - ref).abs().max() < 1e-2, packing
        assert torch.equal(out.argmax(1), ref.argmax(1))


@pytest.fixture(scope="module")
def engine() -> SealEngine:
    params = HEParameters(poly_modulus_degree=8192, coeff_mod_bit_sizes=(40, 30, 30, 40), scale_bits=30)
    return SealEngine.for_context(make_context(params, galois_keys=True, n_threads=1))


def test_lazy_weighted_sums_rescale_once_and_keep_the_scale(engine: SealEngine) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (5, engine.slots))
    weight, bias = rng.normal(size=(3, 5)), rng.normal(size=3)
    weight[1] = 0.0  # an all-zero row gives the bias alone
    inputs = [engine.encrypt(row) for row in x]
    outputs = engine.weighted_sums(inputs, weight, bias)
    for out, ref in zip(outputs, weight @ x + bias[:, None], strict=True):
        assert np.abs(engine.decrypt(out) - ref).max() < 1e-4
        assert out.scale == pytest.approx(
            inputs[0].scale, rel=1e-12
        )  # the weights' scale is the dropped prime
    squared = engine.square(outputs[0])
    assert np.abs(engine.decrypt(squared) - (weight[0] @ x + bias[0]) ** 2).max() < 1e-3


@pytest.mark.parametrize("shape", [(10, 70), (40, 12), (256, 256)])
def test_bsgs_matvec_replicates_its_output_with_few_rotations(
    engine: SealEngine, shape: tuple[int, int]
) -> None:
    rng = np.random.default_rng(1)
    weight, x = rng.normal(size=shape), rng.uniform(-1, 1, shape[1])
    plan = DiagonalPlan(weight, 1, engine.slots)
    padded = np.zeros(plan.n)
    padded[: shape[1]] = x
    out = engine.decrypt(
        engine.matvec(engine.encrypt(np.tile(padded, engine.slots // plan.n)), [plan], {})[0]
    )
    blocks = out.reshape(-1, plan.m)[:, : shape[0]]
    assert np.abs(blocks - weight @ x).max() < 1e-2  # every period-m block holds W @ x (|W @ x| ~ 10)
    assert plan.rotations <= 2 * math.isqrt(plan.m) + math.log2(plan.n // plan.m)  # not one per row


def test_public_engine_cannot_decrypt_and_protobuf_errors_are_clear(engine: SealEngine) -> None:
    params = HEParameters(poly_modulus_degree=8192, coeff_mod_bit_sizes=(40, 30, 40), scale_bits=30)
    context = make_context(params, galois_keys=False, n_threads=1)
    ct = SealEngine.for_context(context).encrypt(np.ones(3))
    context.make_context_public()
    public = SealEngine.for_context(context)
    assert not public.private
    with pytest.raises(ValueError, match="public context"):
        public.decrypt(ct)
    with pytest.raises(ValueError, match="Galois keys"):
        public.galois_keys  # noqa: B018
    with pytest.raises(ValueError, match="truncated"):
        proto_fields(b"\x0a\x05ab")
