"""K shuffled batch streams over one split, drawn together as one ``[K, B, ...]`` batch.

Path k draws exactly the batches a :class:`llpf.data.BatchStream` with its seed
would draw if the path ran alone (same generator, same epoch permutations,
same positions), and a path that does not draw (its Train_r rule is met, or it
is retired) keeps its place. The batch of all K paths is one gather.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..data import Split
from ..errors import DataError


class StackedStreams:
    """``next(drawing)``: one batch per path, ``x`` ``[K, B, ...]`` and ``y`` ``[K, B]``.

    ``state_dict(k)`` and ``load_state_dict(k, state)`` use the format of
    ``BatchStream.state_dict``, so a path's stream position moves freely
    between a batched run and a run of that path alone.
    """

    def __init__(self, split: Split, batch_size: int, seeds: Sequence[int]):
        if len(split) == 0:
            raise DataError("the training split is empty")
        self.split = split
        self.size = len(split)
        self.batch_size = min(batch_size, self.size)
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        device = split.y.device
        self.perm = torch.arange(self.size, device=device).repeat(len(self.gens), 1)
        self.drawn = [False] * len(self.gens)  # has path k drawn its first permutation
        self.pos = [0] * len(self.gens)
        self.offsets = torch.arange(self.batch_size, device=device)

    def __len__(self) -> int:
        return len(self.gens)

    def _refresh(self, k: int) -> None:
        self.perm[k] = torch.randperm(self.size, generator=self.gens[k]).to(self.perm.device)
        self.drawn[k] = True
        self.pos[k] = 0

    def next(self, drawing: Sequence[bool] | None = None) -> tuple[Tensor, Tensor]:
        """The next batch of every path; paths with ``drawing[k]`` False get a batch but do not advance."""
        bs = self.batch_size
        for k in range(len(self.gens)):
            if (drawing is None or drawing[k]) and (not self.drawn[k] or self.pos[k] + bs > self.size):
                self._refresh(k)
        starts = [min(p, self.size - bs) for p in self.pos]
        if all(s == starts[0] for s in starts):
            idx = self.perm[:, starts[0]:starts[0] + bs]
        else:
            cols = torch.tensor(starts, device=self.perm.device)[:, None] + self.offsets
            idx = self.perm.gather(1, cols)
        for k in range(len(self.gens)):
            if drawing is None or drawing[k]:
                self.pos[k] += bs
        return self.split.x[idx], self.split.y[idx]

    def state_dict(self, k: int) -> dict:
        return {"gen": self.gens[k].get_state(), "perm": self.perm[k].cpu().clone() if self.drawn[k] else None,
                "pos": self.pos[k]}

    def load_state_dict(self, k: int, state: dict) -> None:
        self.gens[k].set_state(state["gen"])
        self.drawn[k] = state["perm"] is not None
        if self.drawn[k]:
            self.perm[k] = state["perm"].to(self.perm.device)
        self.pos[k] = int(state["pos"])
