"""Dimensionality of the low-loss space: dead units, the softmax constraint, float64 displacements."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llpf.analysis.dimension import (MoveSettings, analyse_dimension, entropy_rank, low_loss_moves,
                                     participation_ratio, rank_at, tolerances)
from llpf.analysis.units import find_dead_units, structure
from llpf.data import BatchStream, Split
from llpf.models.lenet5 import LeNet5


class MLP(nn.Module):
    def __init__(self, d_in=5, hidden=7, classes=3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, classes)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def dead_mlp(dead=2):
    """An MLP whose hidden unit ``dead`` can never activate: zero incoming weights, bias -10."""
    torch.manual_seed(0)
    m = MLP()
    with torch.no_grad():
        m.fc1.weight[dead] = 0.0
        m.fc1.bias[dead] = -10.0
        m.fc1.bias[[i for i in range(7) if i != dead]] = 0.5  # every other unit alive
    return m


def toy_split(n=96, d_in=5, classes=3):
    g = torch.Generator().manual_seed(1)
    return Split(torch.randn(n, d_in, generator=g), torch.randint(0, classes, (n,), generator=g))


def test_dead_unit_found_named_and_explains_the_bias_rank():
    data = toy_split()
    r = analyse_dimension(dead_mlp(), data, MoveSettings(moves=12, rounds=2, batch_size=16, lr=0.05))
    assert r["dead_units"] == ["fc1 unit 2"]
    L = r["layers"]
    # fc1.bias: 7 entries, one frozen by the dead unit -> 6 directions, and nothing else missing
    assert L["fc1.bias"]["rank"]["compute"] == 6 == L["fc1.bias"]["structural_bound"]
    assert L["fc1.bias"]["dead_units"] == ["fc1 unit 2"]
    d = r["bias_rank_deficits"]["fc1.bias"]
    assert d["structural_deficit"] == d["dead_units"] == d["rank_deficit"]["compute"] == 1 and not d["softmax"]
    assert "compute" in d["explained_at"]
    # the dead unit's incoming row and the outgoing column are exactly zero in every move
    assert L["fc1.weight"]["zero_gradient_params_observed"] == L["fc1.weight"]["zero_gradient_params_predicted"] == 5
    assert L["fc2.weight"]["zero_gradient_params_observed"] == L["fc2.weight"]["zero_gradient_params_predicted"] == 3
    # fc1.weight has 35 - 5 = 30 free entries, more than 12 moves: full rank 12
    assert L["fc1.weight"]["rank"]["compute"] == 12 == L["fc1.weight"]["full_rank"]


def test_last_bias_has_c_minus_1_directions_under_softmax():
    data = toy_split()
    r = analyse_dimension(dead_mlp(), data, MoveSettings(moves=12, rounds=2, batch_size=16, lr=0.05))
    b = r["layers"]["fc2.bias"]
    assert r["output_module"] == "fc2" and b["softmax_constraint"]
    assert b["rank"]["compute"] == 2 and b["structural_bound"] == 2
    assert b["structural_zero_indices"] == [2]
    # the third singular value is rounding: far below the tolerance, while the second is not
    assert b["structural_zero_relative"][0] < b["tolerances"]["compute"]["relative"] / 10
    assert b["relative_singular_values"][1] > 1e-3
    # last weight: (C-1) per live input column -> 2 * 6 = 12 free, 12 moves
    assert r["layers"]["fc2.weight"]["structural_bound"] == 12


def test_the_softmax_zero_sits_at_the_rounding_level_of_the_gradients():
    data, s = toy_split(), dict(moves=8, rounds=2, batch_size=16, lr=0.05)
    b64 = analyse_dimension(dead_mlp(), data, MoveSettings(**s, dtype="float64"))["layers"]["fc2.bias"]
    b32 = analyse_dimension(dead_mlp(), data, MoveSettings(**s, dtype="float32"))["layers"]["fc2.bias"]
    assert b64["structural_zero_relative"][0] < 1e-13 and b64["rank"]["float64 rule"] == 2
    # float32 gradients: the constraint holds only to float32 rounding, so float64's rule sees a third direction
    assert 1e-13 < b32["structural_zero_relative"][0] < 1e-5
    assert b32["rank"]["float64 rule"] == 3 and b32["rank"]["compute"] == 2


def test_displacement_is_the_float64_sum_of_sgd_updates():
    """With one round, move i is exactly -lr * grad at the start on the first batch of stream seed i.

    float32 gradients, summed in float64: the move keeps every digit of the update, which a difference
    of float32 weights would not.
    """
    model, data = dead_mlp(), toy_split()
    s = MoveSettings(moves=3, rounds=1, batch_size=16, lr=0.05, seed=7, dtype="float32")
    mats, _ = low_loss_moves(model, data, s)
    for i in range(3):
        x, y = next(BatchStream(data, 16, seed=7 + i))
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        expect = -0.05 * model.fc2.weight.grad.double().reshape(-1)
        torch.testing.assert_close(mats["fc2.weight"][i], expect, rtol=1e-12, atol=1e-15)
    # two rounds: the second step starts where the first left off (a real Train_r, not two gradients at P)
    two, _ = low_loss_moves(model, data, MoveSettings(moves=1, rounds=2, batch_size=16, lr=0.05, seed=7,
                                                      dtype="float32"))
    stream = BatchStream(data, 16, seed=7)
    m = dead_mlp()
    total = torch.zeros(m.fc2.weight.numel(), dtype=torch.float64)
    for _ in range(2):
        x, y = next(stream)
        m.zero_grad()
        F.cross_entropy(m(x), y).backward()
        total -= 0.05 * m.fc2.weight.grad.double().reshape(-1)
        with torch.no_grad():
            for p in m.parameters():
                p -= 0.05 * p.grad
    torch.testing.assert_close(two["fc2.weight"][0], total, rtol=1e-6, atol=1e-12)


def test_reused_relu_module_is_attributed_per_call():
    """LeNet5 calls one ReLU module four times; a dead fc1 unit is named as fc1's, and fc2 sees a dead input."""
    torch.manual_seed(0)
    m = LeNet5()
    with torch.no_grad():
        m.fc1.weight[17] = 0.0
        m.fc1.bias[17] = -5.0
    x = torch.randn(16, 1, 32, 32)
    units = find_dead_units(m, [(x, torch.zeros(16, dtype=torch.long))])
    assert "fc1 unit 17" in units.names()
    assert 17 in units.dead_inputs["fc2"]
    assert units.output_module == "fc3" and units.unattributed == 0
    st = structure(m, units)
    assert st["fc1.bias"].zero[17] and st["fc2.weight"].zero[:, 17].all()
    assert st["fc3.bias"].free == 9


