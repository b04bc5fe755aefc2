"""K paths advanced as one batched computation equal the same paths run one by one."""
import copy

import pytest
import torch
import torch.nn.functional as F

from llpf.batched import (BatchedParams, BatchedTrainR, StackedStreams, batched_m2m_iteration,
                          batched_m2o_iteration)
from llpf.config import PathConfig, Phase
from llpf.data import BatchStream, Split
from llpf.errors import ModelMismatchError
from llpf.geometry import Layout, Segments, angle_conformal_lr, move_, variance_correction_
from llpf.models.lenet5 import LeNet5
from llpf.methods import m2m_iteration, m2o_iteration
from llpf.schedule import normalisation_parameters, phase_at, resolve
from llpf.flat import FlatParams
from llpf.train import TrainR
from tiny import ConvBN

SEEDS = (0, 1, 2)


def make(kind, seed):
    """A model in float64, so that batched and one-by-one agree to ~1e-12 despite their different kernels."""
    torch.manual_seed(seed)
    return (LeNet5(image_size=32) if kind == "lenet5" else ConvBN()).double()


@pytest.fixture(scope="module")
def split(digits):
    return Split(digits.train.x[:256].double(), digits.train.y[:256])


def close(a, b, tol=1e-9):
    """Equal up to rounding, relative to the scale of ``b`` (vmapped kernels sum in another order)."""
    err, scale = (a - b).abs().max().item(), max(1.0, b.abs().max().item())
    assert err <= tol * scale, (err, scale)


# ---------------------------------------------------------------- geometry over [K, n] with per-path masks


@pytest.mark.parametrize("per_view", [True, False])
def test_geometry_rows_equal_one_path_calls_with_per_path_masks(per_view):
    layout = Layout(("a", "b", "c", "d"), ((30, 2), (5,), (1,), (3, 4)))
    seg = Segments(layout, dtype=torch.float64)
    seg.per_view = per_view  # False: the GPU's index_add path, here on the CPU
    g = torch.Generator().manual_seed(0)
    flat = torch.randn(3, layout.size, generator=g, dtype=torch.float64) + 0.2
    dest = torch.randn(3, layout.size, generator=g, dtype=torch.float64)
    v0 = torch.rand(3, 4, generator=g, dtype=torch.float64) + 0.1
    moved = torch.tensor([[True, False, True, True], [False, True, True, False], [True, True, False, True]])
    corrected = ~moved
    corrected[0] = moved[0]  # path 0 leaves layer b alone entirely
    batch = flat.clone()
    dist = move_(batch, dest, seg, 0.1, 0.05, moved, "sum")
    scale = variance_correction_(batch, v0, seg, corrected)
    lr = angle_conformal_lr(0.01, seg.variance(batch), v0, moved)
    for k in range(3):
        one = flat[k].clone()
        close(dist[k], move_(one, dest[k], seg, 0.1, 0.05, moved[k], "sum"), 1e-12)
        close(scale[k], variance_correction_(one, v0[k], seg, corrected[k]), 1e-12)
        close(batch[k], one, 1e-12)
        close(lr[k], angle_conformal_lr(0.01, seg.variance(one), v0[k], moved[k]), 1e-12)
        assert not torch.equal(batch[k], flat[k])
    assert torch.equal(layout.split(batch)[1][0], layout.split(flat)[1][0])  # path 0 neither moves nor corrects b


# ---------------------------------------------------------------- BatchedParams and StackedStreams


def test_batched_params_hold_each_model_and_write_it_back():
    models = [make("convbn", s) for s in SEEDS]
    for i, m in enumerate(models):  # distinct running statistics per model
        m.norm.running_mean.fill_(i)
        m.norm.num_batches_tracked.fill_(10 * i)
    before = [copy.deepcopy(m.state_dict()) for m in models]
    bp = BatchedParams(models)
    assert bp.flat.shape == (3, sum(p.numel() for p in models[0].parameters()))
    assert bp.buffers["norm.running_mean"].shape == (3, 4)
    for k in (2, 0, 1):
        state = bp.state_dict(k)
        assert state.keys() == before[k].keys()
        assert all(torch.equal(state[n], before[k][n]) for n in state)
    bp.flat.mul_(2)
    bp.buffers["norm.running_var"].add_(1)
    for m, b in zip(models, before):  # the models themselves are not touched
        assert all(torch.equal(t, b[n]) for n, t in m.state_dict().items())
    bp.load_(1, before[1])
    assert all(torch.equal(t, before[1][n]) for n, t in bp.state_dict(1).items())
    assert torch.equal(bp.state_dict(0)["conv.weight"], 2 * before[0]["conv.weight"])


def test_batched_params_reject_different_architectures():
    with pytest.raises(ModelMismatchError):
        BatchedParams([make("lenet5", 0), make("convbn", 0)])
    other = make("convbn", 1)
    other.register_buffer("extra", torch.zeros(2))
    with pytest.raises(ModelMismatchError, match="buffers"):
        BatchedParams([make("convbn", 0), other])


