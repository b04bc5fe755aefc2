"""What a user reads: both validity verdicts, what they were judged on, BatchNorm-correct evaluation,
M2O's norm ratios, and points that stay on disk."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import llpf
from llpf.config import PathConfig, Phase
from llpf.data import Split
from llpf.errors import DataError, PrerequisiteWarning
from llpf.files import load_weights
from llpf.plots import moving_average
from llpf.store import RunDir
from llpf.train import evaluate, recompute_bn_stats


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(6, 8)
        self.norm = nn.BatchNorm1d(8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(F.relu(self.norm(self.hidden(x))))


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = BNNet()
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        for _ in range(60):
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
        models.append(m.eval())
    return Split(x[:192], y[:192]), Split(x[192:], y[192:]), models


def cfg(**kw):
    base = dict(phases=[Phase(iterations=30, step_a=0.1, step_f=0.0, rounds=2)], batch_size=32, lr=0.05,
                eval_every=10, save_every=10, checkpoint_every=1000, loss_threshold=0.5)
    return PathConfig(**{**base, **kw})


def test_both_verdicts_and_what_they_were_judged_on(problem):
    train, test, (a, b) = problem
    s = llpf.m2m(a, b, train, cfg(), test_data=test, device="cpu").summary
    assert s["judged_on"] == "train_loss" and s["judged_every"] == 10
    assert s["paper_criteria"]["loss_below"] == 0.1 and s["paper_criteria"]["distance_below"] == 0.1
    assert s["paper_criteria"]["loss_ok"] == (s["max_train_loss"] < 0.1)
    assert s["paper_criteria"]["distance_ok"] == all(d < 0.1 for d in s["final_distance"].values())
    assert s["valid_paper"] == (s["paper_criteria"]["loss_ok"] and s["paper_criteria"]["distance_ok"]
                                and s["paper_criteria"]["smoothed_batch_loss_ok"])
    for n, d in s["final_distance"].items():
        assert s["excess_over_floor"][n] == pytest.approx(d - s["distance_floor"][n], abs=1e-6)
    assert 0 <= s["batch_loss_exceedance"] <= 1


class Offset(nn.Module):
    """A model whose batch loss is set by the batch: ``mean(x) + |w|^2`` (with ``mean_loss``), so a test
    chooses every iteration's batch loss, and the training-set loss on zeros is ``|w|^2``."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, x):
        return x[:, 0] + (self.w ** 2).sum()


def mean_loss(out, y):
    return out.mean()


def batch_losses_path(levels):
    """M2M with lr 0 (Train_r draws its batches and changes nothing) between two models 0.001 apart, on batches
    whose losses are ``levels`` (+ |w|^2, 0.0005), judged on a training set whose loss is 0.0005."""
    batches = [(torch.full((2, 1), v), torch.zeros(2, dtype=torch.long)) for v in levels]
    zeros = [(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))]
    config = PathConfig(phases=[Phase(iterations=len(levels), step_a=0.1, step_f=0.0, rounds=1)], lr=0.0,
                        eval_every=5, save_every=5, checkpoint_every=100)
    return llpf.m2m(Offset([0.01, 0.02]), Offset([0.011, 0.0205]), batches, config, eval_sets={"train": zeros},
                    loss_fn=mean_loss, metrics={}, device="cpu")


@pytest.mark.parametrize("levels, smoothed_ok", [([0.0] * 9 + [0.95] + [0.0] * 10, True),
                                                  ([0.0] * 5 + [0.15] * 10 + [0.0] * 5, False)])
def test_valid_paper_tests_the_batch_loss_smoothed_over_ten_iterations(levels, smoothed_ok):
    """Paper Figure 2's loss (every iteration, moving average over 10): one batch at 0.95 among low ones stays
    below 0.1 once smoothed, ten at 0.15 in a row do not; the verdict at the evaluation points sees neither."""
    path = batch_losses_path(levels)
    s, pc = path.summary, path.summary["paper_criteria"]
    losses = [r["batch_loss"] for r in path.rows if r["iteration"] > 0]
    assert losses == pytest.approx([v + 0.0005 for v in levels], abs=1e-4)  # w moves 0.001 toward dest
    assert pc["smoothed_over"] == 10 and pc["smoothed_batch_loss_max"] == pytest.approx(max(moving_average(losses)))
    assert pc["smoothed_batch_loss_max"] == pytest.approx(0.0955 if smoothed_ok else 0.1505, abs=1e-4)
    assert pc["loss_ok"] and pc["distance_ok"] and s["max_batch_loss"] > 0.1  # the other paper tests pass
    assert pc["smoothed_batch_loss_ok"] is smoothed_ok and s["valid_paper"] is smoothed_ok


def test_arrival_tolerance_decides_floor_reached(problem):
    """floor_reached: every layer's final distance <= its variance-sphere floor + arrival_tolerance x initial."""
    train, test, (a, b) = problem
    path = llpf.m2m(a, b, train, cfg(lr=0.0), device="cpu")
    pa, pb, pf = dict(a.named_parameters()), dict(b.named_parameters()), dict(path.model.named_parameters())
    excess = {}
    for n in pa:  # computed here from the weights, not read from the summary
        pa[n], pb[n], pf[n] = pa[n].detach(), pb[n].detach(), pf[n].detach()
        floor = math.sqrt(pa[n].numel()) * abs(pa[n].var(unbiased=False).sqrt() - pb[n].var(unbiased=False).sqrt())
        excess[n] = float(((pf[n] - pb[n]).norm() - floor) / (pa[n] - pb[n]).norm())
    worst = max(excess.values())
    assert worst > 0.01 and path.summary["arrival_tolerance"] == 0.01 and not path.summary["floor_reached"]
    for tol, reached in ((0.98 * worst, False), (1.02 * worst, True)):
        s = llpf.m2m(a, b, train, cfg(lr=0.0, arrival_tolerance=tol), device="cpu").summary
        assert s["floor_reached"] is reached, (tol, excess)


