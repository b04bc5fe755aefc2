"""``llpf m2o-baselines``: does M2O beat a fair baseline at the same cost?

The paper offers M2O (Algorithm 2) as a post-training regulariser. From one
start model and one config this runs, into ``DIR``::

    DIR/m2o/                   M2O at the config's [m2o] settings
    DIR/move-only/             its Move schedule alone: T Moves, no gradient step
    DIR/finetune-wdX/          plain SGD with weight decay X, as many gradient steps as M2O took
    DIR/m2o-baselines.csv      one row per method: its best point on validation, and that point's test metrics
    DIR/m2o-baselines.json     the same, with the settings
    DIR/m2o-baselines.png      the selection metric on validation and test along each run

Every run starts from the same model and draws the same batch stream (the
config's seed) at the same batch size, learning rate and momentum; each
chooses its best point on a validation split cut from the training set
(``data.validation_fraction``) by the config's ``select_by``, and only then is
the test split read. The start model should not have seen that split: train
it from a config with the same ``validation_fraction``.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from pathlib import Path
from typing import Callable, Sequence

from .. import config as C
from ..data import Bundle, prepare_data
from ..errors import ConfigError
from .. import files
from ..files import check_output_folder, write_json
from ..runner import resolve_run, resume, run_path
from ..runtime import pick_device
from ..store import RunDir

COLUMNS = ["method", "weight_decay", "status", "gradient_steps", "iterations", "best_iteration",
           "best_fraction_to_origin", "validation_loss", "validation_accuracy", "test_loss", "test_accuracy",
           "wall_s", "run"]
DECAY_MULTIPLES = (0.0, 0.25, 1.0, 4.0)  # of the matched decay (see matched_decay)


def baseline_config(cfg: C.Config, validation_fraction: float = 0.1) -> C.Config:
    """``cfg`` selecting on validation: ``data.validation_fraction`` as given (when the config sets none)."""
    if cfg.m2o is None:
        raise ConfigError(f"config {cfg.name!r} has no [m2o] table")
    fraction = cfg.data.validation_fraction or validation_fraction
    if not 0 < fraction < 1:
        raise ConfigError(f"the validation fraction must be in (0, 1), got {fraction}")
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, validation_fraction=fraction),
                               m2o=dataclasses.replace(cfg.m2o, select_on="validation"))


def gradient_steps(run: str | Path) -> int:
    """Gradient steps a run took: the sum of its per-iteration rounds (metrics.csv)."""
    return int(sum(r["rounds"] or 0 for r in RunDir(run).metrics()))


def matched_decay(pc: C.PathConfig, steps: int) -> float:
    """The weight decay at which ``steps`` SGD steps shrink a weight as much as the Move schedule does.

    Move with ``step_f = 0`` scales a moved layer by ``1 - step_a`` per
    iteration; SGD's decay scales every weight by ``1 - lr x wd`` per step
    (gradients aside). Solves ``(1 - lr wd)^steps = prod_p (1 - step_a_p)^{T_p}``.
    """
    log_shrink = sum(ph.iterations * math.log1p(-min(ph.step_a, 1.0 - 1e-12)) for ph in pc.phases)
    if steps <= 0 or pc.lr <= 0 or log_shrink == 0:
        return 0.0
    return -math.expm1(log_shrink / steps) / pc.lr


def finetune_config(cfg: C.Config, steps: int, iterations: int, decay: float) -> C.Config:
    """Plain fine-tuning for ``steps`` SGD steps with ``decay``: one step per iteration.

    Its cadences of evaluation, points and checkpoints are M2O's, scaled by
    M2O's steps per iteration, so both are measured about as often per
    gradient step. The phase keeps M2O's layers (for the ratios it records)
    and Move's step sizes, which fine-tuning does not use.
    """
    pc = cfg.m2o
    per_it = steps / max(1, iterations)
    scale = lambda n: max(1, round(n * per_it))  # noqa: E731
    layers = sorted({p for ph in pc.phases for p in ph.layers})
    phase = dataclasses.replace(pc.phases[0], iterations=steps, layers=layers, keep_previous=False, rounds=1,
                                until_loss=0.0)
    m2o = dataclasses.replace(pc, phases=[phase], weight_decay=decay, target_variance_ratio=0.0,
                              eval_every=scale(pc.eval_every), save_every=scale(pc.save_every),
                              checkpoint_every=scale(pc.checkpoint_every))
    return dataclasses.replace(cfg, m2o=m2o)


def run_once(kind: str, cfg: C.Config, start: Path, out: Path, data: Bundle, device, progress: bool,
             force: bool) -> dict:
    """One run, its wall seconds added to its summary; with ``force``, a finished run of the same
    settings is kept and an interrupted one resumed."""
    rd = RunDir(out)
    t0 = time.perf_counter()
    if force and rd.exists:
        resolve_run(rd, kind, cfg, start)
        if rd.info().get("status") == "complete":
            return rd.summary()
        summary = resume(out, device=device, progress=progress, data=data)
    else:
        summary = run_path(kind, cfg, start, None, out, device=device, progress=progress, data=data)
    if not summary:
        raise KeyboardInterrupt
    return rd.update_summary({"wall_s": time.perf_counter() - t0})


def row_of(method: str, run: Path, s: dict, decay: float | None) -> dict:
    """A method's row: its best point on validation, that point's test metrics, and what it cost."""
    return {"method": method, "weight_decay": decay, "status": s["status"], "gradient_steps": gradient_steps(run),
            "iterations": s["iterations"], "best_iteration": s["best_iteration"],
            "best_fraction_to_origin": s.get("best_fraction_to_origin"),
            **{f"{split}_{m}": s.get(f"best_{split}_{m}") for split in ("validation", "test")
               for m in ("loss", "accuracy")},
            "wall_s": s.get("wall_s"), "run": run.name}


def start_row(s: dict) -> dict:
    """The start model itself, as every run measured it at iteration 0."""
    row = {k: None for k in COLUMNS}
    row.update(method="start", status="complete", gradient_steps=0, iterations=0, best_iteration=0,
               best_fraction_to_origin=0.0, wall_s=0.0, run="m2o")
    row.update({f"{split}_{m}": s.get(f"start_{split}_{m}") for split in ("validation", "test")
                for m in ("loss", "accuracy")})
    return row


def m2o_baselines(cfg: C.Config, start: str | Path, out: str | Path, *, decays: Sequence[float] | None = None,
                  validation_fraction: float = 0.1, device=None, force: bool = False, progress: bool = False,
                  data: Bundle | None = None, log: Callable[[str], object] = print) -> dict:
    """Run M2O, move-only and fine-tuning over ``decays`` from ``start`` into ``out``; write and return the table.

    ``decays`` defaults to 0 and 1/4, 1 and 4 times :func:`matched_decay`.
    ``data`` (default: the config's dataset) must hold a validation split.
    """
    out, start = check_output_folder(out, force), Path(start)
    cfg = baseline_config(cfg, validation_fraction)
    device = pick_device(device)
    data = data or prepare_data(cfg, device)
    if data.validation is None:
        raise ConfigError("m2o-baselines selects on a validation split, and the data holds none")
    go = lambda kind, c, name: run_once(kind, c, start, out / name, data, device, progress, force)  # noqa: E731
    log("M2O from the start model")
    m2o = go("m2o", cfg, "m2o")
    steps = gradient_steps(out / "m2o")
    rows = [start_row(m2o), row_of("m2o", out / "m2o", m2o, cfg.m2o.weight_decay)]
    log(f"  {steps} gradient steps in {m2o['iterations']} iterations; move-only: the same Moves, no steps")
    rows.append(row_of("move-only", out / "move-only", go("move-only", cfg, "move-only"), None))
    matched = matched_decay(cfg.m2o, steps)
    for wd in (decays if decays is not None else [k * matched for k in DECAY_MULTIPLES]):
        log(f"fine-tuning, weight decay {wd:.4g}: {steps} SGD steps")
        name = f"finetune-wd{wd:.4g}"
        rows.append(row_of("finetune", out / name, go("finetune", finetune_config(cfg, steps, m2o["iterations"], wd),
                                                       name), wd))
    result = {"config": cfg.name, "start": str(start), "device": str(device), "select_on": "validation",
              "select_by": cfg.m2o.select_by, "validation_fraction": cfg.data.validation_fraction,
              "budget_gradient_steps": steps, "matched_decay": matched, "rows": rows,
              "chosen_on_validation": best_row(rows, cfg.m2o.select_by)["run"]}
    write_baselines(result, out)
    return result


def best_row(rows: list[dict], select_by: str) -> dict:
    """The row whose chosen point is best on validation (the method a careful user would pick)."""
    key = f"validation_{select_by}"
    sign = 1 if select_by == "loss" else -1
    done = [r for r in rows if r.get(key) is not None and math.isfinite(r[key])]
    return min(done, key=lambda r: sign * r[key])


def write_baselines(result: dict, out: Path) -> dict[str, Path]:
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in result["rows"]:
        w.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    files.atomic_write(out / "m2o-baselines.csv", buf.getvalue().encode())
    write_json(out / "m2o-baselines.json", result)
    return {"csv": out / "m2o-baselines.csv", "json": out / "m2o-baselines.json",
            "figure": baselines_figure(result, out, out / "m2o-baselines.png")}


def baselines_figure(result: dict, runs_dir: Path, path: Path) -> Path:
    """The selection metric on validation (top) and test (bottom) along each run, its chosen point starred."""
    from ..plots import new_figure, save_figure

    metric = result["select_by"]
    fig = new_figure(figsize=(7, 6))
    axes = fig.subplots(2, 1, sharex=True)
    for r in result["rows"][1:]:
        rows = [m for m in RunDir(runs_dir / r["run"]).metrics() if m.get(f"validation_{metric}") is not None]
        if not rows:
            continue
        x = [m["iteration"] / max(1, r["iterations"]) for m in rows]
        label = f"finetune wd {r['weight_decay']:.3g}" if r["method"] == "finetune" else r["run"]
        for ax, split in zip(axes, ("validation", "test")):
            line, = ax.plot(x, [m[f"{split}_{metric}"] for m in rows], lw=1, label=label if split == "test" else None)
            ax.plot(r["best_iteration"] / max(1, r["iterations"]), r[f"{split}_{metric}"], "*", ms=11, mec="k",
                    color=line.get_color())
    for ax, split in zip(axes, ("validation", "test")):
        ax.set_ylabel(f"{split} {metric}")
        near = [r[f"{split}_{metric}"] for r in result["rows"] if r[f"{split}_{metric}"] is not None]
        if near:  # zoom on the start and the chosen points, where the methods differ
            pad = 1.5 * max(max(near) - min(near), 1e-3)
            ax.set_ylim(min(near) - pad, max(near) + pad)
    axes[1].set_xlabel("share of the run (M2O and fine-tuning: the same gradient steps)")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{result['config']}: best point on validation (star), then read on test", fontsize=9)
    return save_figure(fig, path)
