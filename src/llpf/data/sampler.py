"""Exact resume for data read through a DataLoader: a sampler and a loader that know where they are.

A path run checkpoints where its batch stream stands, so a resumed run draws
the same batches (``BatchStream`` does this for tensor splits). A DataLoader's
own shuffling cannot be resumed mid-epoch, and its workers read the sampler
ahead of the batches the run has taken. Here each epoch's order is a function
of the seed and the epoch number alone, and the loader counts the batches it
has handed out, so ``(epoch, position)`` is the whole state: a loader rebuilt
from it yields the rest of that epoch and then the same epochs as before.
Random transforms are made resumable too: each sample's draw is seeded from
``(seed, epoch, index)``, whichever worker reads it and whenever.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import CheckpointError, DataError


def derived_seed(*key: int) -> int:
    """A 63-bit seed that depends on every number of ``key`` (NumPy's SeedSequence mixing)."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> 1)


class ResumableSampler(Sampler[int]):
    """Indices ``0..n-1``, a fresh permutation each epoch, resumable at any position.

    Epoch ``e``'s permutation is drawn from a generator seeded from
    ``(seed, e)``. Iterating yields the rest of the current epoch from
    ``position`` on, then moves to the next epoch.
    """

    def __init__(self, n: int, seed: int = 0):
        if n <= 0:
            raise DataError("the training set is empty")
        self.n, self.seed = n, seed
        self.epoch, self.position = 0, 0

    def permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(derived_seed(self.seed, epoch)))

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        perm = self.permutation(self.epoch).tolist()
        while self.position < self.n:
            i = perm[self.position]
            self.position += 1
            yield i
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        if int(state["n"]) != self.n or int(state["seed"]) != self.seed:
            raise CheckpointError(f"the checkpoint's data order is for {state['n']} samples with seed {state['seed']}, "
                                  f"not {self.n} with seed {self.seed}: the training set or seed changed")
        self.epoch, self.position = int(state["epoch"]), min(int(state["position"]), self.n)


class _EpochKeys(Sampler[int]):
    """The sampler's indices as keys ``epoch * n + index``, so a worker knows which epoch it reads for."""

    def __init__(self, sampler: ResumableSampler):
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[int]:
        base = self.sampler.epoch * self.sampler.n
        return (base + i for i in self.sampler)


class _SeededSamples(Dataset):
    """``dataset[index]`` read with the torch RNG seeded from ``(seed, epoch, index)``, the caller's RNG untouched."""

    def __init__(self, dataset: Dataset, n: int, seed: int):
        self.dataset, self.n, self.seed = dataset, n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: int):
        epoch, index = divmod(key, self.n)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(self.seed, epoch, index))
            return self.dataset[index]


class ResumableLoader:
    """Batches of a Dataset in ``ResumableSampler`` order, through a DataLoader, with a state dict.

    Re-iterable like a DataLoader: each pass is the rest of the current epoch.
    ``state_dict`` counts the batches handed out (not those the workers have
    read ahead), so loading it into a loader built alike continues with the
    next batch the run has not seen, with the same random transforms. ``loader_kwargs`` go to the DataLoader
    (``num_workers``, ``pin_memory``, ``persistent_workers``, ``collate_fn``...).
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, drop_last: bool = True, **loader_kwargs):
        self.dataset, self.batch_size, self.drop_last = dataset, batch_size, drop_last
        self.sampler = ResumableSampler(len(dataset), seed)
        loader_kwargs.setdefault("generator", torch.Generator().manual_seed(seed))  # leave the global RNG alone
        self.loader = DataLoader(_SeededSamples(dataset, len(dataset), seed), batch_size=batch_size,
                                 sampler=_EpochKeys(self.sampler), drop_last=drop_last, **loader_kwargs)
        self.epoch, self.batch = 0, 0  # batches handed out in this epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        if self.batch >= len(self.loader):  # stopped on the epoch's last batch (a checkpoint taken there)
            self.epoch, self.batch = self.epoch + 1, 0
        self.sampler.epoch, self.sampler.position = self.epoch, min(self.batch * self.batch_size, self.sampler.n)
        for item in self.loader:
            self.batch += 1
            yield item
        self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "batch_size": self.batch_size,
                "sampler": {**self.sampler.state_dict(), "epoch": self.epoch,
                            "position": min(self.batch * self.batch_size, self.sampler.n)}}

    def load_state_dict(self, state: dict) -> None:
        if int(state["batch_size"]) != self.batch_size:
            raise CheckpointError(f"the checkpoint was drawn in batches of {state['batch_size']}, "
                                  f"not {self.batch_size}")
        self.sampler.load_state_dict(state["sampler"])
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
