"""Layer-wise linear connectivity: groups, lines, the numbers with known answers, shared points, paths, files."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llpf.analysis.barriers import path_segments, straight_line
from llpf.analysis.layerwise import layer_groups, layerwise, path_layerwise
from llpf.analysis.layerwise_output import write_layerwise
from llpf.data import Split
from llpf.errors import ConfigError, ModelMismatchError, RunDirError
from llpf.train import evaluate


def split(n=64, width=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, width, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g))


class Parallel(nn.Module):
    """Three linear layers side by side on the same input; each layer's output is its own slice."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.l0, self.l1, self.l2 = nn.Linear(4, 2), nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, x):
        return torch.stack([self.l0(x), self.l1(x), self.l2(x)], dim=1)


def per_layer_terms(out, y):
    """A sum of one non-convex term per layer: each depends on its own layer's parameters only."""
    return torch.sin(2 * out).pow(2).mean(dim=(0, 2)).sum()


def test_a_loss_that_is_a_sum_of_per_layer_terms_has_zero_coupling():
    a, b, data = Parallel(0).double(), Parallel(1).double(), split()
    r = layerwise(a, b, data, loss_fn=per_layer_terms, metrics={}, points=5)
    la, lb = r["endpoints"]["a"]["loss"], r["endpoints"]["b"]["loss"]
    assert abs(la - lb) > 1e-3  # the base's own term, L(base) in C_ij, matters
    assert all(abs(v) > 1e-3 for s in r["single"].values() for v in s.values())  # every layer has a barrier alone
    for base, m in r["coupling"].items():
        assert max(abs(x) for row in m for x in row) < 1e-12, base
        assert abs(r["decomposition"][base]["higher_order"]) < 1e-12
    # the pair's barrier minus the larger single one is not zero here: two independent bumps add
    p = r["pairs"]["rest_at_a"]
    assert max(abs(p[i][j] - max(p[i][i], p[j][j])) for i in range(3) for j in range(3) if i != j) > 1e-3
    # the cumulative sets: the first k groups' rises add up, from either side
    for side, order in (("from_input", ["l0", "l1", "l2"]), ("from_output", ["l2", "l1", "l0"])):
        for base, end in (("rest_at_a", la), ("rest_at_b", lb)):
            m0 = end - (la + lb) / 2  # the empty set's barrier: the base itself
            for k, step in enumerate(r["cumulative"][side], start=1):
                want = m0 + sum(r["single"][n][base] - m0 for n in order[:k])
                assert step["added"] == order[k - 1]
                assert step[base] == pytest.approx(want, abs=1e-12)


def test_the_coupling_of_two_layers_is_their_cross_term():
    """loss = per-layer terms + k * mean(out_0 * out_1): C_01 = k * mean(Δ0 Δ1) / 4 on either base, 0 elsewhere."""
    a, b, data = Parallel(0).double(), Parallel(1).double(), split()
    with torch.no_grad():
        d0 = b.l0(data.x) - a.l0(data.x)
        d1 = b.l1(data.x) - a.l1(data.x)
    cross = float((d0 * d1).mean())
    k = 20.0 if cross > 0 else -20.0

    def loss(out, y):
        return per_layer_terms(out, y) + k * (out[:, 0] * out[:, 1]).mean()

    r = layerwise(a, b, data, loss_fn=loss, metrics={}, points=3)
    for base, c in r["coupling"].items():
        assert c[0][1] == c[1][0] == pytest.approx(k * cross / 4, rel=1e-9), base
        assert abs(c[0][2]) < 1e-12 and abs(c[1][2]) < 1e-12
        assert abs(r["decomposition"][base]["higher_order"]) < 1e-12  # a bilinear term has no third order
    assert r["carriers"]["pairs"] == ([["l0", "l1"]] if k * cross / 4 >= 0.25 * r["whole_model_barrier"] > 0 else [])


