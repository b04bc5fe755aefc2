"""AutoNEB and Bezier curves: the NEB force, pivot insertion, fixed endpoints, and paths with known answers."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llpf.analysis.barriers import straight_line
from llpf.baselines.elastic_band import (AutoNEB, AutoNEBConfig, Band, Cycle, chain_points, insert_pivot, neb_force,
                                    paper_cycles, redistribute, tangent)
from llpf.baselines.bezier import Curve, CurveConfig, curve_point, lr_factor
from llpf.baselines.functional import FlatModel
from llpf.config import LineConfig, method_config
from llpf.data import BatchStream, Split
from llpf.errors import ConfigError


def unit(v):
    return v / v.norm()


def bn_mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def classes(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return Split(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())


# ---------------------------------------------------------------- the NEB force and tangent


def test_neb_force_loss_part_is_perpendicular_to_the_tangent_and_spring_part_parallel():
    g = torch.Generator().manual_seed(0)
    prev, cur, nxt, grad = (torch.randn(50, generator=g, dtype=torch.float64) for _ in range(4))
    tau = tangent(prev, cur, nxt, [0.0, 1.0, 2.0])
    assert float(tau.norm()) == pytest.approx(1.0)
    loss_part = neb_force(grad, tau, prev, cur, nxt, k=0.0)
    assert abs(float(loss_part @ tau)) < 1e-12 * float(grad.norm())
    # what was removed from -grad is exactly its component along the tangent
    removed = loss_part + grad
    assert float(unit(removed) @ tau) == pytest.approx(1.0) or float(unit(removed) @ tau) == pytest.approx(-1.0)
    assert float(loss_part.norm()) > 0.5 * float(grad.norm())  # a random gradient is mostly perpendicular in 50-D
    spring = neb_force(torch.zeros(50, dtype=torch.float64), tau, prev, cur, nxt, k=2.0)
    stretch = float((nxt - cur).norm() - (cur - prev).norm())
    torch.testing.assert_close(spring, 2.0 * stretch * tau)
    torch.testing.assert_close(neb_force(grad, tau, prev, cur, nxt, k=2.0), loss_part + spring)


def test_tangent_points_to_the_higher_neighbour_and_blends_at_an_extremum():
    prev, cur, nxt = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    torch.testing.assert_close(tangent(prev, cur, nxt, [0, 1, 2]), torch.tensor([0.0, 1.0]))  # uphill ahead
    torch.testing.assert_close(tangent(prev, cur, nxt, [2, 1, 0]), torch.tensor([1.0, 0.0]))  # uphill behind
    # a maximum: |dV| to next = 2, to prev = 3; next is higher, so fwd * 3 + back * 2
    torch.testing.assert_close(tangent(prev, cur, nxt, [0, 3, 1]), unit(torch.tensor([2.0, 3.0])))
    torch.testing.assert_close(tangent(prev, cur, nxt, [1, 3, 0]), unit(torch.tensor([3.0, 2.0])))
    torch.testing.assert_close(tangent(prev, cur, nxt, [1, 1, 1]), unit(torch.tensor([1.0, 1.0])))


class Plain(nn.Module):
    """A constant loss: no gradient, so only springs act."""

    def __init__(self, *w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, x):
        return (0 * self.w.sum()).expand(len(x))


def test_finite_springs_spread_the_pivots_evenly_along_the_band():
    a, b = Plain(0.0, 0.0), Plain(4.0, 0.0)
    fm = FlatModel(a, loss_fn=lambda out, y: out.mean())
    band = Band(fm, fm.vector(a), fm.vector(b), interior=3, spring=1.0)
    with torch.no_grad():
        band.inner.copy_(torch.tensor([[0.4, 0.0], [0.8, 0.0], [1.2, 0.0]]))
    opt = torch.optim.SGD([band.inner], lr=0.1)
    x, y = torch.zeros(1, 1), torch.zeros(1, dtype=torch.long)
    for _ in range(300):
        band.step(opt, x, y)
    torch.testing.assert_close(band.chain(), torch.tensor([[0.0, 0], [1, 0], [2, 0], [3, 0], [4, 0]]))


def test_flat_model_gradient_equals_the_module_gradient():
    m, data = bn_mlp(0), classes()
    x, y = data.x[:32], data.y[:32]
    fm = FlatModel(m)
    loss, grad = fm.loss_and_grad(fm.vector(m), x, y)
    m.train()
    ref = F.cross_entropy(m(x), y)
    ref.backward()
    assert float(loss) == pytest.approx(float(ref.detach()))
    torch.testing.assert_close(grad, torch.cat([p.grad.reshape(-1) for p in m.parameters()]))


# ---------------------------------------------------------------- pivot insertion and spacing


def line_chain(n):
    return torch.stack([torch.tensor([float(i), 0.0]) for i in range(n)])


# Pivot losses 0, 1, 1, 0 (the band's range is 1). Segment 0 rises from 0 to 1 with a bump above its chord
# (0.25, 0.5, 0.75): excess 0.35, 0.40, 0.20, largest at alpha 0.5 although its loss peaks at 0.75. Segment 1
# holds the band's highest loss (1.2) but only 0.2 above its flat chord; segment 2 stays within 0.05 of its chord.
ALPHAS = torch.tensor([0.25, 0.5, 0.75])
PIVOTS = torch.tensor([0.0, 1.0, 1.0, 0.0])
LOSSES = torch.tensor([[0.6, 0.9, 0.95], [1.1, 1.2, 1.1], [0.8, 0.5, 0.3]])


def test_insert_pivot_goes_where_the_loss_rises_most_above_the_chord_not_where_it_is_highest():
    """The published rule (fill.highest): rank segments by the excess over the interpolation between their
    pivots, insert at the point of that excess."""
    chain, weights = line_chain(4), torch.ones(3)
    new, w, inserted = insert_pivot(chain, weights, LOSSES, ALPHAS, PIVOTS, count=1)
    assert inserted == [(0, 0.5)]  # by the absolute peak it would be (1, 0.5); by segment 0's peak (0, 0.75)
    torch.testing.assert_close(new, torch.tensor([[0.0, 0], [0.5, 0], [1, 0], [2, 0], [3, 0]]))
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5, 1.0, 1.0]))
    new, w, inserted = insert_pivot(chain, weights, LOSSES, ALPHAS, PIVOTS, count=2)
    assert inserted == [(0, 0.5), (1, 0.5)]
    torch.testing.assert_close(new[3], torch.tensor([1.5, 0.0]))
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5, 0.5, 0.5, 1.0]))
    _, _, inserted = insert_pivot(chain, weights, LOSSES, ALPHAS, PIVOTS, count=3)
    assert inserted == [(0, 0.5), (1, 0.5)]  # segment 2's excess (0.05) is below the threshold 0.1


def test_insert_pivot_measures_the_excess_against_the_band_s_loss_range_and_the_threshold():
    chain, weights = line_chain(4), torch.ones(3)
    for scale in (10.0, 0.01):  # the rule is relative: the same insertions at any scale of the loss
        _, _, inserted = insert_pivot(chain, weights, LOSSES * scale, ALPHAS, PIVOTS * scale, count=2)
        assert inserted == [(0, 0.5), (1, 0.5)]
    _, _, inserted = insert_pivot(chain, weights, LOSSES, ALPHAS, PIVOTS, count=2, threshold=0.3)
    assert inserted == [(0, 0.5)]  # segment 1's excess 0.2 is not above 0.3
    _, _, none = insert_pivot(chain, weights, LOSSES, ALPHAS, PIVOTS, count=2, threshold=0.4)
    assert none == []  # nor segment 0's 0.4
    # segments whose loss stays below the chord never get a pivot, however high their loss
    convex = torch.tensor([[0.1, 0.3, 0.6], [0.9, 0.8, 0.9], [0.7, 0.4, 0.2]])
    _, _, none = insert_pivot(chain, weights, convex, ALPHAS, PIVOTS, count=3, threshold=0.0)
    assert none == []


def test_redistribute_moves_pivots_along_the_polygon_to_the_target_ratios():
    chain = torch.tensor([[0.0, 0.0], [0.2, 0.0], [1.0, 0.0], [1.0, 1.0]])
    out = redistribute(chain, torch.tensor([1.0, 1.0, 2.0]))  # length 2: pivots at arc length 0.5 and 1
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0], [0.5, 0.0], [1.0, 0.0], [1.0, 1.0]]))
    assert torch.equal(out[0], chain[0]) and torch.equal(out[-1], chain[-1])
    out = redistribute(chain, torch.ones(3))  # thirds of the length: 2/3 along x, then 1/3 up
    torch.testing.assert_close(out[1:3], torch.tensor([[2 / 3, 0.0], [1.0, 1 / 3]]))


def test_chain_points_cover_every_segment_with_arc_length_positions():
    chain = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 3.0]])
    pts = list(chain_points(chain, per_segment=1))
    assert [p for p, _ in pts] == pytest.approx([0, 0.125, 0.25, 0.625, 1.0])
    torch.testing.assert_close(torch.stack([v for _, v in pts]),
                               torch.tensor([[0.0, 0], [0.5, 0], [1, 0], [1, 1.5], [1, 3]]))


# ---------------------------------------------------------------- curves


def test_curve_formulas_and_the_learning_rate_schedule():
    a, th, b = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 2.0]), torch.tensor([4.0, 0.0])
    torch.testing.assert_close(curve_point("bezier", a, th, b, 0.5), 0.25 * a + 0.5 * th + 0.25 * b)
    torch.testing.assert_close(curve_point("polychain", a, th, b, 0.25), (a + th) / 2)
    torch.testing.assert_close(curve_point("polychain", a, th, b, 0.75), (th + b) / 2)
    assert curve_point("bezier", a, th, b, 0.0) is a and curve_point("bezier", a, th, b, 1.0) is b
    # the gradient reaching the bend is 2 t (1 - t) times the gradient at the point
    bend = th.clone().requires_grad_(True)
    curve_point("bezier", a, bend, b, 0.3).sum().backward()
    torch.testing.assert_close(bend.grad, torch.full((2,), 2 * 0.3 * 0.7))
    assert [lr_factor(p) for p in (0.0, 0.5, 0.7, 0.9, 0.95)] == pytest.approx([1, 1, 0.505, 0.01, 0.01])


@pytest.mark.parametrize("kind", ["bezier", "polychain"])
def test_curve_endpoints_stay_fixed_to_the_bit_while_the_bend_trains(kind):
    a, b, data = bn_mlp(0), bn_mlp(1), classes()
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (a, b)]
    curve = Curve(a, b, BatchStream(data, 32), CurveConfig(kind=kind, steps=40, lr=0.05))
    va, vb = FlatModel(a).vector(a), FlatModel(b).vector(b)
    mid = (va + vb) / 2
    curve.run()
    assert torch.equal(curve.point(0.0), va) and torch.equal(curve.point(1.0), vb)
    assert torch.equal(curve.a, va) and torch.equal(curve.b, vb)
    for m, saved in zip((a, b), before):
        assert all(torch.equal(v, saved[k]) for k, v in m.state_dict().items())
    moved = float((curve.bend.detach() - mid).norm())
    assert moved > 1e-2 * float((vb - va).norm())


def test_untrained_bezier_is_the_straight_line_evaluated_with_batchnorm_recomputed():
    # with the bend at the midpoint, (1-t)^2 a + t(1-t)(a+b) + t^2 b = (1-t) a + t b
    a, b, train, test = bn_mlp(0), bn_mlp(1), classes(seed=0), classes(seed=1)
    curve = Curve(a, b, BatchStream(train, 32), CurveConfig())
    ts = [0, 0.25, 0.5, 0.75, 1]
    rows = curve.evaluate(ts, {"train": train, "test": test})
    line = straight_line(a, b, {"train": train, "test": test}, points=5)
    for r, l in zip(rows, line):
        for k in ("train_loss", "test_loss", "test_accuracy"):
            assert r[k] == pytest.approx(l[k], rel=1e-5, abs=1e-6)
    m = curve.model_at(0.5, train)
    assert not m.training and m[1].running_mean.abs().sum() > 0


# ---------------------------------------------------------------- paths with known answers


def logistic_problem():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, 5, generator=g)
    y = (x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 1.0]) + 0.3 * torch.randn(200, generator=g) > 0).long()
    torch.manual_seed(10)
    a, b = nn.Linear(5, 2), nn.Linear(5, 2)
    with torch.no_grad():
        a.weight.mul_(8), b.weight.mul_(8)  # two poor points far apart
    return a, b, Split(x, y)


def test_on_a_convex_loss_every_path_stays_at_or_below_the_straight_line():
    a, b, data = logistic_problem()
    line = straight_line(a, b, data, points=21)
    line_max = max(r["loss"] for r in line)
    assert line_max == pytest.approx(max(line[0]["loss"], line[-1]["loss"]))  # convex: the ends are the worst
    cfg = AutoNEBConfig(cycles=(Cycle(40, 0.5),) * 3, points_per_segment=3)
    neb = AutoNEB(a, b, BatchStream(data, 50, seed=0), data, cfg)
    records = neb.run()
    fm = neb.fm
    profile = [fm.evaluate(v, {"": data})["loss"] for _, v in chain_points(neb.path(), 3)]
    assert max(profile) <= line_max + 1e-6 and records[-1]["max_loss"] <= line_max + 1e-6
    assert sum(profile) / len(profile) < sum(r["loss"] for r in line) / len(line)  # the band went into the bowl
    for kind in ("bezier", "polychain"):
        curve = Curve(a, b, BatchStream(data, 50, seed=0), CurveConfig(kind=kind, steps=150, lr=0.5)).run()
        losses = [r["loss"] for r in curve.evaluate([i / 40 for i in range(41)], {"": data})]
        assert max(losses) <= line_max + 1e-6
        assert losses[20] < line[10]["loss"]  # and the middle went down


class Valley(nn.Module):
    """E(u, v) = (u^2 - 1)^2 + (v - (1 - u^2))^2: minima at (-1, 0) and (1, 0); the valley floor
    v = 1 - u^2 crosses the ridge u = 0 at height 1, the straight line v = 0 at height 2."""

    def __init__(self, u, v):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([u, v]))

    def forward(self, x):
        u, v = self.w
        return ((u ** 2 - 1) ** 2 + (v - (1 - u ** 2)) ** 2).expand(len(x))


def energy(out, y):
    return out.mean()


def test_on_a_valley_autoneb_and_the_curves_find_the_pass_below_the_straight_line():
    a, b = Valley(-1.0, 0.0), Valley(1.0, 0.0)
    data = Split(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))
    line = straight_line(a, b, data, points=21, loss_fn=energy)
    assert max(r["loss"] for r in line) == pytest.approx(2.0)
    cfg = AutoNEBConfig(cycles=(Cycle(150, 0.02),) * 3, max_pivots=9, points_per_segment=4)
    neb = AutoNEB(a, b, BatchStream(data, 2), data, cfg, loss_fn=energy)
    assert neb.run()[-1]["max_loss"] == pytest.approx(1.0, abs=0.02)  # the minimum energy path crosses at 1
    ts = [i / 40 for i in range(41)]
    for kind, ceiling in (("bezier", 1.5), ("polychain", 1.6)):
        # trained for the mean loss along them, one bend: below the line, not necessarily through the pass
        curve = Curve(a, b, BatchStream(data, 2), CurveConfig(kind=kind, steps=300, lr=0.01), loss_fn=energy).run()
        peak = torch.tensor([r["loss"] for r in curve.evaluate(ts, {"": data})]).max()  # NaN-propagating
        assert 1.0 - 0.02 <= float(peak) < ceiling


def test_autoneb_records_its_cycles_and_resumes_exactly():
    a, b = Valley(-1.0, 0.0), Valley(1.0, 0.0)
    data = Split(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))
    cfg = AutoNEBConfig(cycles=(Cycle(5, 0.02),) * 3, points_per_segment=2, initial_pivots=1, max_pivots=4)
    full = AutoNEB(a, b, BatchStream(data, 2), data, cfg, loss_fn=energy)
    records = full.run()
    assert [r["cycle"] for r in records] == [0, 1, 2, 3]
    assert [r["steps"] for r in records] == [0, 5, 10, 15]
    assert [r["pivots"] for r in records] == [3, 3, 4, 4]  # one pivot per later cycle, within the budget of 4
    assert records[-1]["gradient_evals"] == 5 * 1 + 5 * 2 + 5 * 2
    part = AutoNEB(a, b, BatchStream(data, 2), data, cfg, loss_fn=energy)
    for _ in range(7):
        part.step()
    state = part.state_dict()
    resumed = AutoNEB(a, b, BatchStream(data, 2), data, cfg, loss_fn=energy)
    resumed.load_state_dict(state)
    assert resumed.run() == records
    assert torch.equal(resumed.path(), full.path())


def test_autoneb_hands_over_the_best_cycle_s_band_not_the_last():
    """As published: every cycle's band is kept and the one whose highest evaluated loss is lowest is the path."""
    a, b, data = logistic_problem()
    cfg = AutoNEBConfig(cycles=[Cycle(40, 0.5), Cycle(2, 50.0)], points_per_segment=3)
    neb = AutoNEB(a, b, BatchStream(data, 50, seed=0), data, cfg)
    records = neb.run()
    assert records[2]["max_loss"] > records[1]["max_loss"] + 1  # the last cycle's rate threw the band away
    assert neb.best["cycle"] == 1 and not torch.equal(neb.path(), neb.band.chain())
    profile = [neb.fm.evaluate(v, {"": data})["loss"] for _, v in chain_points(neb.path(), 3)]
    assert max(profile) == pytest.approx(records[1]["max_loss"], rel=1e-6)
    assert torch.equal(neb.path()[[0, -1]], neb.band.chain()[[0, -1]])  # the same ends, to the bit


