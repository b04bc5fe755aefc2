"""m2m-batched and m2o-batched through the driver equal the same paths run one by one through llpf.m2m / llpf.m2o,
and a batched run stopped at a checkpoint resumes, in a batch or alone, to the same end."""
import copy
import io
import math

import pytest
import torch

import llpf
from llpf.config import PathConfig, Phase
from llpf.data import Split
from llpf.driver import Driver
from llpf.errors import ConfigError
from llpf.methods import METHODS, M2M, BatchedM2M, BatchedM2O
from llpf.models.lenet5 import LeNet5
from llpf.observer import Observer
from tiny import ConvBN

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def data(digits):
    """float64 data: batched (vmap) and one-by-one kernels then agree to ~1e-13 instead of ~1e-6."""
    return (Split(digits.train.x[:192].double(), digits.train.y[:192]),
            Split(digits.test.x[:64].double(), digits.test.y[:64]))


def lenet(seed):
    torch.manual_seed(seed)
    return LeNet5(image_size=32).double()


def convbn(seed, scale=1.0):
    torch.manual_seed(seed)
    m = ConvBN().double()
    with torch.no_grad():
        m.out.weight.mul_(scale)
    return m


def same(a, b, tol=1e-9, where="") -> None:
    """Equal structure, equal strings/ints/bools, floats equal up to rounding."""
    if isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for key in b:
            same(a[key], b[key], tol, f"{where}.{key}")
    elif isinstance(b, float) and isinstance(a, float):
        assert a == b or abs(a - b) <= tol * max(1.0, abs(b)), (where, a, b)
    else:
        assert a == b, (where, a, b)


def same_result(batched, alone, tol=1e-9) -> None:
    assert batched.method == alone.method
    assert [r["iteration"] for r in batched.rows] == [r["iteration"] for r in alone.rows]
    for rb, ra in zip(batched.rows, alone.rows):
        same(rb, ra, tol, f"row {ra['iteration']}")
    same(batched.summary, alone.summary, tol, "summary")
    assert batched.points.iterations == alone.points.iterations
    for (_, pb), (_, pa) in zip(batched.points, alone.points):
        for n in pa:
            torch.testing.assert_close(pb[n], pa[n], rtol=tol, atol=tol)
    for (n, tb), (_, ta) in zip(batched.model.state_dict().items(), alone.model.state_dict().items()):
        torch.testing.assert_close(tb, ta, rtol=tol, atol=tol, msg=n)


def with_seed(cfg, seed):
    c = copy.deepcopy(cfg)
    c.seed = seed
    return c


M2M_CFG = PathConfig(
    phases=[Phase(iterations=4, step_a=0.05, rounds=3),
            Phase(iterations=4, layers=["conv*"], step_a=0.05, until_loss=2.2, min_rounds=2, max_rounds=12)],
    batch_size=16, lr=0.05, eval_every=2, save_every=4, checkpoint_every=4, loss_threshold_relative=1.5)


@pytest.mark.parametrize("sphere", ["start", "moving"])
def test_batched_m2m_paths_equal_the_paths_run_one_by_one(data, sphere):
    """Also with a sphere that moves to each destination's: each path has its own S_var, as alone."""
    split, test = data
    starts, dests = [lenet(s) for s in SEEDS], [lenet(10 + s) for s in SEEDS]
    for k, d in enumerate(dests if sphere != "start" else []):  # spheres of their own: 1.5x, 2x, 2.5x the radius
        with torch.no_grad():
            for p in d.parameters():
                p.mul_(1.5 + 0.5 * k)
    cfg = copy.deepcopy(M2M_CFG)
    cfg.sphere = sphere
    sets = {"train": split, "test": test}
    method = BatchedM2M(starts, cfg, split, dest=dests, device="cpu")
    assert (method.paths, method.seeds) == (3, [0, 1, 2])
    results = Driver(method, eval_sets=sets, keep_points=True).run()
    rounds = []
    for k, res in enumerate(results):
        alone = llpf.m2m(starts[k], dests[k], split, with_seed(cfg, k), eval_sets=sets, device="cpu",
                         keep_points=True)
        same_result(res, alone)
        rounds.append([r["rounds"] for r in res.rows])
        assert res.summary["kind"] == "m2m" and "dist/fc3.bias" in res.rows[-1]
    if sphere == "start":
        assert len({tuple(r[5:]) for r in rounds}) == 3  # the until-loss rule stopped each path at its own steps
    assert results[0].model is not results[1].model
    assert not torch.equal(results[0].model.fc3.bias, results[1].model.fc3.bias)


M2O_CFG = PathConfig(
    phases=[Phase(iterations=6, step_a=0.0, step_f=0.05, rounds=2),
            Phase(iterations=6, step_a=0.03, step_f=0.0, until_loss=1.0, min_rounds=1, max_rounds=8)],
    batch_size=16, lr=0.05, eval_every=3, save_every=6, checkpoint_every=4, target_variance_ratio=0.36)