def test_carriers_name_the_groups_and_pairs_that_reach_the_fraction():
    from llpf.analysis.coupling import carriers

    names = ["x", "y", "z"]
    steps = lambda vals: [{"k": k + 1, "added": n, "rest_at_a": v, "rest_at_b": v / 2}  # noqa: E731
                          for k, (n, v) in enumerate(zip(names, vals))]
    result = {"whole_model_barrier": 2.0,
              "single": {"x": {"rest_at_a": 0.1, "rest_at_b": 0.6}, "y": {"rest_at_a": 0.4, "rest_at_b": 0.3},
                         "z": {"rest_at_a": 0.5, "rest_at_b": -1.0}},
              "coupling": {"rest_at_a": [[0, 0.2, 0.9], [0.2, 0, 1.5], [0.9, 1.5, 0]],
                           "rest_at_b": [[0, 0.6, 0.1], [0.6, 0, 0.1], [0.1, 0.1, 0]]},
              "cumulative": {"from_input": steps([0.1, 1.0, 2.0]), "from_output": steps([0.5, 1.2, 2.0])}}
    c = carriers(result, names, 0.25)  # 0.25 * 2.0 = 0.5: x (0.6 at B) and z (0.5 at A); pairs by strength
    assert c["groups"] == ["x", "z"]
    assert c["pairs"] == [["y", "z"], ["x", "z"], ["x", "y"]]
    # half the whole-model barrier (1.0) first reached: from the input side on adding y (A) and z (B)
    assert c["appears_at"]["from_input"] == {"rest_at_a": "y", "rest_at_b": "z"}
    assert c["appears_at"]["from_output"] == {"rest_at_a": "y", "rest_at_b": "z"}
    assert carriers({**result, "whole_model_barrier": -0.1}, names, 0.25)["groups"] == []  # no barrier, no carrier