def test_dead_channel_through_batchnorm_freezes_conv_and_bn():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 2))
    with torch.no_grad():
        m[1].weight[1] = 0.0
        m[1].bias[1] = -1.0
    units = find_dead_units(m, [(torch.randn(8, 1, 8, 8), None)])
    assert units.names() == ["0 unit 1 (through 1)"]
    st = structure(m, units)
    assert st["0.weight"].zero[1].all() and st["0.bias"].zero[1] and st["1.weight"].zero[1] and st["1.bias"].zero[1]
    assert st["4.weight"].zero[:, 36:72].all()  # the flattened dead channel's 36 inputs


def test_effective_dimensions_and_tolerances():
    assert participation_ratio(torch.ones(4)) == pytest.approx(4)
    assert entropy_rank(torch.ones(5)) == pytest.approx(5)
    assert participation_ratio(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(1)
    s = torch.tensor([1.0, 1e-3, 1e-9, 0.0], dtype=torch.float64)
    assert rank_at(s, 1e-6) == 2 and rank_at(s, 1e-12) == 3
    t = tolerances((200, 10), 2.0, "float32")
    assert t["compute"]["relative"] == pytest.approx(200 * torch.finfo(torch.float32).eps)
    assert t["float64 rule"]["absolute"] == pytest.approx(2.0 * 200 * torch.finfo(torch.float64).eps)
    assert math.isclose(t["relative 0.001"]["absolute"], 2e-3)


def test_settings_are_checked():
    from llpf.errors import ConfigError

    with pytest.raises(ConfigError):
        MoveSettings(dtype="float16")
    with pytest.raises(ConfigError, match="GiB"):
        low_loss_moves(dead_mlp(), toy_split(), MoveSettings(moves=10, max_bytes=100))


def test_rarely_active_units_are_counted_per_sample():
    torch.manual_seed(0)
    m = MLP(d_in=2, hidden=3, classes=2)
    with torch.no_grad():
        m.fc1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))
        m.fc1.bias.copy_(torch.tensor([0.0, -1.0, -0.5]))
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]] * 25)  # unit 2 active on 25 of 100
    units = find_dead_units(m, [(x, None)])
    assert units.names() == ["fc1 unit 1"]
    assert units.active["fc1"].tolist() == [50, 0, 25]
    assert units.rarely_active(0.3) == {"fc1 unit 2": 25} and units.rarely_active(0.2) == {}