def test_batch_loss_exceedance_counts_iterations_above_the_threshold(problem):
    train, test, (a, b) = problem
    path = llpf.m2m(a, b, train, cfg(loss_threshold=0.3), device="cpu")
    losses = [r["batch_loss"] for r in path.rows if r["iteration"] > 0]
    assert len(losses) == 30
    assert path.summary["batch_loss_exceedance"] == pytest.approx(sum(v > 0.3 for v in losses) / 30)


def test_a_dataloader_alone_gives_the_full_training_loss_verdict(problem):
    train, test, (a, b) = problem
    loader = DataLoader(TensorDataset(train.x, train.y), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    path = llpf.m2m(a, b, loader, cfg(), device="cpu")
    assert path.summary["judged_on"] == "train_loss"
    assert len(path.column("train_loss")) == 4  # iterations 0, 10, 20, 30
    with pytest.warns(PrerequisiteWarning, match="one-shot iterator"):
        one_shot = llpf.m2m(a, b, iter(list(loader) * 12), cfg(), device="cpu")
    assert one_shot.summary["judged_on"] == "batch_loss" and one_shot.summary["judged_every"] == 1
    assert not one_shot.column("train_loss")
    with pytest.raises(DataError, match="ran out of batches"), pytest.warns(PrerequisiteWarning):
        llpf.m2m(a, b, iter(list(loader)), cfg(), device="cpu")


def test_batchnorm_statistics_are_recomputed_for_evaluation_and_the_path_is_unchanged(problem):
    train, test, (a, b) = problem
    on = llpf.m2m(a, b, train, cfg(), test_data=test, device="cpu", keep_points=True)
    off = llpf.m2m(a, b, train, cfg(recalibrate_bn=False), test_data=test, device="cpu", keep_points=True)
    for (i, s_on), (j, s_off) in zip(on.points, off.points):  # the path itself, buffers included, is the same
        assert i == j and all(torch.equal(s_on[n], s_off[n]) for n in s_on)
    final = on.points[-1][1]
    model = BNNet()
    model.load_state_dict(final)
    assert off.rows[-1]["test_loss"] == pytest.approx(evaluate(model, [(test.x, test.y)])["loss"], rel=1e-5)
    recompute_bn_stats(model, train.batches(1024))
    assert on.rows[-1]["test_loss"] == pytest.approx(evaluate(model, [(test.x, test.y)])["loss"], rel=1e-5)
    assert on.rows[-1]["test_loss"] != pytest.approx(off.rows[-1]["test_loss"], rel=1e-6)


def test_m2o_reports_norm_ratio_and_fraction_to_origin(problem):
    """With lr = 0, Move alone leaves each moved layer at (1 - step_a)^T of its start norm."""
    train, test, (a, _) = problem
    path = llpf.m2o(a, train, cfg(lr=0.0), test_data=test, device="cpu")
    s = path.summary
    assert s["norm_ratio"] == pytest.approx(0.9 ** 30, rel=1e-4)
    assert s["fraction_to_origin"] == pytest.approx(1 - 0.9 ** 30, rel=1e-4)
    assert set(s["norm_ratio_per_layer"]) == {"hidden.weight", "hidden.bias", "out.weight", "out.bias"}
    assert s["final_variance_ratio"] == pytest.approx(0.9 ** 60, rel=1e-3)
    row = path.rows[-1]
    assert row["mean_norm_ratio"] == pytest.approx(0.9 ** 30, rel=1e-4)
    assert row["norm_ratio/out.weight"] == pytest.approx(0.9 ** 30, rel=1e-4)
    assert s["best_fraction_to_origin"] == pytest.approx(
        [r for r in path.rows if r["iteration"] == s["best_iteration"]][0]["fraction_to_origin"])


def test_points_stay_on_disk_unless_kept(problem, tmp_path):
    train, test, (a, b) = problem
    assert len(llpf.m2m(a, b, train, cfg(), device="cpu").points) == 0
    rd = RunDir(tmp_path / "run")
    rd.create("m2m", "", {}, "cpu")
    path = llpf.m2m(a, b, train, cfg(), device="cpu", observer=rd)
    assert path.points.iterations == [0, 10, 20, 30]
    assert all(callable(state) for _, state in path.points._items)  # nothing held in memory
    it, state = path.points[2]
    on_disk = load_weights(rd.point_path(20))
    assert it == 20 and all(torch.equal(state[n], on_disk[n]) for n in on_disk)
    kept = llpf.m2m(a, b, train, cfg(), device="cpu", keep_points=True)
    assert all(isinstance(s, dict) for _, s in kept.points._items)
    assert all(torch.equal(kept.points[3][1][n], path.points[3][1][n]) for n in state)
