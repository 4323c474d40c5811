"""Closed-form predictions: the recursions of THEORY.md, anchored per stage."""

from __future__ import annotations

import math

import pytest

import sigprop
from sigprop import InputSpec, Trace, measure
from sigprop.theory import BN_BRANCH_SQ_MEAN, BN_BRANCH_VAR, predict


def traced(depth: int, **kwargs: object) -> Trace:
    net = sigprop.models.resnet(depth, width=8, seed=0, **kwargs)  # type: ignore[arg-type]
    return measure(net, InputSpec("gaussian", (2, 3, 8, 8), seed=0), model_info=net.config)


def test_relu_constants() -> None:
    # E[relu(z)] = 1/sqrt(2 pi) for z ~ N(0, 1); a He conv doubles its square into mu_c**2.
    assert BN_BRANCH_SQ_MEAN == pytest.approx(2 * (1 / math.sqrt(2 * math.pi)) ** 2)
    assert BN_BRANCH_VAR + BN_BRANCH_SQ_MEAN == 1.0


def test_bn_v2_is_linear_within_each_stage() -> None:
    trace = traced(6, stages=2)
    p = predict(trace)
    assert p is not None and p.family == "bn-v2" and p.exact
    blocks = trace.runs[0].blocks
    for start, stop in ((0, 3), (3, 6)):
        m0 = blocks[start].skip.m2
        for l, pred in enumerate(p.blocks[start:stop]):
            assert pred.skip_m2 == pytest.approx(m0 + l)
            assert pred.ratio == pytest.approx(1 / (m0 + l))
            assert pred.skip_var == pytest.approx(blocks[start].skip.var + l * BN_BRANCH_VAR)
            assert pred.skip_sq_mean == pytest.approx(
                blocks[start].skip.sq_mean + l * BN_BRANCH_SQ_MEAN)


@pytest.mark.parametrize(("kwargs", "family", "growth"), [
    ({"norm": "none"}, "unnormalized", 2.0),
    ({"norm": "skipinit", "alpha": 0.5}, "skipinit", 1.25),
    ({"norm": "sqrt-depth"}, "sqrt-depth", 1.25),  # d = 4 blocks
])
def test_geometric_families(kwargs: dict[str, object], family: str, growth: float) -> None:
    trace = traced(4, **kwargs)
    p = predict(trace)
    assert p is not None and p.family == family
    m0 = trace.runs[0].blocks[0].skip.m2
    assert [b.skip_m2 for b in p.blocks] == pytest.approx([m0 * growth**l for l in range(4)])
    assert p.blocks[3].output_m2 == pytest.approx(m0 * growth**4)


def test_v1_is_flagged_approximate_and_other_models_have_no_prediction() -> None:
    p = predict(traced(3, variant="v1"))
    assert p is not None and not p.exact and "approximately" in p.rule
    net = sigprop.models.resnet(2, seed=0)
    plain = measure(net, InputSpec("gaussian", (2, 3, 8, 8), 0), model_info={"name": "mine"})
    assert predict(plain) is None