def linear_pair(c=4.0):
    """y = w1 w0 x: A has (w0, w1) = (1, 1), B the same function rescaled between the layers, (c, 1/c)."""
    a = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)).double()
    b = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)).double()
    with torch.no_grad():
        a[0].weight.fill_(1.0), a[1].weight.fill_(1.0)
        b[0].weight.fill_(c), b[1].weight.fill_(1 / c)
    x = torch.randn(50, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return a, b, Split(x, x.clone())


def test_two_layer_linear_model_with_a_rescaling_between_the_layers():
    """By hand, loss = (w1 w0 - 1)^2 s with s = mean(x^2), A and B at loss 0, c = 4:

    layer 0 alone at λ=½: rest at A w0 = 2.5, w1 = 1 -> (1.5)^2 s = 2.25 s; rest at B w0 = 2.5, w1 = 1/4 -> 0.140625 s;
    layer 1 alone: rest at A 0.625 -> 0.140625 s; rest at B 4 * 0.625 = 2.5 -> 2.25 s;
    both (the whole model): 2.5 * 0.625 = 1.5625 -> 0.31640625 s;
    coupling = 0.31640625 s - 2.25 s - 0.140625 s + 0 = -2.07421875 s on both bases.
    Along the whole line w1 w0 - 1 = (c-1)^2/c λ(1-λ), largest at λ=½. A single layer's line is convex: no bump.
    """
    a, b, data = linear_pair()
    s = float(data.x.pow(2).mean())
    r = layerwise(a, b, data, loss_fn=F.mse_loss, metrics={}, points=11)
    assert r["endpoints"]["a"]["loss"] == 0 and r["endpoints"]["b"]["loss"] == 0
    assert r["single"]["0"] == pytest.approx({"rest_at_a": 2.25 * s, "rest_at_b": 0.140625 * s}, rel=1e-12)
    assert r["single"]["1"] == pytest.approx({"rest_at_a": 0.140625 * s, "rest_at_b": 2.25 * s}, rel=1e-12)
    assert r["whole_model_barrier"] == pytest.approx(0.31640625 * s, rel=1e-12)
    assert r["whole_model"]["max"] == pytest.approx(0.31640625 * s, rel=1e-12) and r["whole_model"]["t_at_max"] == 0.5
    for base in ("rest_at_a", "rest_at_b"):
        assert r["coupling"][base][0][1] == pytest.approx(-2.07421875 * s, rel=1e-12)
        assert r["single_max"]["0"][base] == pytest.approx(0, abs=1e-12)
    assert [c["set"] for c in r["cumulative"]["from_input"]] == ["0", "0..1"]
    assert r["cumulative"]["from_output"][0]["rest_at_a"] == r["single"]["1"]["rest_at_a"]


def test_every_shared_point_is_evaluated_once():
    """Two groups on the grid λ ∈ {0, ½, 1}: every line's points lie on the 3 x 3 grid of (t_0, t_1), 9 in all."""
    a, b, data = linear_pair()
    calls = []

    def counted(out, y):
        calls.append(1)
        return F.mse_loss(out, y)

    r = layerwise(a, b, data, loss_fn=counted, metrics={}, points=3)
    assert r["settings"]["evaluations"] == len(calls) == 9
    assert len(r["rows"]) > 9 * 3  # the lines list many more points than were evaluated


def test_lambda_0_and_1_reproduce_the_endpoints_exactly(digits):
    from llpf.models import LeNet5

    torch.manual_seed(0)
    a, b = LeNet5(image_size=32), LeNet5(image_size=32)
    data = {"train": digits.train.subset(256), "test": digits.test.subset(128)}
    r = layerwise(a, b, data, points=3)
    ends = {base: {f"{s}_{k}": v for s in data for k, v in evaluate(m, data[s].batches(1024)).items()}
            for base, m in (("a", a), ("b", b))}
    assert r["endpoints"]["a"] == {"span": "a-b", "kind": "whole", "set": "all", "base": "", "lambda": 0.0, **ends["a"]}
    assert r["endpoints"]["b"]["train_loss"] == ends["b"]["train_loss"]
    for row in r["rows"]:
        if row["kind"] != "whole" and row["lambda"] == (0.0 if row["base"] == "a" else 1.0):
            assert {k: row[k] for k in ends["a"]} == ends[row["base"]], row
    assert r["groups"] == ["conv1", "conv2", "fc1", "fc2", "fc3"]


def test_groups_are_modules_or_tensors_and_buffers_go_with_their_module():
    from llpf.models import LeNet5
    from llpf.models.resnet18 import resnet18_cifar
    from tiny import ConvBN

    assert layer_groups(LeNet5())["fc1"] == ["fc1.weight", "fc1.bias"]
    assert list(layer_groups(LeNet5(), "tensors"))[:3] == ["conv1.weight", "conv1.bias", "conv2.weight"]
    g = layer_groups(ConvBN())
    assert list(g) == ["conv", "norm", "out"]
    assert g["norm"] == ["norm.weight", "norm.bias", "norm.running_mean", "norm.running_var", "norm.num_batches_tracked"]
    assert layer_groups(ConvBN(), "tensors")["norm.weight"][1:] == ["norm.running_mean", "norm.running_var",
                                                                   "norm.num_batches_tracked"]
    blocks = layer_groups(resnet18_cifar(), "blocks")
    assert list(blocks) == ["conv1", "bn1"] + [f"layer{i}.{j}" for i in range(1, 5) for j in (0, 1)] + ["fc"]
    assert "layer2.0.downsample.1.running_var" in blocks["layer2.0"] and layer_groups(LeNet5(), "blocks") == \
        layer_groups(LeNet5())
    assert layer_groups(nn.BatchNorm1d(3, affine=False)) == {
        "running_mean": ["running_mean"], "running_var": ["running_var"], "num_batches_tracked": ["num_batches_tracked"]}


def test_batchnorm_statistics_are_recomputed_by_default_and_raw_on_request(digits):
    from tiny import ConvBN

    torch.manual_seed(0)
    a, b = ConvBN(), ConvBN()
    data = {"train": digits.train.subset(128)}
    auto = layerwise(a, b, data, points=3)
    raw = layerwise(a, b, data, points=3, recompute_bn=False)
    assert auto["settings"]["recompute_bn"] is True and "recomputed" in auto["settings"]["batchnorm"]
    whole = [r["train_loss"] for r in auto["rows"] if r["kind"] == "whole"]
    assert whole == [r["train_loss"] for r in straight_line(a, b, data, points=3)]
    # raw: the running statistics move with their module's group, so the whole line is the raw straight line
    assert [r["train_loss"] for r in raw["rows"] if r["kind"] == "whole"] == [
        r["train_loss"] for r in straight_line(a, b, data, points=3, recompute_bn=False)]
    assert raw["single"]["norm"] != auto["single"]["norm"]


def test_a_fixed_training_subset(digits):
    from llpf.models import LeNet5

    torch.manual_seed(0)
    a, b = LeNet5(image_size=32), LeNet5(image_size=32)
    r = layerwise(a, b, digits, points=3, train_samples=100)
    assert r["settings"]["train_samples"] == 100 and r["settings"]["test_samples"] == len(digits.test)
    sub = digits.train.subset(100, seed=0)
    assert r["endpoints"]["a"]["train_loss"] == evaluate(a, sub.batches(1024))["loss"]
    r = layerwise(a, b, digits, points=3, test_samples=50)
    assert r["settings"]["train_samples"] == len(digits.train) and r["settings"]["test_samples"] == 50
    assert r["endpoints"]["b"]["test_loss"] == evaluate(b, digits.test.subset(50, seed=0).batches(1024))["loss"]


@pytest.mark.parametrize("kwargs, message", [({"points": 4}, "odd"), ({"points": 1}, "odd"),
                                             ({"groups": "layers"}, "groups"), ({"train_samples": -1}, "train"),
                                             ({"test_samples": -2}, "test samples"),
                                             ({"carrier_fraction": 0}, "fraction")])
def test_bad_settings_are_one_line_errors_before_any_evaluation(kwargs, message):
    a, b, data = linear_pair()
    calls = []
    with pytest.raises(ConfigError, match=message):
        layerwise(a, b, data, loss_fn=lambda o, y: calls.append(1) or F.mse_loss(o, y), metrics={}, **kwargs)
    assert not calls
    with pytest.raises(ModelMismatchError):
        layerwise(a, nn.Sequential(nn.Linear(1, 2), nn.Linear(2, 1)), data, loss_fn=F.mse_loss, metrics={})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from analysis_runs import shared_runs

    return shared_runs(tmp_path_factory)


def test_along_a_path_the_segments_between_saved_points(runs, monkeypatch):
    from llpf.analysis.barriers import PointEvaluator
    from llpf.analysis.runs import run_config
    from llpf.runner import prepare_data
    from llpf.store import RunDir

    seen, at = [], PointEvaluator.at
    monkeypatch.setattr(PointEvaluator, "at", lambda self, state: seen.append(
        torch.cat([v.reshape(-1).double() for v in state.values()])) or at(self, state))
    data = prepare_data(run_config(runs["m2m"]), "cpu")
    r = path_layerwise(runs["m2m"], data, points=5)
    its = [i for i, _ in RunDir(runs["m2m"]).points()]
    assert r["run"]["points"] == its and r["rows"][0]["span"] == f"{its[0]}-{its[-1]}"
    assert [(s["from"], s["to"]) for s in r["segments"]] == list(zip(its, its[1:]))
    # every state evaluated once, though each saved point ends two segments (and the first and last the full span)
    assert len(seen) == r["settings"]["evaluations"] == len(torch.stack(seen).unique(dim=0))
    seg = path_segments(runs["m2m"], data, points_per_segment=3)["segments"]
    for mine, theirs in zip(r["segments"], seg):
        span = f"{mine['from']}-{mine['to']}"
        whole = [x["train_loss"] for x in r["rows"] if x["span"] == span and x["kind"] == "whole"]
        assert whole == pytest.approx(theirs["train_loss"], rel=1e-6)
        assert set(mine["single"]) == set(r["groups"]) and mine["largest_single"]["group"] in r["groups"]
    assert set(r["coupling"]) == {"rest_at_a", "rest_at_b"}  # the first-to-last span: the full analysis
    assert r["endpoints"]["a"]["train_loss"] == r["segments"][0]["endpoints"]["a"]["train_loss"]
    assert r["endpoints"]["b"]["train_loss"] == r["segments"][-1]["endpoints"]["b"]["train_loss"]


def test_a_path_needs_an_m2m_or_m2o_run_with_two_saved_points(runs, tmp_path):
    import shutil

    with pytest.raises(RunDirError, match="config.toml"):
        path_layerwise(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(runs["m2m"], run)
    for f in sorted((run / "points").iterdir())[1:]:
        f.unlink()
    with pytest.raises(RunDirError, match="fewer than two saved points"):
        path_layerwise(run)


def test_files_and_report_section(runs, tmp_path):
    from llpf.analysis.report import build_report
    from llpf.analysis.runs import run_config
    from llpf.runner import load_model, prepare_data

    cfg = run_config(runs["m2m"])
    a, b = load_model(cfg, runs["a"]), load_model(cfg, runs["b"])
    r = layerwise(a, b, prepare_data(cfg, "cpu"), points=3)
    files = write_layerwise(r, tmp_path / "lw", {"a": str(runs["a"])})
    j = json.loads(files["json"].read_text())
    assert isinstance(j["whole_model_barrier"], float) and "rows" not in j
    assert set(j["single"]) == set(r["groups"]) and set(j["single"]["fc1"]) == {"rest_at_a", "rest_at_b"}
    assert {"groups", "pairs", "appears_at"} <= set(j["carriers"])
    lines = files["csv"].read_text().splitlines()
    assert lines[0].startswith("span,kind,set,base,lambda,train_loss") and len(lines) == len(r["rows"]) + 1
    for k in ("single", "cumulative", "coupling"):
        assert files[k].stat().st_size > 5_000
    html = build_report([tmp_path / "lw"], tmp_path / "report").read_text()
    assert "Layer-wise linear connectivity" in html and html.count("<img") >= 3


def test_the_command_on_two_models_and_on_a_run(runs, tmp_path, capsys):
    from llpf.analysis.report import build_report
    from llpf.cli import main

    cfg, a, b = str(runs["config"]), str(runs["a"]), str(runs["b"])
    out = tmp_path / "lw"
    assert main(["layerwise", cfg, a, b, "--out", str(out), "--points", "3", "--groups", "tensors", "--train-samples",
                 "64", "--quiet"]) == 0
    printed = capsys.readouterr().out
    j = json.loads((out / "layerwise.json").read_text())
    assert j["inputs"] == {"config": "tiny", "a": a, "b": b} and j["settings"]["groups"] == "tensors"
    assert len(j["groups"]) == 10 and f"whole-model barrier (train_loss at λ=0.5 minus the endpoints' mean): " \
        f"{j['whole_model_barrier']:.4f}" in printed and "fc1.bias" in printed
    assert main(["layerwise", cfg, a, b, "--out", str(out), "--points", "3"]) == 2  # a finished output is kept
    assert "not empty" in capsys.readouterr().err
    run = tmp_path / "m2m"
    import shutil

    shutil.copytree(runs["m2m"], run)
    assert main(["layerwise", str(run), "--points", "3", "--train-samples", "100", "--quiet"]) == 0
    assert "segments between saved points" in capsys.readouterr().out
    j = json.loads((run / "layerwise" / "layerwise.json").read_text())
    assert j["settings"]["train_samples"] == 100 and len(j["segments"]) == len(j["run"]["points"]) - 1
    assert "Layer-wise linear connectivity" in build_report([run], tmp_path / "report", pca=False).read_text()


@pytest.mark.parametrize("argv, message", [
    (["A", "B"], "CONFIG A B or one RUN"), (["C", "A", "B"], "--out is required"),
    (["C", "A", "B", "--out", "o", "--points", "4"], "must be odd"),
    (["C", "A", "B", "--out", "o", "--carrier-fraction", "2"], r"\(0, 1\]"),
    (["C", "A", "B", "--out", "o", "--train-samples", "-5"], "at least 0"),
    (["C", "A", "B", "--out", "o", "--test-samples", "x"], "expected an integer"),
    (["C", "A", "B", "--out", "o", "--groups", "layers"], "invalid choice")])
def test_command_line_mistakes_are_one_line(argv, message, capsys):
    import re

    from llpf.cli import main

    assert main(["layerwise", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