def test_batched_m2o_paths_equal_the_paths_run_one_by_one(data):
    """With BatchNorm (recalibrated at evaluation, left out of the moved layers), paths reaching the target at
    different iterations retire on their own while the others go on, and each keeps its own best point."""
    split, test = data
    starts = [convbn(0), convbn(1, 2.0), convbn(2, 0.7)]
    sets = {"train": split, "test": test}
    results = llpf.find_paths("m2o-batched", starts, split, M2O_CFG, eval_sets=sets, device="cpu", keep_points=True)
    for k, res in enumerate(results):
        alone = llpf.m2o(starts[k], split, with_seed(M2O_CFG, k), eval_sets=sets, device="cpu", keep_points=True)
        same_result(res, alone)
        for (n, tb), (_, ta) in zip(res.best_model.state_dict().items(), alone.best_model.state_dict().items()):
            torch.testing.assert_close(tb, ta, rtol=1e-9, atol=1e-9, msg=n)
        assert res.summary["kind"] == "m2o" and res.summary["stopped_at_target"]
    assert [r.summary["iterations"] for r in results] == [6, 8, 6]


class StopAt(Observer):
    """Keeps path k's checkpoint of ``iteration`` (as the run directory stores it) and stops the driver there."""

    def __init__(self, iteration, driver_box):
        self.iteration, self.state, self.box = iteration, None, driver_box

    def on_checkpoint(self, iteration, state):
        if iteration == self.iteration:
            buf = io.BytesIO()
            torch.save(state, buf)
            buf.seek(0)
            self.state = torch.load(buf, weights_only=True)
            self.box[0].stop_requested = True



def _batched_m2m(data, cfg, starts, dests, observers=None):
    method = BatchedM2M(starts, cfg, data[0], dest=dests, device="cpu")
    return method, Driver(method, eval_sets={"train": data[0]}, observers=observers)


def test_a_batched_run_stopped_at_a_checkpoint_resumes_to_the_same_end(data):
    cfg = copy.deepcopy(M2M_CFG)
    cfg.momentum = 0.5  # the momentum buffers must travel in the checkpoint too
    starts, dests = [lenet(s) for s in SEEDS], [lenet(10 + s) for s in SEEDS]
    whole, driver = _batched_m2m(data, cfg, starts, dests)
    whole_results = driver.run()

    box = [None]
    observers = [StopAt(4, box) for _ in SEEDS]
    _, box[0] = _batched_m2m(data, cfg, starts, dests, observers)
    box[0].run()
    assert box[0].iteration == 4 and all(o.state is not None for o in observers)

    resumed, driver = _batched_m2m(data, cfg, starts, dests)
    for k, o in enumerate(observers):
        driver.load_state_dict(o.state, k)
    results = driver.run()
    assert torch.equal(resumed.bp.flat, whole.bp.flat)
    for res, ref in zip(results, whole_results):
        assert res.rows == [r for r in ref.rows if r["iteration"] > 4]
        assert res.summary == ref.summary

    # path 1's checkpoint taken in the batch continues alone, as a one-path M2M, to the same end
    alone = M2M(starts[1], with_seed(cfg, 1), data[0], dest=dests[1], device="cpu")
    d1 = Driver(alone, eval_sets={"train": data[0]})
    d1.load_state_dict(observers[1].state)
    (res,) = d1.run()
    torch.testing.assert_close(alone.fp.flat, whole.bp.flat[1], rtol=1e-9, atol=1e-9)
    same(res.summary, whole_results[1].summary)


def test_batched_methods_are_registered_and_reject_what_they_cannot_run(data):
    split = data[0]
    assert METHODS["m2m-batched"] is BatchedM2M and METHODS["m2o-batched"] is BatchedM2O
    a, b = lenet(0), lenet(1)
    with pytest.raises(ConfigError, match="list of start models"):
        BatchedM2O(a, None, split)
    with pytest.raises(ConfigError, match="2 start models but 1 destinations"):
        BatchedM2M([a, b], None, split, dest=[a])
    with pytest.raises(ConfigError, match="needs a destination"):
        BatchedM2M([a, b], None, split)
    with pytest.raises(ConfigError, match="2 paths but 3 seeds"):
        BatchedM2O([a, b], None, split, seeds=[0, 1, 2])
    with pytest.raises(ConfigError, match="tensor Split"):
        BatchedM2O([a, b], None, list(split.batches(32)))
    with pytest.raises(ConfigError, match="augment"):
        BatchedM2O([a, b], PathConfig(augment=True), split)
    m = BatchedM2O([a, b], None, split, seeds=[7, 9])
    assert m.seeds == [7, 9] and math.isclose(m.mean_variance_ratio_now(1), 1.0)