def test_stacked_streams_draw_what_each_stream_draws_alone(split):
    small = Split(split.x[:100], split.y[:100])  # 3 batches of 32 per epoch: epochs turn over at different steps
    alone = [BatchStream(small, 32, seed=s) for s in (5, 6, 7)]
    stacked = StackedStreams(small, 32, (5, 6, 7))
    g = torch.Generator().manual_seed(1)
    for step in range(20):
        drawing = (torch.rand(3, generator=g) < 0.6).tolist()
        x, y = stacked.next(drawing)
        assert x.shape == (3, 32, 1, 32, 32)
        for k, s in enumerate(alone):
            if drawing[k]:
                xs, ys = next(s)
                assert torch.equal(x[k], xs) and torch.equal(y[k], ys)
    assert stacked.pos != [stacked.pos[0]] * 3  # the paths really did drift apart
    for k, s in enumerate(alone):
        mine, theirs = stacked.state_dict(k), s.state_dict()
        assert torch.equal(mine["gen"], theirs["gen"]) and mine["pos"] == theirs["pos"]
        assert torch.equal(mine["perm"], theirs["perm"])
    resumed = StackedStreams(small, 32, (0, 0, 0))
    for k in range(3):
        resumed.load_state_dict(k, stacked.state_dict(k))
    assert all(torch.equal(a, b) for a, b in zip(resumed.next(), stacked.next()))


# ---------------------------------------------------------------- Train_r and the iterations against one path


class OnePath:
    """Today's single-path code: FlatParams, TrainR over a BatchStream."""

    def __init__(self, start, split, seed, cfg):
        self.model = copy.deepcopy(start)
        self.fp = FlatParams(self.model)
        self.stream = BatchStream(split, cfg.batch_size, seed=seed)
        self.train_r = TrainR(self.fp, self.stream, F.cross_entropy, cfg.lr, cfg.momentum)
        self.v0 = self.fp.seg.variance(self.fp.flat)


def batched(starts, split, cfg):
    bp = BatchedParams(starts)
    train_r = BatchedTrainR(bp, StackedStreams(split, cfg.batch_size, SEEDS), F.cross_entropy, cfg.lr, cfg.momentum)
    return bp, train_r, bp.seg.variance(bp.flat)


def compare(bp, train_r, ones):
    for k, one in enumerate(ones):
        close(bp.flat[k], one.fp.flat)
        for n, b in one.model.named_buffers():
            close(bp.buffers[n][k].to(b.dtype), b)
        assert train_r.streams.state_dict(k)["pos"] == one.stream.state_dict()["pos"]
        assert torch.equal(train_r.streams.state_dict(k)["gen"], one.stream.state_dict()["gen"])


def schedule_for(kind, names, exclude=frozenset()):
    """Fixed r, then "until loss < L" at a level where the three paths stop after different numbers of steps."""
    last, until = ("fc3", 2.2) if kind == "lenet5" else ("out", 0.7)
    return resolve([Phase(iterations=3, layers=[last], step_a=0.05, step_f=1e-3, rounds=4),
                    Phase(iterations=4, layers=["conv*"], keep_previous=True, step_a=0.05, step_f=1e-3,
                          until_loss=until, min_rounds=2, max_rounds=12)], names, exclude)


@pytest.mark.parametrize("kind", ["lenet5", "convbn"])
def test_batched_m2m_iterations_equal_one_path_each(split, kind):
    cfg = PathConfig(batch_size=16, lr=0.05, momentum=0.5, step_rule="sum")
    starts = [make(kind, s) for s in SEEDS]
    dests = [make(kind, 10 + s) for s in SEEDS]
    ones = [OnePath(m, split, s, cfg) for m, s in zip(starts, SEEDS)]
    bp, train_r, v0 = batched(starts, split, cfg)
    dest = BatchedParams(dests).flat
    schedule = schedule_for(kind, bp.layout.names)
    masks = [bp.layout.mask(rp.moved) for rp in schedule]
    stopped_differently = False
    for i in range(1, 8):
        rp = phase_at(schedule, i)
        loss, rounds = batched_m2m_iteration(bp, dest, v0, rp, cfg, train_r, masks[rp.index], masks[rp.index])
        for k, one in enumerate(ones):
            l1, r1 = m2m_iteration(one.fp, dest[k], one.v0, rp, cfg, one.train_r, masks[rp.index], masks[rp.index])
            close(loss[k], l1)
            assert rounds[k] == r1
        stopped_differently |= len(set(rounds.tolist())) > 1
        compare(bp, train_r, ones)
    assert stopped_differently  # the until-loss rule stopped the paths at different steps


