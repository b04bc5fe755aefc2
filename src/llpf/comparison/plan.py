"""``llpf compare --dry-run``: every method's table as it would run, checked end to end on random tensors.

For one pair and every budget asked, each method's table is built as the
comparison builds it (budget scaling, LLPF's dense points, ``llpf-until``'s
rule), its planned gradient evaluations are worked out, and two of its
iterations run on random models and random batches of the model's input
shape (LLPF's with one Train_r step each, AutoNEB's with one point per segment
on its insertion grid): phase patterns, tables, budgets and the method itself
are checked. Nothing is trained and nothing is written.
"""
from __future__ import annotations

import dataclasses
import time

import torch

from .. import config as C
from ..methods import method_class
from ..models import build_model
from ..schedule import phase_at
from . import budget as B
from .options import COMPARED, Options, budget_label
from .run import planned_tables


def plan(cfg: C.Config, opts: Options, device, batch_size: int | None, log) -> dict:
    """The plan of every (budget, method) of one pair, each checked by two iterations (module docstring)."""
    from ..reproduce import random_bundle

    rows = []
    for slot, name, budget, table in planned_tables(cfg, opts):
        kind = COMPARED[name]
        bs = batch_size or table.batch_size
        times = _two_iterations(cfg, kind, table, bs, random_bundle(cfg, 4 * bs, bs), device)
        rows.append({"method": name, "budget": budget_label(slot), "given": budget,
                     "planned_gradient_steps": B.planned_evaluations(kind, table), "schedule": schedule(kind, table),
                     "batch_size": table.batch_size, "timed_batch_size": bs, "iteration_s": times})
    result = {"config": cfg.name, "device": str(device), "methods": rows}
    for line in format_plan(result):
        log(line)
    return result


def _two_iterations(cfg: C.Config, kind: str, table, bs: int, fake, device) -> list[float]:
    """Seconds of two iterations of the method on random models and batches (LLPF's with one Train_r step)."""
    if kind == "m2m":
        first = dataclasses.replace(table.phases[0], rounds=1, until_loss=0.0)
        table = dataclasses.replace(table, phases=[first] + table.phases[1:])
    if kind == "autoneb":  # one point per segment on its insertion grid: the check, not the cost, is the aim
        table = dataclasses.replace(table, points_per_segment=1)
    table = dataclasses.replace(table, batch_size=bs)
    torch.manual_seed(0)
    start, dest = build_model(cfg.model), build_model(cfg.model)
    method = method_class(kind)(start, table, fake.train, dest=dest, device=device)
    times = []
    for i in (1, 2):
        t0 = time.perf_counter()
        loss, _ = method.iterate(i, phase_at(method.schedule, i))
        float(loss)
        times.append(time.perf_counter() - t0)
    return times


def schedule(kind: str, table) -> str:
    """A method's schedule in a few words."""
    if kind == "m2m":
        rules = {f"until loss < {ph.until_loss:g} (r <= {ph.max_rounds})" if ph.until_loss > 0 else f"r = {ph.rounds}"
                 for ph in table.phases}
        return (f"{table.total_iterations} iterations in {len(table.phases)} phase(s), {', '.join(sorted(rules))}, "
                f"lr {table.lr:g}, a point saved every {table.save_every}")
    if kind == "autoneb":
        lrs = sorted({c.lr for c in table.cycles}, reverse=True)
        steps = "band steps set as each cycle starts" if table.budget else \
            f"{sum(c.steps for c in table.cycles)} band steps"
        return (f"{len(table.cycles)} cycles ({steps}), lr {', '.join(f'{v:g}' for v in lrs)}, "
                f"{table.initial_pivots} to {table.max_pivots - 2} interior pivots, weight decay {table.weight_decay:g}")
    if kind == "bezier":
        return f"{table.kind}: {table.steps} steps, lr {table.lr:g}, weight decay {table.weight_decay:g}"
    return f"{table.points} points"


def format_plan(p: dict) -> list[str]:
    """The plan as ``llpf compare --dry-run`` prints it."""
    lines = [f"{p['config']}: one pair, every method checked by two iterations on random tensors on {p['device']}"]
    for r in p["methods"]:
        cost = "as its Train_r rule takes" if r["planned_gradient_steps"] is None else f"{r['planned_gradient_steps']:,}"
        lines.append(f"  {r['method']:10s} budget {str(r['budget']):>8s}: {cost} gradient evaluations (batch "
                     f"{r['batch_size']}); {r['schedule']}; two iterations at batch {r['timed_batch_size']}: "
                     + ", ".join(f"{t * 1000:.0f} ms" for t in r["iteration_s"]))
    return lines
