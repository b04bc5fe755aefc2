"""Permutation groups and the tensor axes they act on: what weight matching needs to know about a network.

Ainsworth et al. (2023, "Git Re-Basin", §3) describe a network's symmetries
by a *permutation spec*: each permutation names the weight axes it reorders.
Here a permutation acts on a *group* of hidden units (the output channels of a
convolution or linear layer, joined with every other layer's units that a
residual addition, a concatenation or a shared parameter ties to them), and
each axis of each state-dict tensor has a *layout*: the segments it is made
of, each the units of one group (or units that never move), every unit
occupying ``block`` consecutive entries (a conv channel flattened with its
H*W positions before a linear layer occupies H*W of its inputs).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class Segment:
    """``units`` consecutive units of one axis, each ``block`` entries long; ``group`` None: they never move."""

    group: int | None
    units: int
    block: int = 1

    @property
    def length(self) -> int:
        return self.units * self.block


Layout = tuple[Segment, ...]


def scaled(layout: Layout, k: int) -> Layout:
    """The layout of an axis merged with trailing axes of ``k`` entries in all (a flatten)."""
    return tuple(Segment(s.group, s.units, s.block * k) for s in layout)


def group_name(producers: list[str]) -> str:
    """A group named by its first layer, and how many others joined it."""
    return producers[0] if len(producers) == 1 else f"{producers[0]} (+{len(producers) - 1} joined)"


def groups_of(layout: Layout) -> list[int]:
    return [s.group for s in layout if s.group is not None]


class Groups:
    """Union-find over groups of units, each made by one layer; a group that may not move records why."""

    def __init__(self):
        self.parent: list[int] = []
        self.units: list[int] = []
        self.made_by: list[str] = []
        self.fixed: dict[int, str] = {}  # root -> why its units stay in place

    def new(self, units: int, producer: str) -> int:
        self.parent.append(len(self.parent))
        self.units.append(units)
        self.made_by.append(producer)
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.units[ra] != self.units[rb]:
            raise ValueError(f"groups of {self.units[ra]} and {self.units[rb]} units cannot be joined")
        self.parent[rb] = ra
        if rb in self.fixed:
            self.fixed.setdefault(ra, self.fixed.pop(rb))

    def fix(self, g: int, why: str) -> None:
        self.fixed.setdefault(self.find(g), why)

    def is_fixed(self, g: int) -> bool:
        return self.find(g) in self.fixed

    def producers(self, root: int) -> list[str]:
        """The layers whose outputs make up group ``root``, in graph order."""
        return [p for g, p in enumerate(self.made_by) if self.find(g) == root]


@dataclass
class PermutationSpec:
    """The groups that move (root id -> units), what stays and why, and each tensor axis's layout.

    ``axes[name][axis]`` is the layout of that axis of state-dict entry
    ``name``, its segments naming groups of ``units`` (fixed groups appear as
    ``None``). ``producers[g]`` are the layers whose outputs group ``g``
    collects; ``fixed`` maps the first producer of each group left in place to
    the reason.
    """

    units: dict[int, int]
    producers: dict[int, list[str]]
    axes: dict[str, dict[int, Layout]]
    fixed: dict[str, str] = field(default_factory=dict)

    def name(self, g: int) -> str:
        return group_name(self.producers[g])

    def occurrences(self, g: int) -> list[tuple[str, int, int]]:
        """Every ``(tensor, axis, segment index)`` that group ``g`` reorders."""
        return [(name, axis, i) for name, axes in self.axes.items() for axis, layout in axes.items()
                for i, s in enumerate(layout) if s.group == g]


def axis_index(layout: Layout, perms: dict[int, Tensor], skip: int | None = None) -> Tensor:
    """Entry indices that reorder an axis: entry j of the result is entry ``index[j]`` of the original.

    Unit ``i`` of a permuted segment takes unit ``perm[i]``'s entries;
    segment ``skip`` (and any group without a permutation) stays in place.
    """
    parts, offset = [], 0
    for i, s in enumerate(layout):
        perm = perms.get(s.group) if i != skip and s.group is not None else None
        if perm is None:
            parts.append(torch.arange(s.length) + offset)
        else:
            parts.append((perm[:, None] * s.block + torch.arange(s.block)).reshape(-1) + offset)
        offset += s.length
    return torch.cat(parts)


def permute_tensor(t: Tensor, axes: dict[int, Layout], perms: dict[int, Tensor],
                   skip: tuple[int, int] | None = None) -> Tensor:
    """``t`` with every axis reordered by the permutations of its groups (``skip``: leave one axis's segment)."""
    for axis, layout in axes.items():
        index = axis_index(layout, perms, skip[1] if skip is not None and skip[0] == axis else None)
        t = t.index_select(axis, index.to(t.device))
    return t


def permute_state(state: dict[str, Tensor], spec: PermutationSpec, perms: dict[int, Tensor]) -> dict[str, Tensor]:
    """A state dict with every unit moved as ``perms`` say: weights, biases and running statistics alike."""
    return {k: permute_tensor(v, spec.axes[k], perms) if k in spec.axes else v for k, v in state.items()}
