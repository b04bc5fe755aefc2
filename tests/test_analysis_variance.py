"""Layer-variance consistency (paper Figure 6, Eq. 4)."""
import math

import pytest
import torch
from torch import nn

from llpf.analysis.variance import (analyse_variances, check_variance_pair, layer_variances, relative_difference,
                                    write_variance)


def net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))


def test_layer_variance_is_the_population_variance():
    m = net(0)
    v = layer_variances(m)
    assert v["0.weight"] == pytest.approx(float(m[0].weight.detach().double().var(unbiased=False)))
    assert list(v) == [n for n, _ in m.named_parameters()]


def test_check_variance_pair_names_exactly_the_layers_that_differ():
    a = net(0)
    b = net(0)
    with torch.no_grad():
        b[3].weight.mul_(2.0)  # variance x4: relative difference 3
    flagged = check_variance_pair(a, b, tolerance=0.25)
    assert [f["layer"] for f in flagged] == ["3.weight"]
    f = flagged[0]
    assert f["relative_difference"] == pytest.approx(3.0)
    n = a[3].weight.numel()
    sa, sb = math.sqrt(f["start_variance"]), math.sqrt(f["dest_variance"])
    assert f["distance_floor"] == pytest.approx(math.sqrt(n) * abs(sa - sb))
    assert check_variance_pair(a, b, tolerance=3.5) == []
    # state dicts work as well as modules
    assert [f["layer"] for f in check_variance_pair(a.state_dict(), b.state_dict(), 0.25)] == ["3.weight"]


def test_relative_difference_edge_cases():
    assert relative_difference(0.0, 0.0) == 0.0
    assert relative_difference(0.0, 1.0) == math.inf
    assert relative_difference(2.0, 1.0) == pytest.approx(0.5)


def test_analysis_leaves_out_norm_layers_like_figure_6(tmp_path):
    models = [net(s) for s in range(3)]
    r = analyse_variances(models, ["a", "b", "c"])
    assert "1.weight" not in r["variances"] and "0.weight" in r["variances"]
    assert len(r["variances"]["0.weight"]) == 3
    sp = r["spread"]["0.weight"]
    assert sp["min"] <= sp["mean"] <= sp["max"] and sp["max_over_min"] >= 1
    assert "1.weight" in analyse_variances(models, ["a", "b", "c"], include_norm=True)["variances"]
    files = write_variance(r, tmp_path)
    assert files["figure"].stat().st_size > 5_000 and files["json"].is_file()
