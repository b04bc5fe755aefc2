"""Path iterations do not wait on the device: no host synchronisation with fixed r, one per step at most when
Train_r's "until loss < L" rule needs the loss (paper Algorithm 1 line 7).

On the CPU nothing really waits, so the test counts the calls that would: every way a tensor's value reaches
Python (``item``, ``tolist``, ``float``, ``int``, ``bool``, ``cpu``, ``numpy``)."""
import contextlib

import pytest
import torch

from llpf.config import PathConfig, Phase
from llpf.data import Split
from llpf.methods import M2M, M2O, BatchedM2M, BatchedM2O
from llpf.models.lenet5 import LeNet5

SYNCS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy")


@contextlib.contextmanager
def counted(monkeypatch):
    calls = []
    for name in SYNCS:
        real = getattr(torch.Tensor, name)

        def wrapper(self, *a, _real=real, _name=name, **k):
            calls.append(_name)
            return _real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, wrapper)
    yield calls
    monkeypatch.undo()


@pytest.fixture(scope="module")
def split(digits):
    return Split(digits.train.x[:256], digits.train.y[:256])


FIXED = Phase(iterations=3, step_a=0.05, rounds=4)
UNTIL = Phase(iterations=3, step_a=0.05, until_loss=1e-3, min_rounds=2, max_rounds=6)  # never met: 6 steps


def build(kind, split, per_view):
    torch.manual_seed(0)
    cfg = PathConfig(phases=[FIXED, UNTIL], batch_size=32, lr=0.01)
    if kind in ("m2m", "m2o"):
        starts, dests = LeNet5(), LeNet5()
        m = M2M(starts, cfg, split, dest=dests) if kind == "m2m" else M2O(starts, cfg, split)
    else:
        starts, dests = [LeNet5() for _ in range(3)], [LeNet5() for _ in range(3)]
        m = BatchedM2M(starts, cfg, split, dest=dests) if kind == "m2m-batched" else BatchedM2O(starts, cfg, split)
    m.seg.per_view = per_view  # False: the GPU's index_add reductions, here on the CPU
    return m


@pytest.mark.parametrize("per_view", [True, False])
@pytest.mark.parametrize("kind", ["m2m", "m2o", "m2m-batched", "m2o-batched"])
def test_fixed_r_iterations_make_no_host_sync_and_until_loss_one_per_step(split, monkeypatch, kind, per_view):
    m = build(kind, split, per_view)
    fixed, until = m.schedule
    with counted(monkeypatch) as calls:
        for i in (1, 2, 3):
            m.iterate(i, fixed)
    assert calls == []
    with counted(monkeypatch) as calls:
        _, rounds = m.iterate(4, until)
    steps = rounds if isinstance(rounds, int) else int(rounds.max())
    assert steps == 6
    assert len(calls) == steps - UNTIL.min_rounds + 1  # one sync per step from min_rounds on: the loss the rule reads


def test_a_full_evaluation_waits_on_the_device_once_per_set_and_runs_without_autograd(split, monkeypatch):
    """Forward passes only (under inference mode), the outputs reduced on the device, one transfer per set."""
    from llpf.driver import Driver

    m = build("m2m", split, True)
    d = Driver(m, eval_sets={"train": split, "test": split}, eval_batch_size=16)  # 16 batches per set
    model = m.model_of(0)
    modes = []
    model.register_forward_hook(lambda *a: modes.append(torch.is_inference_mode_enabled()))
    with counted(monkeypatch) as calls:
        row = d.evaluate(model)
    assert set(row) == {"train_loss", "train_accuracy", "test_loss", "test_accuracy"}
    assert calls == ["tolist", "tolist"]
    assert len(modes) == 2 * len(split) // 16 and all(modes)  # on the evaluation copy, which keeps the hook
