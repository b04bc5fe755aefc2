"""Evaluation at the cost of its forward passes (llpf.evaluation): the numbers do not depend on the batch or the
layout they were computed in, BatchNorm statistics come from one fixed, mixed slice of the training set, and the
measured batch is one the device handles fastest."""
import copy

import pytest
import torch
import torch.nn.functional as F

from llpf.config import PathConfig, Phase
from llpf.data import Split
from llpf.driver import Driver
from llpf.evaluation import (CANDIDATE_BATCHES, RECALIBRATION_BATCH, bn_slice, eval_format, measured_batch_size,
                             module_in, split_in)
from llpf.flat import cpu_state
from llpf.methods import M2M
from llpf.models.lenet5 import LeNet5
from llpf.train import evaluate, recompute_bn_stats
from tiny import ConvBN


@pytest.fixture(scope="module")
def split(digits):
    return Split(digits.train.x[:300], digits.train.y[:300])


def convbn(seed: int) -> ConvBN:
    torch.manual_seed(seed)
    m = ConvBN()
    with torch.no_grad():  # statistics far from those of the data, so a recalibration shows
        m.norm.running_mean.fill_(3.0)
        m.norm.running_var.fill_(9.0)
    return m


@pytest.mark.parametrize("make", [lambda: LeNet5(), lambda: convbn(0)])
def test_evaluation_does_not_depend_on_the_batch(split, make):
    """The loss and metrics are reduced once over all outputs: the same bits at batch 7, 64 or the whole set."""
    model = make()
    rows = [evaluate(model, split.batches(b)) for b in (7, 64, len(split))]
    assert rows[0] == rows[1] == rows[2]
    with torch.no_grad():
        assert rows[0]["loss"] == pytest.approx(float(F.cross_entropy(model.eval()(split.x), split.y)), rel=1e-6)


def test_evaluation_in_channels_last_gives_the_same_numbers(split):
    model = LeNet5()
    fmt = eval_format(model)
    assert fmt == torch.channels_last and eval_format(torch.nn.Linear(3, 2)) == torch.contiguous_format
    fast = module_in(model, fmt)
    assert fast.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    plain, cl = evaluate(model, split.batches(64)), evaluate(fast, split_in(split, fmt).batches(64))
    assert cl == pytest.approx(plain, rel=1e-6)
    state = cpu_state(fast)  # what a run saves of the module measured: plain contiguous tensors
    assert all(v.is_contiguous() for v in state.values())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_the_batchnorm_slice_is_fixed_and_mixes_a_class_sorted_split():
    order = torch.argsort(torch.arange(1000) % 10, stable=True)  # labels 0,0,...,1,1,...: sorted by class
    sorted_split = Split(torch.randn(1000, 1, 4, 4)[order], (torch.arange(1000) % 10)[order])
    a, b = bn_slice(sorted_split, 300), bn_slice(sorted_split, 300)
    assert len(a) == 300 and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert len(set(a.y[:RECALIBRATION_BATCH // 8].tolist())) == 10  # one small batch already holds every class
    whole = bn_slice(sorted_split, 0)
    assert len(whole) == 1000 and sorted(whole.y.tolist()) == sorted_split.y.tolist()


def driver(split, eval_batch_size=0, recalibration_examples=8192, model=None):
    cfg = PathConfig(phases=[Phase(iterations=2, step_a=0.1, rounds=1)], batch_size=32, lr=0.01)
    model = model or convbn(0)
    m = M2M(model, cfg, split, dest=convbn(1))
    return Driver(m, eval_sets={"train": split, "test": split}, eval_batch_size=eval_batch_size,
                  recalibration_examples=recalibration_examples)


def test_recalibration_uses_the_fixed_slice_in_fixed_batches(split):
    """BatchNorm statistics at an evaluated point are those of the slice, in batches of RECALIBRATION_BATCH,
    whatever the evaluation batch; the path's own model keeps its statistics."""
    d = driver(split, eval_batch_size=16, recalibration_examples=100)
    model = d.method.model_of(0)
    before = model.norm.running_mean.clone()
    row, measured = d.evaluator.measure(model)
    assert torch.equal(model.norm.running_mean, before)
    expected = copy.deepcopy(model)
    recompute_bn_stats(expected, bn_slice(split, 100).batches(RECALIBRATION_BATCH))
    torch.testing.assert_close(measured.norm.running_mean, expected.norm.running_mean)
    torch.testing.assert_close(measured.norm.running_var, expected.norm.running_var)
    assert driver(split, eval_batch_size=64, recalibration_examples=100).evaluate(model) == row
    assert driver(split, eval_batch_size=16, recalibration_examples=0).evaluate(model) != row


def test_the_measured_batch_is_a_candidate_and_measured_once(split, monkeypatch):
    from llpf import evaluation

    model = LeNet5()
    b = measured_batch_size(model, split.x)
    assert b in CANDIDATE_BATCHES and b <= len(split)
    assert measured_batch_size(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)),
                               split.x[:20]) == 20  # fewer examples than the smallest candidate: all of them
    monkeypatch.setattr(evaluation, "_sweep", lambda *a: pytest.fail("measured again"))
    assert measured_batch_size(LeNet5(), split.x) == b  # same architecture, input shape and device: kept
