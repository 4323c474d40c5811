"""Trace: JSON round trip, long-format table, queries, malformed files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import sigprop
from sigprop import InputSpec, Trace, TraceFormatError, measure


@pytest.fixture(scope="module")
def trace() -> Trace:
    net = sigprop.models.resnet(5, stages=2, seed=0)
    return measure(net, InputSpec("gaussian", (4, 3, 8, 8), seed=3), model_info=net.config)


def test_json_round_trip_is_lossless(trace: Trace, tmp_path: Path) -> None:
    trace.to_json(tmp_path / "stats.json")
    assert Trace.from_json(tmp_path / "stats.json") == trace


def test_non_finite_values_are_written_as_null(tmp_path: Path) -> None:
    net = sigprop.models.resnet(40, norm="skipinit", alpha=100.0, width=8, seed=0)  # overflows
    trace = measure(net, InputSpec("gaussian", (2, 3, 8, 8), seed=0), model_info=net.config)
    path = tmp_path / "stats.json"
    trace.to_json(path)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    doc = json.loads(text)
    first = doc["runs"][0]["first_overflow"]
    assert first == trace.runs[0].first_overflow
    assert doc["runs"][0]["blocks"][-1]["skip"]["var"] is None
    back = Trace.from_json(path)
    assert back.to_dict() == trace.to_dict()
    assert math.isnan(back.runs[0].blocks[-1].skip.var)


@pytest.fixture(scope="module")
def grad_trace() -> Trace:
    net = sigprop.models.resnet(3, stages=2, seed=0)
    return measure(net, InputSpec("gaussian", (4, 3, 8, 8), seed=1), backward=True)


def test_gradients_round_trip_and_old_files_without_them_load(grad_trace: Trace,
                                                              tmp_path: Path) -> None:
    grad_trace.to_json(tmp_path / "stats.json")
    back = Trace.from_json(tmp_path / "stats.json")
    assert back == grad_trace and back.has_gradients
    doc = json.loads((tmp_path / "stats.json").read_text())
    grad = doc["runs"][0]["blocks"][1]["grad"]
    assert set(grad) == {"output", "skip", "residual", "input"}
    assert grad["input"]["var"] == grad_trace.runs[0].blocks[1].grad.input.var
    for block in doc["runs"][0]["blocks"]:
        del block["grad"]  # a stats.json written before gradients existed
    old = Trace.from_dict(doc)
    assert not old.has_gradients and old.runs[0].blocks[1].skip == grad_trace.runs[0].blocks[1].skip


def test_frame_has_backward_rows_for_gradients(grad_trace: Trace) -> None:
    frame = grad_trace.to_frame()
    assert len(frame) == 3 * (3 + 4) * 2
    backward = frame[frame.direction == "backward"]
    assert set(backward["tensor"]) == {"output", "skip", "residual", "input"}
    row = backward[(backward.block == 2) & (backward.tensor == "residual")
                   & (backward.stat == "var")]
    assert row["value"].item() == grad_trace.runs[0].blocks[2].grad.residual.var


def test_frame_is_long_format(trace: Trace) -> None:
    frame = trace.to_frame()
    assert list(frame.columns) == ["seed", "block", "name", "stage", "direction", "tensor",
                                   "stat", "value"]
    assert set(frame["direction"]) == {"forward"}
    assert len(frame) == 5 * 3 * 2
    assert set(frame["tensor"]) == {"skip", "residual", "output"}
    assert set(frame["stat"]) == {"var", "sq_mean"}
    row = frame[(frame.block == 3) & (frame.tensor == "residual") & (frame.stat == "sq_mean")]
    assert row["value"].item() == trace.runs[0].blocks[3].residual.sq_mean
    assert row["stage"].item() == 1 and row["seed"].item() == 3


def test_queries(trace: Trace) -> None:
    assert trace.n_blocks == 5
    stages = trace.by_stage()
    assert [b.index for b in stages[0]] == [0, 1, 2] and [b.index for b in stages[1]] == [3, 4]
    block = trace.runs[0].blocks[2]
    assert block.ratio == block.residual.m2 / block.skip.m2
    assert block.skip.m2 == block.skip.var + block.skip.sq_mean


def test_merge_requires_the_same_model(trace: Trace) -> None:
    merged = trace.merge(trace)
    assert merged.seeds == (3, 3) and merged.n_blocks == 5
    other = measure(sigprop.models.resnet(2, seed=0), InputSpec("gaussian", (2, 3, 8, 8), 0))
    with pytest.raises(ValueError, match="cannot merge traces of different models"):
        trace.merge(other)


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "holds a JSON list, not an object"),
    ('{"model": {}}', "not a sigprop stats document: it has no 'input' entry"),
])
def test_malformed_files_raise_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(TraceFormatError, match=message):
        Trace.from_json(path)


def test_first_overflow_of_a_trace_is_the_earliest_over_its_runs() -> None:
    from tests.helpers import synthetic_trace

    inf = math.inf
    trace = synthetic_trace([[1.0, 2.0, inf, inf], [1.0, inf, inf, inf], [1.0, 2.0, 3.0, 4.0]],
                            [[1.0] * 4] * 3)
    assert [run.first_overflow for run in trace.runs] == [2, 1, None]
    assert trace.first_overflow == 1
    assert synthetic_trace([[1.0, 2.0]], [[1.0, 1.0]]).first_overflow is None


def test_merge_checks_the_input_and_traces_are_hashable() -> None:
    net = sigprop.models.resnet(2, seed=0)
    a = measure(net, InputSpec("gaussian", (2, 3, 8, 8), 0))
    b = measure(net, InputSpec("gaussian", (2, 3, 8, 8), 1))
    wider = measure(net, InputSpec("gaussian", (4, 3, 8, 8), 1))
    assert a.merge(b).seeds == (0, 1)
    with pytest.raises(ValueError, match=r"different inputs: gaussian \(2, 3, 8, 8\) vs "
                                         r"gaussian \(4, 3, 8, 8\)"):
        a.merge(wider)
    assert len({a, b, Trace.from_dict(a.to_dict())}) == 2
    assert InputSpec("tensor", (1,), None).kind is sigprop.InputKind.TENSOR
    with pytest.raises(ValueError, match="unknown input kind 'uniform'"):
        InputSpec("uniform", (1,), 0)


def test_blocks_carry_their_layout_into_stats_json_and_older_files_still_read() -> None:
    class Tokens(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mix = torch.nn.Linear(4, 4)
            self.add = sigprop.ResidualAdd(channels_last=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.add(x, self.mix(x))
            return out

    trace = measure(Tokens(), sigprop.gaussian_input((2, 3, 4), seed=0))
    (block,) = trace.runs[0].blocks
    assert block.channels_last and isinstance(block, sigprop.Block)
    assert block == sigprop.BlockStats.of(sigprop.find_blocks(Tokens(), torch.ones(2, 3, 4))[0],
                                          block.skip, block.residual, block.output, block.cross)
    doc = trace.to_dict()
    assert doc["runs"][0]["blocks"][0]["channels_last"] is True
    del doc["runs"][0]["blocks"][0]["channels_last"]  # written before sigprop recorded it
    assert not Trace.from_dict(doc).runs[0].blocks[0].channels_last
