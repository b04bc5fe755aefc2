"""Exact resume of DataLoader-fed data: the sampler's epochs and positions, the loader's batches and transforms."""
from __future__ import annotations

import io

import pytest
import torch
from torch.utils.data import Dataset

from llpf.data.sampler import ResumableLoader, ResumableSampler
from llpf.errors import CheckpointError


class Noisy(Dataset):
    """Sample i is (i + a random draw from the torch RNG, i): a stand-in for a random transform."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.tensor([float(i)]) + torch.rand(1), i


def saved(state: dict) -> dict:
    """``state`` after a trip through torch.save / torch.load(weights_only=True), as a checkpoint takes it."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def draw(loader, k: int) -> list:
    """The next ``k`` batches, passing from epoch to epoch as the path engine does (a new pass per epoch)."""
    out = []
    while len(out) < k:
        before = len(out)
        for batch in loader:
            out.append(batch)
            if len(out) == k:
                break
        if len(out) == before:  # a pass that only closed the epoch (its batches were all drawn)
            continue
    return out


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


def test_each_epoch_is_a_fresh_permutation_and_resumes_mid_epoch():
    s = ResumableSampler(10, seed=3)
    e0, e1 = list(s), list(s)
    assert sorted(e0) == sorted(e1) == list(range(10)) and e0 != e1 and s.epoch == 2
    assert list(ResumableSampler(10, seed=3)) == e0 and list(ResumableSampler(10, seed=4)) != e0
    s = ResumableSampler(10, seed=3)
    it = iter(s)
    head = [next(it) for _ in range(4)]
    t = ResumableSampler(10, seed=3)
    t.load_state_dict(saved(s.state_dict()))
    assert (t.epoch, t.position) == (0, 4)
    assert head + list(t) + list(t) == e0 + e1  # the rest of epoch 0, then epoch 1 as before


@pytest.mark.parametrize("stop", [2, 3, 4, 6, 7])  # 3 batches per epoch (10 samples, batches of 3, last dropped)
def test_a_rebuilt_loader_continues_the_uninterrupted_sequence(stop):
    whole = draw(ResumableLoader(Noisy(), 3, seed=1), 9)
    first = ResumableLoader(Noisy(), 3, seed=1)
    head = draw(first, stop)
    again = ResumableLoader(Noisy(), 3, seed=1)
    again.load_state_dict(saved(first.state_dict()))
    assert same(head + draw(again, 9 - stop), whole)
    labels = [y.tolist() for _, y in whole]
    assert sorted(sum(labels[:3], [])) != sorted(sum(labels[3:6], []))  # each epoch drops a different sample
    assert all(len(set(sum(labels[3 * e:3 * e + 3], []))) == 9 for e in range(3))


def test_transforms_are_drawn_per_sample_and_leave_the_global_rng_alone():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    batches = draw(ResumableLoader(Noisy(), 3, seed=1), 4)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(123)  # a different global state changes nothing
    assert same(draw(ResumableLoader(Noisy(), 3, seed=1), 4), batches)
    x, y = batches[0]
    assert torch.all((x.squeeze(1) - y) > 0) and torch.all((x.squeeze(1) - y) < 1)
    assert not same(draw(ResumableLoader(Noisy(), 3, seed=2), 4), batches)


def test_workers_read_the_same_batches_as_the_main_process():
    plain = draw(ResumableLoader(Noisy(), 3, seed=1), 5)
    loader = ResumableLoader(Noisy(), 3, seed=1, num_workers=2)
    head = draw(loader, 2)  # the workers have read ahead; the state counts what was handed out
    again = ResumableLoader(Noisy(), 3, seed=1, num_workers=2)
    again.load_state_dict(saved(loader.state_dict()))
    assert same(head + draw(again, 3), plain)


def test_a_checkpoint_for_other_data_is_refused():
    state = ResumableLoader(Noisy(), 3, seed=1).state_dict()
    with pytest.raises(CheckpointError, match="batches of 3"):
        ResumableLoader(Noisy(), 4, seed=1).load_state_dict(state)
    with pytest.raises(CheckpointError, match="seed"):
        ResumableLoader(Noisy(), 3, seed=2).load_state_dict(state)
    with pytest.raises(CheckpointError, match="10 samples"):
        ResumableSampler(9, seed=1).load_state_dict(state["sampler"])
