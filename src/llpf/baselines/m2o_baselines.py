"""``llpf m2o-baselines``: does M2O beat a fair baseline at the same cost?

The paper offers M2O (Algorithm 2) as a post-training regulariser. From one
start model and one config this runs, into ``DIR``::

    DIR/m2o/                   M2O at the config's [m2o] settings
    DIR/move-only/             its Move schedule alone: T Moves, no gradient step
    DIR/finetune-wdX/          plain SGD with weight decay X on the layers M2O moves, as many gradient steps
                               as M2O took (DIR/finetune-wdX-all/: the decay on every parameter)
    DIR/m2o-baselines.csv      one row per method: its best point on validation, and that point's test metrics
    DIR/m2o-baselines.json     the same, with the settings
    DIR/m2o-baselines.png      the selection metric on validation and test along each run
    DIR/ranks/rank-R.json      how each run went on the rank that ran it (:mod:`llpf.shards`)

Every run starts from the same model and draws the same batch stream (the
config's seed) at the same batch size, learning rate and momentum; each
chooses its best point on a validation split cut from the training set
(``data.validation_fraction``) by the config's ``select_by``, and only then is
the test split read. The start model should not have seen that split: train
it from a config with the same ``validation_fraction``.

Fine-tuning decays the parameters M2O moves and no others (``decay_on =
"moved"``): M2O never shrinks normalisation layers (paper section 3.3), and
:func:`matched_decay` sizes the decay to shrink the moved layers as Move
does. ``decay_on = "all"`` decays every parameter instead.
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
from .. import distributed as D
from .. import shards
from ..data import Bundle, prepare_data
from ..errors import ConfigError, RunDirError
from .. import files
from ..files import check_output_folder, write_json
from ..runner import load_model, resolve_run, resume, run_path
from ..runtime import pick_device
from ..store import RunDir, gradient_steps

COLUMNS = ["method", "weight_decay", "status", "gradient_steps", "iterations", "best_iteration",
           "best_fraction_to_origin", "validation_loss", "validation_accuracy", "test_loss", "test_accuracy",
           "wall_s", "run"]
# Of the matched decay (see matched_decay). The plain and the matched runs come first: on 2 ranks they run together.
DECAY_MULTIPLES = (0.0, 1.0, 0.25, 4.0)


def baseline_config(cfg: C.Config, validation_fraction: float = 0.1) -> C.Config:
    """``cfg`` selecting on validation: ``data.validation_fraction`` as given (when the config sets none)."""
    if cfg.m2o is None:
        raise ConfigError(f"config {cfg.name!r} has no [m2o] table")
    fraction = cfg.data.validation_fraction or validation_fraction
    if not 0 < fraction < 1:
        raise ConfigError(f"the validation fraction must be in (0, 1), got {fraction}")
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, validation_fraction=fraction),
                               m2o=dataclasses.replace(cfg.m2o, select_on="validation"))


def check_decays(cfg: C.Config, decays: Sequence[float] | None) -> None:
    """Each fine-tuning weight decay checked as its run's [m2o] table will be, before any run starts."""
    for d in decays or ():
        C.method_config(C.PathConfig, dataclasses.replace(cfg.m2o, weight_decay=d), "--decays: m2o.")


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


DECAY_ON = ("moved", "all")  # the parameters fine-tuning decays: those M2O moves (default), or every one