@pytest.mark.parametrize("problem, threshold", [("convex", 0.1), ("valley", 0.1), ("valley", 1e9)])
def test_autoneb_with_a_budget_spends_it_however_many_pivots_it_inserts(problem, threshold):
    """``budget``: each cycle's steps are set as it starts, so the run spends the budget whether pivots were
    inserted (the valley) or not (the convex problem, or a threshold nothing reaches)."""
    if problem == "convex":
        a, b, data = logistic_problem()
        loss_fn = F.cross_entropy
    else:
        a, b = Valley(-1.0, 0.0), Valley(1.0, 0.0)
        data, loss_fn = Split(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)), energy
    cycles = [Cycle(10, 0.02), Cycle(10, 0.01), Cycle(20, 0.005)]
    cfg = AutoNEBConfig(cycles=cycles, points_per_segment=3, insert_threshold=threshold, budget=440)
    neb = AutoNEB(a, b, BatchStream(data, 50 if problem == "convex" else 2, seed=0), data, cfg, loss_fn=loss_fn)
    assert neb.plan == [20, 20, 40]  # 440 over 10 x 3 + 10 x 5 + 20 x 7 projected evaluations: shape kept
    records = neb.run()
    inserted = sum(len(r["inserted"]) for r in records)
    assert (inserted > 0) == (problem == "valley" and threshold < 1)
    assert abs(neb.gradient_evals - 440) <= (records[-1]["pivots"] - 2) / 2
    assert [r["steps"] for r in records][-1] == sum(neb.plan) == neb.band_steps
    with pytest.raises(ConfigError, match="below one band step per cycle"):
        method_config(AutoNEBConfig, dict(cycles=cycles, budget=14))  # 3 + 5 + 7 = 15 at the least


