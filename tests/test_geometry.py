"""The geometry of the paper: each test would fail if the maths were wrong."""
import math

import pytest
import torch

from llpf.geometry import (Layout, Segments, angle_conformal_lr, distance_floor, layer_distances, move_,
                           variance_correction_)


def make(shapes, seed=0, scale=1.0):
    layout = Layout(tuple(f"l{i}" for i in range(len(shapes))), tuple(shapes))
    g = torch.Generator().manual_seed(seed)
    flat = torch.randn(layout.size, generator=g, dtype=torch.float64) * scale + 0.3
    return layout, Segments(layout, dtype=torch.float64), flat


def test_segments_match_per_tensor_reductions():
    layout, seg, flat = make([(3, 4), (5,), (2, 2, 2)])
    for t, v, m, n in zip(layout.split(flat), seg.variance(flat), seg.mean(flat), seg.norm(flat)):
        assert v.item() == pytest.approx(t.var(unbiased=False).item(), rel=1e-12)
        assert m.item() == pytest.approx(t.mean().item(), rel=1e-12)
        assert n.item() == pytest.approx(t.norm().item(), rel=1e-12)


@pytest.mark.parametrize("batched", [False, True])
def test_whole_vector_path_equals_per_view_path(batched):
    """The GPU's one-kernel index path and the CPU's per-view path compute the same geometry."""
    layout, views, flat = make([(40, 3), (6,), (1,), (2, 5)], seed=6)
    whole = Segments(layout, dtype=torch.float64)
    whole.per_view = False
    if batched:  # three paths at once, [3, D]
        flat = torch.stack([flat * 0.5, flat, flat * 1.5])
    dest = torch.randn_like(flat)
    target = torch.tensor([0.2, 0.9, 0.5, 3.0], dtype=torch.float64)
    results = []
    for seg in (views, whole):
        p = flat.clone()
        dist = move_(p, dest, seg, 0.1, 0.05, moved=torch.tensor([True, True, True, False]))
        scale = variance_correction_(p, target, seg)
        var, mean = seg.var_mean(p)
        results.append([p, dist, scale, var, mean, seg.norm(p)])
    for x, y in zip(*results):
        assert torch.allclose(x, y, rtol=1e-12, atol=1e-14)


def test_variance_correction_lands_on_target_and_keeps_mean():
    layout, seg, flat = make([(50, 20), (7,), (3, 3, 3)], seed=1)
    target = torch.tensor([0.01, 4.0, 1e-9], dtype=torch.float64)  # tiny targets must work too (no epsilon)
    mean_before = seg.mean(flat).clone()
    variance_correction_(flat, target, seg)
    assert torch.allclose(seg.variance(flat), target, rtol=1e-10)
    assert torch.allclose(seg.mean(flat), mean_before, rtol=1e-10, atol=1e-12)


def test_variance_correction_skips_degenerate_layers_and_unselected():
    layout = Layout(("single", "constant", "normal", "kept"), ((1,), (4,), (10,), (10,)))
    seg = Segments(layout, dtype=torch.float64)
    flat = torch.cat([torch.tensor([2.0]), torch.full((4,), 3.0), torch.arange(10.0), torch.arange(10.0)]).double()
    before = flat.clone()
    target = torch.full((4,), 0.5, dtype=torch.float64)
    corrected = torch.tensor([True, True, True, False])
    scale = variance_correction_(flat, target, seg, corrected)
    parts, old = layout.split(flat), layout.split(before)
    assert torch.equal(parts[0], old[0]) and torch.equal(parts[1], old[1]) and torch.equal(parts[3], old[3])
    assert parts[2].var(unbiased=False).item() == pytest.approx(0.5)
    assert scale[0] == 1 and scale[1] == 1 and scale[3] == 1


