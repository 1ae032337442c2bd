"""ThreatModel: parsing of budgets, validation, and the geometry of project/distance (property-based)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ramparts.errors import UnknownNameError, ValidationError
from ramparts.threat import NORMS, ThreatModel


@pytest.mark.parametrize(
    ("eps", "expected"),
    [(0.3, 0.3), ("8/255", 8 / 255), ("0.03", 0.03), ("5px", 5 / 255), ("5 pixels", 5 / 255), (1, 1.0)],
)
def test_eps_forms(eps: float | str, expected: float) -> None:
    assert ThreatModel(eps=eps).eps_value == pytest.approx(expected)


def test_pixel_units_follow_bounds() -> None:
    # "M smaller than 5" on a 0..255 scale, for inputs in [-1, 1]: 5 levels of 2/255 each.
    assert ThreatModel(eps="5px", bounds=(-1.0, 1.0)).eps_value == pytest.approx(10 / 255)
    assert ThreatModel(norm="l0", eps="3px").eps_value == 3


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"eps": 0}, "eps"),
        ({"eps": -0.1}, "eps"),
        ({"eps": 1.5}, "eps"),
        ({"eps": "8/0"}, "eps"),
        ({"eps": "lots"}, "eps"),
        ({"eps": float("nan")}, "eps"),
        ({"norm": "l0", "eps": 2.5}, "eps"),
        ({"bounds": (1.0, 0.0)}, "bounds"),
        ({"goal": "targeted", "min_target_confidence": 1.5}, "min_target_confidence"),
        ({"goal": "untargeted", "target": "random"}, "target"),
        ({"goal": "confidence"}, "max_true_confidence"),
        ({"goal": "confidence", "max_true_confidence": 0.5, "confidence_margin": 0.2}, "confidence_margin"),
    ],
)
def test_bad_threats_name_the_parameter(kwargs: dict[str, object], param: str) -> None:
    with pytest.raises(ValidationError, match=param) as info:
        ThreatModel(**kwargs)  # type: ignore[arg-type]
    assert "Fix" in str(info.value) or "Allowed" in str(info.value) or "expected" in str(info.value)


@pytest.mark.parametrize(("field", "value"), [("norm", "l3"), ("goal", "maximal"), ("target", "third")])
def test_unknown_names_list_the_allowed(field: str, value: str) -> None:
    kwargs: dict[str, object] = {field: value}
    if field == "target":
        kwargs["goal"] = "targeted"
    with pytest.raises(UnknownNameError, match="Allowed"):
        ThreatModel(**kwargs)  # type: ignore[arg-type]


def test_targeted_defaults_to_least_likely() -> None:
    assert ThreatModel(goal="targeted").target == "least_likely"


def test_frozen() -> None:
    threat = ThreatModel()
    with pytest.raises(AttributeError):
        threat.eps = 0.1  # type: ignore[misc]


def test_describe_mentions_pixel_levels() -> None:
    assert "8/255" in ThreatModel(eps="8/255").describe()


shapes = st.sampled_from([(3, 1, 6, 6), (2, 3, 4, 4), (4, 10)])
floats01 = st.floats(0.0, 1.0, allow_nan=False, width=32)


@st.composite
def pairs(draw: st.DrawFn) -> tuple[ThreatModel, torch.Tensor, torch.Tensor]:
    shape = draw(shapes)
    norm = draw(st.sampled_from(NORMS))
    if norm == "l0":
        eps: float = draw(st.integers(1, 5))
    elif norm == "l2":
        eps = draw(st.floats(0.01, 3.0))
    else:
        eps = draw(st.floats(0.001, 1.0))
    lo = draw(st.sampled_from([0.0, -1.0]))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    x = lo + (1 - lo) * torch.rand(shape, generator=gen)
    x_adv = x + draw(st.floats(0.01, 5.0)) * torch.randn(shape, generator=gen)
    return ThreatModel(norm=norm, eps=eps, bounds=(lo, 1.0)), x_adv, x


@settings(max_examples=150, deadline=None)
@given(pairs())
def test_projection_lands_in_ball_and_bounds(case: tuple[ThreatModel, torch.Tensor, torch.Tensor]) -> None:
    threat, x_adv, x = case
    p = threat.project(x_adv, x)
    assert bool(threat.contains(p, x).all())
    assert float(p.min()) >= threat.bounds[0]
    assert float(p.max()) <= threat.bounds[1]


@settings(max_examples=100, deadline=None)
@given(pairs())
def test_projection_is_idempotent_and_fixes_inside_points(
    case: tuple[ThreatModel, torch.Tensor, torch.Tensor],
) -> None:
    threat, x_adv, x = case
    p = threat.project(x_adv, x)
    assert torch.allclose(threat.project(p, x), p, atol=1e-5)
    assert torch.allclose(threat.project(x, x), x)


@settings(max_examples=100, deadline=None)
@given(pairs())
def test_linf_l2_projection_is_nearest_point(case: tuple[ThreatModel, torch.Tensor, torch.Tensor]) -> None:
    """Reference check: no random point of the feasible set is closer to x_adv than the projection."""
    threat, x_adv, x = case
    if threat.norm == "l0":
        return
    p = threat.project(x_adv, x)
    gen = torch.Generator().manual_seed(1)
    others = threat.project(x + 2 * threat.eps_value * torch.randn(x.shape, generator=gen), x)
    d_p = (x_adv - p).flatten(1).norm(dim=1)
    d_o = (x_adv - others).flatten(1).norm(dim=1)
    # For linf, box clipping is the exact Euclidean projection. For l2 with bounds, scaling then
    # clipping is the standard approximation: exact only where the clipping does not bind.
    if threat.norm == "l2":
        delta = x_adv - x
        scale = (threat.eps_value / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
        raw = x + delta * scale.view(-1, *([1] * (x.dim() - 1)))
        if bool((raw < threat.bounds[0]).any() or (raw > threat.bounds[1]).any()):
            return
    assert bool((d_p <= d_o + 1e-5).all())


def test_distance_reference_values() -> None:
    x = torch.zeros(1, 1, 2, 2)
    x_adv = torch.tensor([[[[0.3, 0.0], [0.0, -0.4]]]])
    assert ThreatModel(norm="linf").distance(x_adv, x).item() == pytest.approx(0.4)
    assert ThreatModel(norm="l2").distance(x_adv, x).item() == pytest.approx(0.5)
    assert ThreatModel(norm="l0", eps=1).distance(x_adv, x).item() == 2


def test_l0_counts_a_pixel_once_across_channels() -> None:
    x = torch.zeros(1, 3, 4, 4)
    x_adv = x.clone()
    x_adv[0, :, 1, 1] = 0.5
    x_adv[0, 0, 2, 2] = 0.9
    x_adv[0, 1, 3, 0] = 0.1
    threat = ThreatModel(norm="l0", eps=2)
    assert threat.distance(x_adv, x).item() == 3
    p = threat.project(x_adv, x)
    assert threat.distance(p, x).item() == 2
    assert p[0, 0, 2, 2] == pytest.approx(0.9)
    assert p[0, 1, 3, 0] == 0


def test_random_start_inside() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 8, 8, generator=gen)
    for norm, eps in (("linf", 0.1), ("l2", 0.5)):
        threat = ThreatModel(norm=norm, eps=eps)
        start = threat.random_start(x, gen)
        assert bool(threat.contains(start, x).all())
        assert not torch.equal(start, x)
    # l2 random starts fill the ball: radii are not all at the surface.
    radii = ThreatModel(norm="l2", eps=1.0).distance(ThreatModel(norm="l2", eps=1.0).random_start(x, gen), x)
    assert float(radii.min()) < 0.95 * math.sqrt(1.0)


@settings(max_examples=100, deadline=None)
@given(pairs())
def test_projector_agrees_with_project(case: tuple[ThreatModel, torch.Tensor, torch.Tensor]) -> None:
    threat, x_adv, x = case
    assert torch.allclose(threat.projector(x)(x_adv), threat.project(x_adv, x), atol=1e-6)