def test_band_weight_decay_is_added_to_the_gradient_before_the_projection():
    """The published NEB adds ``weight_decay * p`` to each pivot's loss gradient, then removes its part along
    the tangent: the force stays perpendicular to the path."""
    a, b, data = logistic_problem()
    fm = FlatModel(a)
    va, vb = fm.vector(a), fm.vector(b)
    x, y = data.x[:50], data.y[:50]
    forces = {}
    for wd in (0.0, 0.3):
        band = Band(fm, va, vb, 1, weight_decay=wd)
        losses, force = band.forces(x, y)
        forces[wd] = force[0]
    p = torch.lerp(va, vb, 0.5)
    _, g = fm.loss_and_grad(p, x, y)
    tau = tangent(va, p, vb, losses.tolist())
    expected = -((g + 0.3 * p) - ((g + 0.3 * p) @ tau) * tau)
    torch.testing.assert_close(forces[0.3], expected, rtol=1e-5, atol=1e-6)
    assert float(forces[0.3] @ tau) == pytest.approx(0.0, abs=1e-4)
    assert not torch.allclose(forces[0.3], forces[0.0])


def test_configuration_mistakes_are_one_line_errors():
    for cls, bad in ((AutoNEBConfig, dict(cycles=())), (AutoNEBConfig, dict(optimizer="lbfgs")),
                     (AutoNEBConfig, dict(initial_pivots=5, max_pivots=6)),
                     (AutoNEBConfig, dict(cycles=[{"steps": 5, "lr": 0.0}])), (CurveConfig, dict(kind="spline")),
                     (CurveConfig, dict(steps=0)), (LineConfig, dict(points=1))):
        with pytest.raises(ConfigError) as e:
            method_config(cls, bad)
        assert "\n" not in str(e.value)
    assert sum(c.steps for c in paper_cycles()) == 16000
    assert [c.lr for c in paper_cycles(0.1, lr=0.01)][::4] == pytest.approx([0.01, 0.01, 0.001, 1e-4])


