"""Zero-length pairs: a destination equal to the start is a path of one point, length 0, the endpoint's loss."""
import math

import pytest
import torch
from torch import nn

import llpf
from llpf.baselines.elastic_band import AutoNEB, AutoNEBConfig, Cycle, tangent
from llpf.data import BatchStream, Split
from llpf.train import evaluate

TABLES = {
    "line": {"points": 5},
    "m2m": {"phases": [{"iterations": 6, "step_a": 0.1, "rounds": 2}], "eval_every": 2, "save_every": 2,
            "checkpoint_every": 2, "batch_size": 32},
    "autoneb": {"cycles": [{"steps": 4, "lr": 0.05}] * 2, "points_per_segment": 2, "batch_size": 32},
    "bezier": {"kind": "bezier", "steps": 6, "lr": 0.05, "batch_size": 32},
    "polychain": {"kind": "polychain", "steps": 6, "lr": 0.05, "batch_size": 32},
}


def problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 5, generator=g)
    torch.manual_seed(1)
    return nn.Linear(5, 3), Split(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())


def knot_length(knots) -> float:
    """The Euclidean length of the polygon through a path's knots (a Bezier curve's is 0 exactly when theirs is)."""
    vec = [torch.cat([v.reshape(-1) for v in s.values()]) for s in knots.states]
    return sum(float((b - a).norm()) for a, b in zip(vec, vec[1:]))


@pytest.mark.parametrize("name", list(TABLES))
def test_every_method_ends_a_zero_length_pair_at_iteration_0_with_the_endpoint_s_loss(name):
    model, data = problem()
    method = "bezier" if name == "polychain" else name
    res = llpf.find_path(method, model, data, TABLES[name], dest=model, device="cpu", keep_points=True)
    s = res.summary
    assert s["status"] == "complete" and s["iterations"] == 0 and s["zero_length"] is True
    loss = evaluate(model, data.batches(1024), torch.nn.functional.cross_entropy, {}, "cpu")["loss"]
    assert s["max_train_loss"] == pytest.approx(loss, rel=1e-6) and math.isfinite(s["max_train_loss"])
    assert [r["iteration"] for r in res.rows] == [0]
    for _, state in res.points:
        assert all(torch.equal(state[n], v) for n, v in model.state_dict().items())
    if res.path is not None:
        assert knot_length(res.path) == 0.0
    assert all(torch.equal(p, q) for p, q in zip(res.model.parameters(), model.parameters()))


def test_a_zero_length_m2m_path_has_arrived_and_is_judged_on_the_endpoint_s_loss():
    model, data = problem()  # an untrained model (loss ~1.1): valid by llpf's test only above that threshold
    for threshold, valid in ((5.0, True), (0.5, False)):
        s = llpf.m2m(model, model, data, {**TABLES["m2m"], "loss_threshold": threshold}, device="cpu").summary
        assert s["floor_reached"] and s["paper_criteria"]["distance_ok"] and s["valid"] is valid
    assert set(s["final_distance"].values()) == {0.0} and s["batch_loss_exceedance"] is None


def test_in_a_batch_the_zero_length_path_ends_at_iteration_0_and_the_others_run_on():
    model, data = problem()
    torch.manual_seed(2)
    other = nn.Linear(5, 3)
    a, b = llpf.find_paths("m2m-batched", [model, model], data, TABLES["m2m"], dest=[model, other], device="cpu")
    assert a.summary["iterations"] == 0 and a.summary.get("zero_length") is True
    assert b.summary["iterations"] == 6 and "zero_length" not in b.summary
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), model.parameters()))


# ---------------------------------------------------------------- AutoNEB's tangent where pivots coincide


def test_the_tangent_is_zero_where_the_pivots_leave_no_direction():
    p, q = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])
    for prev, cur, nxt, losses in ((p, p, p, [1, 1, 1]), (p, p, p, [1, 2, 1]), (p, q, p, [1, 2, 1]),
                                   (p, q, p, [1, 1, 1])):
        assert torch.equal(tangent(prev, cur, nxt, losses), torch.zeros(2))
    # one neighbour coinciding with the pivot still leaves the other segment's direction
    torch.testing.assert_close(tangent(p, q, q, [1, 2, 2]), (q - p) / (q - p).norm())


def test_a_band_between_one_model_and_itself_stays_finite():
    model, data = problem()
    cfg = AutoNEBConfig(cycles=(Cycle(5, 0.05),) * 2, points_per_segment=2)
    neb = AutoNEB(model, model, BatchStream(data, 32, seed=0), data, cfg)
    records = neb.run()
    assert all(math.isfinite(r["max_loss"]) for r in records)
    assert torch.isfinite(neb.path()).all()