@pytest.mark.parametrize("kind", ["lenet5", "convbn"])
def test_batched_m2o_iterations_equal_one_path_each(split, kind):
    cfg = PathConfig(batch_size=16, lr=0.05, step_rule="max")
    starts = [make(kind, s) for s in SEEDS]
    ones = [OnePath(m, split, s, cfg) for m, s in zip(starts, SEEDS)]
    bp, train_r, v0 = batched(starts, split, cfg)
    schedule = schedule_for(kind, bp.layout.names, normalisation_parameters(starts[0]))
    masks = [bp.layout.mask(rp.moved) for rp in schedule]
    stopped_differently = False
    for i in range(1, 8):
        rp = phase_at(schedule, i)
        loss, rounds, lr = batched_m2o_iteration(bp, v0, rp, cfg, train_r, masks[rp.index])
        for k, one in enumerate(ones):
            l1, r1, lr1 = m2o_iteration(one.fp, one.v0, rp, cfg, one.train_r, masks[rp.index])
            close(loss[k], l1)
            close(lr[k], lr1)
            assert rounds[k] == r1
        assert not torch.equal(lr[0], lr[1])  # per-path learning rates really differ
        stopped_differently |= len(set(rounds.tolist())) > 1
        compare(bp, train_r, ones)
    assert stopped_differently


def test_a_retired_path_stays_where_it_is(split):
    """Retired paths are left alone by Move, VarianceCorrection and both Train_r rules; the others go on."""
    cfg = PathConfig(batch_size=16, lr=0.05)
    starts = [make("convbn", s) for s in SEEDS]
    ones = [OnePath(m, split, s, cfg) for m, s in zip(starts, SEEDS)]
    bp, train_r, v0 = batched(starts, split, cfg)
    dest = BatchedParams([make("convbn", 10 + s) for s in SEEDS]).flat
    fixed, until = resolve([Phase(iterations=3, step_a=0.1, rounds=3),
                            Phase(iterations=1, step_a=0.1, until_loss=0.5, max_rounds=30)], bp.layout.names)
    everything = torch.ones(len(bp.layout), dtype=torch.bool)

    def both(rp):
        loss, rounds = batched_m2m_iteration(bp, dest, v0, rp, cfg, train_r, everything, everything)
        for k in (0, 2):
            _, r = m2m_iteration(ones[k].fp, dest[k], ones[k].v0, rp, cfg, ones[k].train_r, everything, everything)
            assert rounds[k] == r
        return loss, rounds

    both(fixed)
    bp.retire(1)
    kept = (bp.flat[1].clone(), bp.buffers["norm.running_mean"][1].clone(), train_r.streams.state_dict(1))
    for rp in (fixed, fixed, until):
        loss, rounds = both(rp)
        assert rounds[1] == 0 and torch.isnan(loss[1]) and not torch.isnan(loss[[0, 2]]).any()
    assert rounds[0] != 3  # the until-loss rule ran
    assert torch.equal(bp.flat[1], kept[0]) and torch.equal(bp.buffers["norm.running_mean"][1], kept[1])
    assert train_r.streams.state_dict(1)["pos"] == kept[2]["pos"]
    for k in (0, 2):
        close(bp.flat[k], ones[k].fp.flat)
    bp.retire(0)
    bp.retire(2)
    before = bp.flat.clone()
    loss, rounds = batched_m2m_iteration(bp, dest, v0, until, cfg, train_r, everything, everything)
    assert torch.isnan(loss).all() and rounds.tolist() == [0, 0, 0] and torch.equal(bp.flat, before)


def test_per_path_state_resumes_a_batched_run_exactly(split):
    """Each path's point, buffers, stream and momentum, saved and loaded, continue the run bit for bit."""
    cfg = PathConfig(batch_size=16, lr=0.05, momentum=0.9)
    starts = [make("convbn", s) for s in SEEDS]
    dest = BatchedParams([make("convbn", 10 + s) for s in SEEDS]).flat
    layout = BatchedParams(starts[:1]).layout
    schedule = schedule_for("convbn", layout.names)
    masks = [layout.mask(rp.moved) for rp in schedule]

    def iterate(bp, train_r, v0, first, last):
        for i in range(first, last + 1):
            rp = phase_at(schedule, i)
            batched_m2m_iteration(bp, dest, v0, rp, cfg, train_r, masks[rp.index], masks[rp.index])

    bp, train_r, v0 = batched(starts, split, cfg)
    iterate(bp, train_r, v0, 1, 4)
    saved = [(bp.state_dict(k), train_r.streams.state_dict(k), train_r.state_dict(k)) for k in range(3)]
    iterate(bp, train_r, v0, 5, 7)
    again, train_again, _ = batched(starts, split, cfg)  # a fresh process: built from the start models
    for k, (point, stream, opt) in enumerate(saved):
        again.load_(k, point)
        train_again.streams.load_state_dict(k, stream)
        train_again.load_state_dict(k, opt)
    iterate(again, train_again, v0, 5, 7)
    assert torch.equal(again.flat, bp.flat)
    assert all(torch.equal(again.buffers[n], b) for n, b in bp.buffers.items())
    assert torch.equal(train_again.buf, train_r.buf)