@pytest.mark.parametrize("rule", ["sum", "max"])
def test_move_never_overshoots(rule):
    layout, seg, flat = make([(30,), (4, 4), (2,)], seed=2)
    dest = flat + torch.randn_like(flat) * 0.01
    for _ in range(50):
        before = layer_distances(flat, dest, seg)
        move_(flat, dest, seg, step_a=0.7, step_f=0.05, rule=rule)
        after = layer_distances(flat, dest, seg)
        assert (after <= before + 1e-12).all()
    assert torch.allclose(flat, dest, atol=1e-12)  # the clamp lands exactly on D, no oscillation


def test_move_step_rules_sum_and_max():
    layout, seg, flat = make([(100,), (100,)], seed=3)
    dest = torch.zeros_like(flat)
    dest[:100] = flat[:100] + 2.0  # distance 20
    dest[100:] = flat[100:] + 0.01  # distance 0.1
    d0 = layer_distances(flat, dest, seg)
    for rule, expected in (("sum", lambda d: min(0.1 * d + 0.5, d)), ("max", lambda d: min(max(0.1 * d, 0.5), d))):
        p = flat.clone()
        move_(p, dest, seg, step_a=0.1, step_f=0.5, rule=rule)
        moved = layer_distances(p, flat, seg)
        for got, d in zip(moved.tolist(), d0.tolist()):
            assert got == pytest.approx(expected(d), rel=1e-9)
    with pytest.raises(ValueError):
        move_(flat.clone(), dest, seg, 0.1, 0.1, rule="other")


def test_move_only_moves_selected_layers_and_toward_origin():
    layout, seg, flat = make([(10,), (10,)], seed=4)
    p = flat.clone()
    move_(p, None, seg, step_a=0.5, step_f=0.0, moved=torch.tensor([True, False]))
    a, b = layout.split(p)
    assert torch.allclose(a, layout.split(flat)[0] * 0.5)  # halfway to O along the straight line
    assert torch.equal(b, layout.split(flat)[1])


def test_zero_distance_does_not_move():
    layout, seg, flat = make([(5,)])
    p = flat.clone()
    move_(p, flat.clone(), seg, 0.3, 0.2)
    assert torch.equal(p, flat)


def test_distance_floor_matches_brute_force_minimum():
    """No point on the start's variance sphere gets closer to D than the floor; the nearest one reaches it."""
    torch.manual_seed(0)
    layout = Layout(("w",), ((6,),))
    seg = Segments(layout, dtype=torch.float64)
    start = torch.randn(6, dtype=torch.float64) * 2.0
    dest = torch.randn(6, dtype=torch.float64) * 0.7 + 0.4
    floor = distance_floor(start, dest, seg).item()
    v0 = seg.variance(start)
    # Brute force: gradient descent on ||P - D|| with P kept on the sphere by VarianceCorrection, many restarts.
    best = math.inf
    for restart in range(6):
        p = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(restart)).requires_grad_()
        opt = torch.optim.Adam([p], lr=0.05)
        for _ in range(300):
            q = p.mean() + (v0 / p.var(unbiased=False)).sqrt() * (p - p.mean())
            loss = (q - dest).norm()
            opt.zero_grad()
            loss.backward()
            opt.step()
        best = min(best, loss.item())
    for _ in range(2000):  # and random points on the sphere never beat it
        p = torch.randn(6, dtype=torch.float64)
        variance_correction_(p, v0, seg)
        assert (p - dest).norm().item() >= floor - 1e-9
    assert best == pytest.approx(floor, rel=1e-4)


def test_angle_conformal_learning_rates():
    var = torch.tensor([0.5, 0.2, 1.0])
    v0 = torch.tensor([1.0, 0.4, 2.0])
    lr = angle_conformal_lr(1e-3, var, v0, moved=torch.tensor([True, True, False]))
    assert torch.allclose(lr, torch.tensor([5e-4, 5e-4, 1e-3]))


def test_batched_paths_share_one_call():
    layout, seg, flat = make([(8,), (3,)], seed=5)
    batch = torch.stack([flat, flat * 2, flat - 1])
    target = torch.tensor([0.3, 0.7], dtype=torch.float64)
    variance_correction_(batch, target, seg)
    for row in batch:
        assert torch.allclose(seg.variance(row), target)
