"""Straight lines between models, BatchNorm recomputation, and the segments of a saved path."""
import json

import pytest
import torch
from torch import nn

from llpf.analysis.barriers import interpolate_state, line_summary, path_segments, straight_line, write_segments
from llpf.data import Split
from llpf.train import evaluate, recompute_bn_stats


def mlp(seed, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(4, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.ReLU(), nn.Linear(8, 3)]
    return nn.Sequential(*layers)


def split(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))


def test_interpolation_is_exact_at_the_ends_and_linear_between():
    a, b = mlp(0).state_dict(), mlp(1).state_dict()
    assert all(torch.equal(interpolate_state(a, b, 0.0)[k], a[k]) for k in a)
    assert all(torch.equal(interpolate_state(a, b, 1.0)[k], b[k]) for k in a)
    mid = interpolate_state(a, b, 0.25)
    torch.testing.assert_close(mid["0.weight"], 0.75 * a["0.weight"] + 0.25 * b["0.weight"])


def test_straight_line_ends_equal_the_models_and_the_middle_is_the_average():
    a, b, data = mlp(0), mlp(1), split()
    rows = straight_line(a, b, data, points=5)
    assert [r["t"] for r in rows] == [0, 0.25, 0.5, 0.75, 1]
    assert rows[0]["loss"] == pytest.approx(evaluate(a, data.batches(1024))["loss"], rel=1e-6)
    assert rows[-1]["loss"] == pytest.approx(evaluate(b, data.batches(1024))["loss"], rel=1e-6)
    mid = mlp(2)
    mid.load_state_dict(interpolate_state(a.state_dict(), b.state_dict(), 0.5))
    assert rows[2]["loss"] == pytest.approx(evaluate(mid, data.batches(1024))["loss"], rel=1e-6)
    s = line_summary(rows, "loss")
    assert s["max_loss"] == max(r["loss"] for r in rows)
    # named splits give prefixed keys
    rows = straight_line(a, b, {"train": data, "test": split(seed=1)}, points=2)
    assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy", "t"} <= set(rows[0])


def test_batchnorm_statistics_are_recomputed_exactly():
    m, data = mlp(0, bn=True), split(48)
    bn = m[1]
    recompute_bn_stats(m, data.batches(16))
    with torch.no_grad():
        h = [m[0](x) for x, _ in data.batches(16)]
    # momentum=None: the running statistics are the plain average over the batches
    torch.testing.assert_close(bn.running_mean, torch.stack([x.mean(0) for x in h]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([x.var(0, unbiased=True) for x in h]).mean(0))
    assert bn.momentum == 0.1 and m.training  # momentum and mode restored


def test_straight_line_recomputes_bn_by_default_for_batchnorm_models():
    a, b, data = mlp(0, bn=True), mlp(1, bn=True), split()
    auto = straight_line(a, b, data, points=3)
    off = straight_line(a, b, data, points=3, recompute_bn=False)
    on = straight_line(a, b, data, points=3, recompute_bn=True)
    assert auto == on and auto[1]["loss"] != off[1]["loss"]
    assert a[1].running_mean.abs().sum() == 0  # the given models are left as they were


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from analysis_runs import shared_runs

    return shared_runs(tmp_path_factory)


def test_path_segments_share_ends_with_the_points_and_update_the_summary(runs):
    from llpf.analysis.runs import run_config
    from llpf.runner import load_model, prepare_data
    from llpf.store import RunDir

    cfg = run_config(runs["m2m"])
    data = prepare_data(cfg, "cpu")
    res = path_segments(runs["m2m"], data, points_per_segment=3)
    segs = res["segments"]
    assert [(s["from"], s["to"]) for s in segs] == [(0, 2), (2, 4), (4, 6)]
    assert len(segs[0]["train_loss"]) == 5 and segs[0]["t"] == [0, 0.25, 0.5, 0.75, 1]
    for s0, s1 in zip(segs, segs[1:]):
        assert s0["train_loss"][-1] == s1["train_loss"][0]
    # a segment is the straight line between its two saved points
    pts = dict(RunDir(runs["m2m"]).points())
    line = straight_line(load_model(cfg, pts[2]), load_model(cfg, pts[4]), data.train, points=5)
    assert [r["loss"] for r in line] == pytest.approx(segs[1]["train_loss"], rel=1e-6)
    assert res["segment_max_train_loss"] == max(max(s["train_loss"]) for s in segs)
    before = json.loads((runs["m2m"] / "summary.json").read_text())
    write_segments(runs["m2m"], res)
    after = json.loads((runs["m2m"] / "summary.json").read_text())
    assert after["segment_max_train_loss"] == res["segment_max_train_loss"]
    assert {k: after[k] for k in before} == before
    assert (runs["m2m"] / "segments.json").is_file() and (runs["m2m"] / "figures" / "segments.png").is_file()
