"""Weight matching (Ainsworth et al. 2023, "Git Re-Basin", §3.2 and Algorithm 1).

Find permutations of B's units that maximise the summed inner product
``Σ_l <W_A_l, π(W_B_l)>`` over every tensor (equivalently: minimise the L2
distance between A and the permuted B). The problem couples the permutations,
so it is solved by coordinate descent: in a random order, each permutation in
turn is the solution of one linear assignment problem, the others held fixed,

    C_g[i, j] = Σ_{tensors touching g} <A's unit i, B's unit j (its other axes already permuted)>,
    π_g = argmax_π Σ_i C_g[i, π(i)]       (scipy.optimize.linear_sum_assignment)

and sweeps repeat until one changes no permutation (Algorithm 1's stopping rule).
"""
from __future__ import annotations

import random

import torch
from torch import Tensor

from .layout import PermutationSpec, permute_tensor


def _unit_rows(t: Tensor, axis: int, offset: int, units: int, length: int) -> Tensor:
    """The entries of ``units`` units on ``axis`` (from ``offset``), one row per unit."""
    return t.narrow(axis, offset, length).movedim(axis, 0).reshape(units, -1)


def match_cost(g: int, spec: PermutationSpec, a: dict[str, Tensor], b: dict[str, Tensor],
               perms: dict[int, Tensor]) -> Tensor:
    """``C_g[i, j]``: A's unit i against B's unit j, summed over every tensor axis that group ``g`` reorders."""
    cost = torch.zeros(spec.units[g], spec.units[g], dtype=torch.float64)
    for name, axis, seg in spec.occurrences(g):
        layout = spec.axes[name][axis]
        offset = sum(s.length for s in layout[:seg])
        s = layout[seg]
        wb = permute_tensor(b[name], spec.axes[name], perms, skip=(axis, seg))
        cost += _unit_rows(a[name], axis, offset, s.units, s.length) @ \
            _unit_rows(wb, axis, offset, s.units, s.length).T
    return cost


def weight_matching(spec: PermutationSpec, state_a: dict[str, Tensor], state_b: dict[str, Tensor],
                    max_sweeps: int = 100, seed: int = 0) -> tuple[dict[int, Tensor], int]:
    """The permutation of each group (``perm[i]``: B's unit that takes A's unit i's place) and the sweeps used.

    Algorithm 1 of Ainsworth et al. 2023: start from the identity, solve each
    group's assignment problem in a random order (seeded), stop after a sweep
    that improves no group's objective (or after ``max_sweeps``).
    """
    from scipy.optimize import linear_sum_assignment

    a = {k: state_a[k].detach().cpu().double() for k in spec.axes}
    b = {k: state_b[k].detach().cpu().double() for k in spec.axes}
    perms = {g: torch.arange(n) for g, n in spec.units.items()}
    order = random.Random(seed)
    for sweep in range(1, max_sweeps + 1):
        improved = False
        for g in order.sample(sorted(perms), len(perms)):
            cost = match_cost(g, spec, a, b, perms)
            _, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            new = torch.as_tensor(cols, dtype=torch.long)
            rows = torch.arange(len(new))
            old_value, new_value = cost[rows, perms[g]].sum().item(), cost[rows, new].sum().item()
            if new_value > old_value + 1e-12 * max(1.0, abs(old_value)):
                perms[g], improved = new, True
        if not improved:
            return perms, sweep
    return perms, max_sweeps
