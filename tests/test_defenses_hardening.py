"""Output hardenings: argmax kept, the promised shape of the scores, knowledge, the spec parser."""

from __future__ import annotations

import pytest
import torch

from ramparts.defenses import HARDENINGS, LabelOnly, NoisyScores, ReverseSigmoid, Rounded, TopK, harden
from ramparts.errors import AccessError, UnknownNameError, ValidationError
from ramparts.oracles import Knowledge
from ramparts.targets import view_for

SCORE_HARDENINGS = {
    "topk": lambda o: TopK(o, 3),
    "round": lambda o: Rounded(o, 2),
    "noise": lambda o: NoisyScores(o, 0.05, seed=1),
    "reverse_sigmoid": lambda o: ReverseSigmoid(o, 0.5, 0.1),
}


@pytest.mark.parametrize("name", sorted(SCORE_HARDENINGS))
def test_score_hardenings_keep_the_argmax_and_labels(digits_model, name):
    oracle = digits_model.oracle
    hardened = SCORE_HARDENINGS[name](oracle)
    x = digits_model.x
    assert hardened.knowledge == Knowledge.SCORE
    assert torch.equal(hardened.labels(x), oracle.labels(x))
    probs = hardened.log_probs(x).exp()
    top = oracle.labels(x)
    assert torch.isfinite(probs).all()
    # the model's class holds the largest score (ties allowed after rounding)
    assert torch.equal(probs.gather(1, top[:, None]).squeeze(1), probs.max(dim=1).values)


def test_topk_leaves_k_nonzero_probabilities(digits_model):
    probs = TopK(digits_model.oracle, 3).log_probs(digits_model.x).exp()
    assert ((probs > 1e-30).sum(dim=1) == 3).all()
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(len(probs)))
    raw = digits_model.oracle.log_probs(digits_model.x).exp()
    assert torch.equal(probs.topk(3).indices.sort().values, raw.topk(3).indices.sort().values)


def test_rounded_has_the_decimals(digits_model):
    probs = Rounded(digits_model.oracle, 2).log_probs(digits_model.x).exp().double()
    torch.testing.assert_close(probs * 100, (probs * 100).round(), atol=1e-4, rtol=0)
    assert ((probs * 100).round() != (digits_model.oracle.log_probs(digits_model.x).exp() * 100)).any()


def test_reverse_sigmoid_changes_scores_not_labels(digits_model):
    oracle = digits_model.oracle
    x = digits_model.x
    raw = oracle.log_probs(x).exp()
    out = ReverseSigmoid(oracle, beta=0.5, gamma=0.1).log_probs(x).exp()
    assert (out - raw).abs().max() > 0.05
    assert torch.equal(out.argmax(dim=1), raw.argmax(dim=1))
    torch.testing.assert_close(out.sum(dim=1), torch.ones(len(out)))


def test_noise_is_seeded_and_without_preserve_labels_follow_the_noise(digits_model):
    oracle = digits_model.oracle
    x = digits_model.x
    a = NoisyScores(oracle, 0.05, seed=3).log_probs(x)
    b = NoisyScores(oracle, 0.05, seed=3).log_probs(x)
    assert torch.equal(a, b)
    loud = NoisyScores(oracle, 1.0, seed=0, preserve_argmax=False)
    assert not torch.equal(loud.labels(x), oracle.labels(x))
    kept = NoisyScores(oracle, 1.0, seed=0)
    assert torch.equal(kept.log_probs(x).argmax(dim=1), oracle.labels(x))


def test_label_only_refuses_score_views(digits_model):
    hidden = LabelOnly(digits_model.oracle)
    assert hidden.knowledge == Knowledge.LABEL
    assert torch.equal(hidden.labels(digits_model.x), digits_model.y)
    with pytest.raises(AccessError, match="label"):
        view_for(hidden, Knowledge.SCORE, len(digits_model.x))
    with pytest.raises(AccessError):
        hidden.log_probs(digits_model.x)
    view = view_for(hidden, Knowledge.LABEL, len(digits_model.x))
    assert torch.equal(view.labels(digits_model.x), digits_model.y)


def test_score_hardenings_refuse_gradients_and_label_oracles(digits_model):
    topk = TopK(digits_model.oracle, 2)
    with pytest.raises(AccessError, match="gradient"):
        view_for(topk, Knowledge.GRADIENT, 4)
    with pytest.raises(AccessError, match="TopK"):
        TopK(LabelOnly(digits_model.oracle), 2)


@pytest.mark.parametrize(
    ("make", "param"),
    [
        (lambda o: TopK(o, 0), "k"),
        (lambda o: TopK(o, 11), "k"),
        (lambda o: Rounded(o, -1), "decimals"),
        (lambda o: NoisyScores(o, 0.0), "scale"),
        (lambda o: ReverseSigmoid(o, beta=-1.0), "beta"),
        (lambda o: ReverseSigmoid(o, gamma=float("nan")), "gamma"),
    ],
)
def test_bad_parameters_name_themselves(digits_model, make, param):
    with pytest.raises(ValidationError, match=rf"^{param}: expected"):
        make(digits_model.oracle)


def test_parser_builds_each_hardening(digits_model):
    o = digits_model.oracle
    assert isinstance(harden(o, "labels"), LabelOnly)
    assert harden(o, "topk:3").k == 3  # type: ignore[attr-defined]
    assert harden(o, "round:2").decimals == 2  # type: ignore[attr-defined]
    noisy = harden(o, "noise:0.05,7")
    assert isinstance(noisy, NoisyScores)
    assert (noisy.scale, noisy.seed) == (0.05, 7)
    rs = harden(o, " reverse_sigmoid:0.5, 0.1 ")
    assert isinstance(rs, ReverseSigmoid)
    assert (rs.beta, rs.gamma) == (0.5, 0.1)
    assert set(HARDENINGS.names()) == {"labels", "topk", "round", "noise", "reverse_sigmoid"}


@pytest.mark.parametrize(
    ("spec", "error", "says"),
    [
        ("topk", ValidationError, "topk:K"),
        ("topk:x", ValidationError, "k must be an integer"),
        ("topk:20", ValidationError, r"\[1, 10\]"),
        ("round:1,2", ValidationError, "round:DECIMALS"),
        ("reverse_sigmoid:0.5", ValidationError, "reverse_sigmoid:BETA,GAMMA"),
        ("labels:3", ValidationError, "labels"),
        ("blur:3", UnknownNameError, "Allowed: labels, noise, reverse_sigmoid, round, topk"),
    ],
)
def test_parser_errors_name_the_spec(digits_model, spec, error, says):
    with pytest.raises(error, match=f"hardening {spec!r}") as info:
        harden(digits_model.oracle, spec)
    assert info.match(says)
