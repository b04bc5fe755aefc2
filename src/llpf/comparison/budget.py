"""Budgets in gradient evaluations: every method's schedule scaled to the same cost.

A gradient evaluation is one forward and backward pass on one batch: a Train_r
step of LLPF, one interior pivot in one AutoNEB band step, one step of a
curve's bend. Scaling keeps each method's shape and changes its length:

- LLPF (M2M, paper Algorithm 1): every phase's iterations T scaled alike, and
  Move's steps so that the path still arrives where it did: ``step_f`` times
  T / T' and ``1 - step_a`` raised to T / T' (the distance left after the
  phase is then the same, exactly for either term alone). r stays r, so a
  larger budget walks the same way in more, smaller steps with the same
  training per step. A phase that trains until a loss is counted at its
  nominal ``rounds`` for the scaling; what it takes is measured.
- AutoNEB: ``budget`` (:mod:`llpf.baselines.elastic_band`): the cycles keep
  their proportions and each cycle's band steps are set as it starts, so the
  run spends the budget whatever pivots it inserts.
- A curve: its steps (its learning-rate schedule follows its length).
- The straight line costs nothing.

The cadences of evaluation, saved points and checkpoints scale with the
schedule, so every run is measured as often along its length.
"""
from __future__ import annotations

import dataclasses
import math

from .. import config as C


def _scaled(every: int, factor: float) -> int:
    return max(1, round(every * factor))


def _cadences(table, factor: float) -> dict:
    return {k: _scaled(getattr(table, k), factor) for k in ("eval_every", "save_every", "checkpoint_every")}


def path_evaluations(pc: C.PathConfig) -> tuple[int, bool]:
    """An M2M table's Train_r steps, and whether that is exact (fixed r) or nominal (some phase trains until a
    loss: counted at its ``rounds``)."""
    return sum(ph.iterations * ph.rounds for ph in pc.phases), all(ph.until_loss <= 0 for ph in pc.phases)


def planned_evaluations(kind: str, table) -> int | None:
    """The gradient evaluations a method's table plans to spend; None when only the run can tell (a Train_r
    that trains until a loss)."""
    if kind == "m2m":
        steps, exact = path_evaluations(table)
        return steps if exact else None
    if kind == "autoneb":
        return table.budget or C.autoneb_step_cost(table, [c.steps for c in table.cycles])
    if kind == "bezier":
        return table.steps
    return 0


def scaled_path(pc: C.PathConfig, budget: int) -> C.PathConfig:
    """An M2M table walking the same way in ``budget`` Train_r steps (module docstring)."""
    nominal, _ = path_evaluations(pc)
    factor = budget / nominal
    phases = []
    for ph in pc.phases:
        t = max(1, round(ph.iterations * factor))
        ratio = ph.iterations / t
        phases.append(dataclasses.replace(ph, iterations=t, step_f=ph.step_f * ratio,
                                          step_a=-math.expm1(ratio * math.log1p(-min(ph.step_a, 1.0)))
                                          if ph.step_a < 1 else 1.0))
    return dataclasses.replace(pc, phases=phases, **_cadences(pc, factor))


def scaled(kind: str, table, budget: int):
    """``table`` scaled to spend ``budget`` gradient evaluations (the line's as it is)."""
    if kind == "m2m":
        return scaled_path(table, budget)
    if kind == "autoneb":
        return dataclasses.replace(table, budget=budget, **_cadences(table, budget / planned_evaluations(kind, table)))
    if kind == "bezier":
        return dataclasses.replace(table, steps=budget, **_cadences(table, budget / table.steps))
    return table


def until(pc: C.PathConfig, loss: float, max_rounds: int) -> C.PathConfig:
    """An M2M table whose every phase trains until the batch loss is below ``loss``, 1 to ``max_rounds`` steps (the
    paper's rule for ResNet18 and CCT7, the authors' code's for every model) instead of a fixed r."""
    phases = [dataclasses.replace(ph, until_loss=loss, min_rounds=1, max_rounds=max_rounds) for ph in pc.phases]
    return dataclasses.replace(pc, phases=phases)


def dense(pc: C.PathConfig, knots: int) -> C.PathConfig:
    """An M2M table saving its point at least every ``ceil(T / knots)`` iterations, so that the polygon through
    its saved points has ``knots`` segments or more and stays close to the path it walked."""
    every = max(1, math.ceil(pc.total_iterations / knots))
    return dataclasses.replace(pc, save_every=min(pc.save_every, every))
