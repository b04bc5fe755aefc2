"""A path resumed from its checkpoint equals an uninterrupted one, whatever feeds Train_r: a stateful
DataLoader (same sample, same epoch order) or augmented batches (same draws)."""
import io

import pytest
import torch
from torch.utils.data import TensorDataset

from llpf.config import PathConfig, Phase
from llpf.data import Split
from llpf.data.sampler import ResumableLoader
from llpf.driver import Driver
from llpf.methods import M2M
from llpf.models.lenet5 import LeNet5
from llpf.observer import Observer


class StopAt(Observer):
    """Keeps the checkpoint of ``iteration`` and asks the driver to stop there, as a signal would."""

    def __init__(self, iteration):
        self.iteration, self.state, self.driver = iteration, None, None

    def on_checkpoint(self, iteration, state):
        if iteration == self.iteration:
            buf = io.BytesIO()
            torch.save(state, buf)  # as the run directory stores it
            buf.seek(0)
            self.state = torch.load(buf, weights_only=True)
            self.driver.stop_requested = True


@pytest.fixture(scope="module")
def setup(digits):
    torch.manual_seed(0)
    a, b = LeNet5(), LeNet5()
    return Split(digits.train.x[:200], digits.train.y[:200]), a, b


def run(setup, make_data, cfg, stop_at=None, augmentation=None):
    split, a, b = setup
    method = M2M(a, cfg, make_data(), dest=b, device="cpu", augmentation=augmentation)
    obs = StopAt(stop_at)
    driver = Driver(method, observers=[obs])
    obs.driver = driver
    driver.run()
    if stop_at is None:
        return method
    assert obs.state is not None and driver.iteration == stop_at
    method2 = M2M(a, cfg, make_data(), dest=b, device="cpu", augmentation=augmentation)
    driver2 = Driver(method2)
    driver2.load_state_dict(obs.state)
    driver2.run()
    return method2


def cfg(**kw):
    return PathConfig(phases=[Phase(iterations=12, step_a=0.05, rounds=3)], batch_size=32, lr=0.01,
                      checkpoint_every=4, eval_every=100, save_every=100, **kw)


def test_a_stateful_loader_resumes_from_the_same_sample(setup):
    split = setup[0]
    make = lambda: ResumableLoader(TensorDataset(split.x, split.y), batch_size=32, seed=3)  # noqa: E731
    # 12 iterations x 3 steps = 36 batches, 6 per epoch: stops at iteration 8 (24 batches) and 4 (12 batches).
    whole = run(setup, make, cfg())
    resumed = run(setup, make, cfg(), stop_at=8)
    assert torch.equal(whole.fp.flat, resumed.fp.flat)
    at_epoch_end = run(setup, make, cfg(), stop_at=4)  # 12 batches: exactly 2 epochs
    assert torch.equal(whole.fp.flat, at_epoch_end.fp.flat)


def test_a_loader_resumes_mid_epoch(setup):
    split = setup[0]
    make = lambda: ResumableLoader(TensorDataset(split.x, split.y), batch_size=40, seed=3)  # noqa: E731
    c = cfg()  # batch 40 of 200: 5 per epoch; a stop at iteration 4 (12 batches) is 2 into the third epoch
    assert torch.equal(run(setup, make, c).fp.flat, run(setup, make, c, stop_at=4).fp.flat)
    fresh = run(setup, lambda: ResumableLoader(TensorDataset(split.x, split.y), batch_size=40, seed=4), c)
    assert not torch.equal(fresh.fp.flat, run(setup, make, c).fp.flat)  # the order matters: the test can fail


def test_augmented_batches_resume_with_the_same_draws(setup):
    split = setup[0]
    c = cfg(augment=True)
    whole = run(setup, lambda: split, c, augmentation="crop-flip")
    plain = run(setup, lambda: split, cfg())
    assert not torch.equal(whole.fp.flat, plain.fp.flat)  # augmentation reached Train_r
    assert torch.equal(whole.fp.flat, run(setup, lambda: split, c, stop_at=8, augmentation="crop-flip").fp.flat)