# ---------------------------------------------------------------- a real model


def test_baselines_run_on_lenet5_with_a_tiny_budget(digits):
    from llpf.models.lenet5 import LeNet5

    train = Split(digits.train.x[:256], digits.train.y[:256])
    torch.manual_seed(0)
    a, b = LeNet5(), LeNet5()
    cfg = AutoNEBConfig(cycles=paper_cycles(0.002, lr=0.01)[:2], points_per_segment=1)
    neb = AutoNEB(a, b, BatchStream(train, 32), train, cfg)
    records = neb.run()
    assert len(records) == 3 and all(math.isfinite(r["max_loss"]) for r in records)
    assert neb.path().shape == (records[-1]["pivots"], sum(p.numel() for p in a.parameters()))
    curve = Curve(a, b, BatchStream(train, 32), CurveConfig(steps=3)).run()
    row = curve.evaluate([0.5], {"train": train})[0]
    assert math.isfinite(row["train_loss"]) and 0 <= row["train_accuracy"] <= 1


def test_autoneb_s_progress_follows_its_re_planned_cycles(capsys):
    """With a budget AutoNEB re-plans its later cycles as it inserts pivots; the progress (plain lines off a
    terminal) counts against the new total and ends at it."""
    from llpf.api import find_path

    a, b = Valley(-1.0, 0.0), Valley(1.0, 0.0)
    data = Split(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))
    cfg = dict(cycles=[dict(steps=10, lr=0.02), dict(steps=10, lr=0.01), dict(steps=20, lr=0.005)],
               points_per_segment=3, insert_threshold=0.1, budget=440, batch_size=2)
    result = find_path("autoneb", a, data, cfg, dest=b, loss_fn=energy, progress=True, eval_sets={})
    iterations, lines = result.rows[-1]["iteration"], capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("AUTONEB: 20/80 (25%)") and iterations == 108  # inserted pivots: 28 steps more
    assert lines[-1].startswith("AUTONEB: 108/108 (100%)"), lines[-1]  # not 108/80 (135%)