def finetune_config(cfg: C.Config, steps: int, iterations: int, decay: float, decay_on: str = "moved") -> C.Config:
    """Plain fine-tuning for ``steps`` SGD steps with ``decay`` on ``decay_on``: one step per iteration.

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
    m2o = dataclasses.replace(pc, phases=[phase], weight_decay=decay, weight_decay_on=decay_on, target_variance_ratio=0.0,
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
                  decay_on: str = "moved", validation_fraction: float = 0.1, device=None, force: bool = False,
                  progress: bool = False, data: Bundle | None = None, log: Callable[[str], object] = print) -> dict:
    """Run M2O, move-only and fine-tuning over ``decays`` from ``start`` into ``out``; write and return the table.

    ``decays`` defaults to 0 and 1, 1/4 and 4 times :func:`matched_decay`, in that order, each on the
    parameters ``decay_on`` names (:data:`DECAY_ON`).
    ``data`` (default: the config's dataset) must hold a validation split.
    Under torchrun the runs are dealt to the ranks as repetitions are
    (:mod:`llpf.shards`): M2O to rank 0, move-only to rank 1, and each
    fine-tuning run, which waits for M2O's budget, round robin after them.
    Rank 0 writes the table and returns it; the other ranks return ``{}``.
    """
    cfg = baseline_config(cfg, validation_fraction)
    if decay_on not in DECAY_ON:
        raise ConfigError(f"decay_on must be one of {', '.join(DECAY_ON)}, got {decay_on!r}")
    check_decays(cfg, decays)
    load_model(cfg, start, "start")  # one line now, not every run failed on every rank
    world, rank = D.world_size(), D.rank()
    device = D.init(device) if world > 1 else pick_device(device)
    out, start = D.on_main(lambda: check_output_folder(out, force)), Path(start)
    data = data or prepare_data(cfg, device)
    if data.validation is None:
        raise ConfigError("m2o-baselines selects on a validation split, and the data holds none")
    run_id = D.shared_run_id()
    D.cleanup()  # the ranks work apart from here: a fine-tuning run may outlast any collective's timeout
    say = log if world == 1 else (lambda line: log(f"rank {rank}: {line}"))
    plan = Plan(cfg, start, out, decays, decay_on, data, device, progress, force, world, run_id)
    shards.run_shard(out, plan.count, world, rank, run_id, lambda k: plan.run(k, say), plan.finished, say,
                     noun="run")
    if rank != 0:
        return {}
    return plan.report(shards.wait_for_ranks(out, plan.count, world, run_id))


@dataclasses.dataclass
class Plan:
    """The runs of one comparison, numbered for :func:`llpf.shards.run_shard`: 0 M2O, 1 move-only, then fine-tuning.

    Fine-tuning gets M2O's gradient steps, so run 2 and later wait until M2O is complete.
    """

    cfg: C.Config
    start: Path
    out: Path
    decays: Sequence[float] | None
    decay_on: str
    data: Bundle
    device: object
    progress: bool
    force: bool
    world: int
    run_id: str
    m2o_done: tuple[int, int] | None = None  # M2O's (gradient steps, iterations), read once it is complete

    @property
    def count(self) -> int:
        return 2 + len(self.decays if self.decays is not None else DECAY_MULTIPLES)

    def budget(self) -> int | None:
        """M2O's gradient steps, or None while M2O is not complete (its run is read once, when it is)."""
        if self.m2o_done is None:
            m2o = RunDir(self.out / "m2o")
            if m2o.exists and m2o.info().get("status") == "complete":
                self.m2o_done = (gradient_steps(m2o.path), m2o.summary()["iterations"])
        return None if self.m2o_done is None else self.m2o_done[0]

    def decay(self, k: int, steps: int) -> float:
        multiples = [m * matched_decay(self.cfg.m2o, steps) for m in DECAY_MULTIPLES]
        return (self.decays if self.decays is not None else multiples)[k - 2]

    def settings(self, k: int, steps: int | None) -> tuple[str, str, C.Config]:
        """Run ``k``'s (folder, kind, config); fine-tuning needs M2O's ``steps``."""
        if k < 2:
            return ("m2o", "move-only")[k], ("m2o", "move-only")[k], self.cfg
        wd = self.decay(k, steps)
        name = f"finetune-wd{wd:.4g}" + ("-all" if self.decay_on == "all" else "")
        return name, "finetune", finetune_config(self.cfg, steps, self.m2o_done[1], wd, self.decay_on)

    def finished(self, k: int) -> bool:
        """Run ``k`` is complete with these settings (one of other settings is refused, as ``--force`` does)."""
        steps = self.budget()
        if k >= 2 and steps is None:
            return False
        name, kind, cfg = self.settings(k, steps)
        rd = RunDir(self.out / name)
        if not rd.exists:
            return False
        resolve_run(rd, kind, cfg, self.start)
        return rd.info().get("status") == "complete"

    def run(self, k: int, log: Callable[[str], object]) -> dict:
        steps = self.budget() if k < 2 else self.wait_for_m2o()
        name, kind, cfg = self.settings(k, steps)
        if k == 0:
            log("M2O from the start model")
        elif k == 1:
            log("move-only: M2O's Moves, no gradient step")
        else:
            log(f"fine-tuning, weight decay {cfg.m2o.weight_decay:.4g} on the {self.decay_on} parameters: {steps} SGD "
                f"steps")
        run_once(kind, cfg, self.start, self.out / name, self.data, self.device, self.progress, self.force)
        return {"run": name}

    def wait_for_m2o(self, poll_s: float = 2.0) -> int:
        """M2O's gradient steps once it is complete; raises when its rank failed, was stopped or is gone."""
        while (steps := self.budget()) is None:
            m2o = RunDir(self.out / "m2o")
            if m2o.exists and m2o.info().get("status") == "failed":  # its rank went on: the run ended, not the rank
                raise RunDirError(f"M2O failed ({m2o.info().get('reason')}), and fine-tuning takes its budget "
                                  f"of gradient steps")
            tally = shards.collect(self.out, self.count, self.world, self.run_id)
            if tally.statuses[0] in ("failed", "interrupted") or shards.owner(0, self.world) in tally.gone:
                raise RunDirError("M2O did not finish, and fine-tuning takes its budget of gradient steps")
            time.sleep(poll_s)
        return steps

    def report(self, tally: shards.Tally) -> dict:
        """Rank 0: the table of the finished runs, written; one line naming those that did not finish."""
        steps = self.budget()
        rows, lost = [], []
        for k in range(self.count):
            if tally.statuses.get(k) not in ("complete", "skipped"):
                label = self.settings(k, steps)[0] if k < 2 or steps else f"fine-tuning run {k - 1}"
                lost.append(f"{label} ({tally.reasons.get(k, tally.statuses.get(k, 'missing'))})")
                continue
            name, kind, cfg = self.settings(k, steps)
            s = RunDir(self.out / name).summary()
            if k == 0:
                rows.append(start_row(s))
            rows.append(row_of(kind, self.out / name, s, None if kind == "move-only" else cfg.m2o.weight_decay))
        result = {"config": self.cfg.name, "start": str(self.start), "device": str(self.device),
                  "select_on": "validation", "select_by": self.cfg.m2o.select_by,
                  "validation_fraction": self.cfg.data.validation_fraction, "budget_gradient_steps": steps,
                  "decay_on": self.decay_on,
                  "matched_decay": matched_decay(self.cfg.m2o, steps) if steps else None, "rows": rows,
                  "chosen_on_validation": best_row(rows, self.cfg.m2o.select_by)["run"] if rows else None}
        if rows:
            write_baselines(result, self.out)
        if lost:
            raise RunDirError(f"{len(lost)} of {self.count} runs did not finish: {'; '.join(lost)}; "
                              f"run the same command with --force to complete them")
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
    for r in (r for r in result["rows"] if r["method"] != "start"):
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
