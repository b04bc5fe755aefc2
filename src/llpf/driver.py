"""The driver: the loop every path method shares, knowing no method.

It runs a :class:`~llpf.methods.base.Method` over the phase schedule and owns
what all methods have in common: the iteration counter, evaluation every
``eval_every`` iterations, batch losses buffered on the device and brought to
the host in one sync, saved points, checkpoints and resume, stop requests
(from signal handlers), the progress bar, and stopping a path whose loss turns
NaN. For a data-parallel method (``method.data_parallel``) it shards each
evaluation over the ranks and makes every rank act on the same stop request.
What it records goes to one observer per path (a run directory, or nothing);
it knows nothing about files.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence as SequenceABC
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from .data import Split
from .distributed import any_rank, evaluate_sharded, recompute_bn_stats_sharded
from .evaluation import RECALIBRATION_BATCH, bn_slice, eval_batch_for, eval_format, module_in, split_in
from .flat import cpu_state
from .methods.base import Knots, Method, Record
from .observer import Observer
from .progress import progress_bar
from .runtime import rng_state, set_rng_state
from .schedule import phase_at
from .train import DEFAULT_METRICS, MetricFn, evaluate, has_batchnorm, recompute_bn_stats


class SavedPoints(SequenceABC):
    """A path's saved points as ``(iteration, state)``: held in memory, or read from the run directory when asked.

    With a run directory the states stay on disk (a ResNet18 path saved every
    100 iterations would otherwise hold gigabytes); ``keep_points`` keeps them
    in memory too.
    """

    def __init__(self):
        self._items: list[tuple[int, dict[str, Tensor] | Callable[[], dict[str, Tensor]]]] = []

    def append(self, iteration: int, state) -> None:
        self._items.append((iteration, state))

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        it, state = self._items[i]
        return it, state() if callable(state) else state

    def __iter__(self) -> Iterator[tuple[int, dict[str, Tensor]]]:
        return (self[i] for i in range(len(self)))

    @property
    def iterations(self) -> list[int]:
        return [it for it, _ in self._items]


@dataclass
class PathResult:
    """What a path run returns: the recorded rows, saved points, final model, summary (and M2O's best model).

    ``path`` holds the path a method built when it is not its saved points
    (AutoNEB's pivots, a curve's control points).
    """

    method: str
    names: tuple[str, ...]
    rows: list[dict] = field(default_factory=list)
    points: SavedPoints = field(default_factory=SavedPoints)
    summary: dict = field(default_factory=dict)
    model: nn.Module | None = None
    best_model: nn.Module | None = None
    path: Knots | None = None

    def column(self, name: str) -> list[tuple[int, float]]:
        """``(iteration, value)`` for every row that has ``name``."""
        return [(r["iteration"], r[name]) for r in self.rows if r.get(name) is not None]


class Evaluator:
    """A path's evaluations at the cost of their forward passes (``llpf.evaluation``): the evaluation sets held
    on the method's device in the model's evaluation layout, the batch measured for the model (``eval_batch_size``
    0), BatchNorm statistics recomputed first on a fixed slice of the training set."""

    def __init__(self, method: Method, eval_sets: Mapping[str, Any] | None = None,
                 metrics: Mapping[str, MetricFn] | None = None, eval_batch_size: int = 0,
                 recalibration_examples: int = 8192):
        self.method = method
        self.metrics = dict(DEFAULT_METRICS if metrics is None else metrics)
        model = method.model_of(0)
        self._has_bn = has_batchnorm(model)  # asked once: model_of may share one module among paths
        self._format = eval_format(model)
        self.sets = {name: split_in(data.to(method.device), self._format) if isinstance(data, Split) else data
                     for name, data in (eval_sets or {}).items()}
        method.check_eval_sets(set(self.sets))
        self.batch_size, self.recalibration_examples = eval_batch_size, recalibration_examples
        self._bn_data = None

    def _batch_size(self, model: nn.Module) -> int:
        """The evaluation batch: ``eval_batch_size``, or measured for ``model`` on the device (0)."""
        if not self.batch_size:
            split = next((d for d in self.sets.values() if isinstance(d, Split)), None)
            self.batch_size = eval_batch_for(model, split) if split is not None else 0  # loaders batch themselves
        return self.batch_size

    @property
    def recalibrates_bn(self) -> bool:
        """Whether evaluations recompute BatchNorm statistics (on the ``train`` set, which must be given)."""
        return self.method.cfg.recalibrate_bn and "train" in self.sets and self._has_bn

    def recalibrate(self, model: nn.Module) -> None:
        """Recompute ``model``'s BatchNorm statistics on the training set's fixed slice (``recalibration_examples``
        of it, drawn once) in batches of ``RECALIBRATION_BATCH``; over the ranks' parts when data-parallel."""
        train = self.sets["train"]
        if self._bn_data is None:
            self._bn_data = bn_slice(train, self.recalibration_examples) if isinstance(train, Split) else train
        if self.method.data_parallel:
            recompute_bn_stats_sharded(model, self._bn_data, RECALIBRATION_BATCH, self.method.device)
        else:
            data = self._bn_data
            recompute_bn_stats(model, data.batches(RECALIBRATION_BATCH) if isinstance(data, Split) else data,
                               self.method.device)

    def measure(self, model: nn.Module, sets: Sequence[str] | None = None) -> tuple[dict, nn.Module]:
        """Evaluate ``model``; return the row and the module measured.

        The module measured is a copy in the evaluation layout (``channels_last``
        for conv nets, ``llpf.evaluation``) whenever that differs from the
        model's, and always with BatchNorm (and ``recalibrate_bn``), whose
        running statistics are recomputed on the training set's fixed slice
        first. The random state is restored afterwards, so evaluating never
        changes the path.
        """
        device, shared = self.method.device, self.method.data_parallel
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if self.recalibrates_bn or self._format != torch.contiguous_format:
                model = module_in(model, self._format)
            if self.recalibrates_bn:
                self.recalibrate(model)
            batch, row = self._batch_size(model), {}
            for name, data in self.sets.items():
                if sets is None or name in sets:
                    if shared:  # each rank evaluates its part; every rank gets the whole set's means
                        ev = evaluate_sharded(model, data, batch, self.method.loss_fn, self.metrics, device)
                    else:
                        ev = evaluate(model, data.batches(batch) if isinstance(data, Split) else data,
                                      self.method.loss_fn, self.metrics, device)
                    row.update({f"{name}_{key}": v for key, v in ev.items()})
        return row, model


class Driver:
    """Runs ``method`` to the end of its schedule, recording each of its paths.

    ``eval_sets`` maps a name (``train``, ``test``, ``validation``) to a Split
    or a re-iterable of batches, evaluated every ``cfg.eval_every`` iterations.
    ``observers`` holds one observer per path (none: record in memory only).
    """

    def __init__(self, method: Method, *, eval_sets: Mapping[str, Any] | None = None,
                 metrics: Mapping[str, MetricFn] | None = None, observers: Sequence[Observer] | None = None,
                 keep_points: bool = False, eval_batch_size: int = 0, recalibration_examples: int = 8192):
        self.method, self.cfg = method, method.cfg
        self.observers = list(observers) if observers is not None else [Observer() for _ in range(method.paths)]
        if len(self.observers) != method.paths:
            raise ValueError(f"{method.paths} path(s) need as many observers, got {len(self.observers)}")
        self.evaluator = Evaluator(method, eval_sets, metrics, eval_batch_size, recalibration_examples)
        self.keep_points = keep_points
        self.records = [Record() for _ in range(method.paths)]
        self.results = [PathResult(method.kind or method.name, method.names) for _ in range(method.paths)]
        self.active = list(range(method.paths))
        self.iteration = 0
        self.pending: list[tuple[int, int, Tensor, Tensor | int]] = []
        self.stop_requested = False  # set from a signal handler: checkpoint and return at the next iteration

    # ------------------------------------------------------------ evaluation

    def evaluate(self, model: nn.Module, sets: Sequence[str] | None = None) -> dict:
        """Loss and metrics of ``model`` on each evaluation set (or those named in ``sets``)."""
        return self.evaluator.measure(model, sets)[0]

    def _evaluate_into(self, k: int, row: dict) -> None:
        """Evaluate path k at its current point and add the results (and the method's measures) to ``row``."""
        ev, measured = self.evaluator.measure(self.method.model_of(k))
        ev.update(self.method.measure(k))
        rec = self.records[k]
        if "train_loss" in ev:
            rec.max_train_loss = max(rec.max_train_loss, ev["train_loss"])
            if not math.isfinite(ev["train_loss"]):
                rec.failure = f"training-set loss became {ev['train_loss']} at iteration {self.iteration}"
        if self.iteration == 0:
            rec.start_metrics = dict(ev)
        if self.method.after_evaluation(k, self.iteration, ev, rec, measured):
            self.observers[k].on_best(self.iteration, cpu_state(measured))
        row.update(ev)

    # ------------------------------------------------------------ recording

    def _flush(self) -> dict[int, list[dict]]:
        """Bring the buffered batch losses to the host as rows per active path; stop a path at a non-finite one."""
        losses = torch.stack([p[2].reshape(-1) for p in self.pending]).tolist() if self.pending else []
        rounds = [r.tolist() if isinstance(r, Tensor) else r for *_, r in self.pending]
        out = {}
        for k in self.active:
            rec, rows = self.records[k], []
            for (it, ph, _, _), loss_k, r in zip(self.pending, losses, rounds):
                loss = loss_k[k]
                if not math.isfinite(loss):
                    rec.failure = f"batch loss became {loss} at iteration {it}"
                    break
                rows.append({"iteration": it, "phase": ph + 1, "batch_loss": loss,
                             "rounds": r[k] if isinstance(r, list) else r})
                rec.add_batch_loss(loss, self.cfg.loss_threshold)
            out[k] = rows
        self.pending = []
        return out

    def _emit(self, k: int, rows: list[dict]) -> None:
        if rows:
            self.results[k].rows.extend(rows)
            self.observers[k].on_rows(rows)

    def _save_point(self, k: int) -> None:
        state, obs = cpu_state(self.method.model_of(k)), self.observers[k]
        obs.on_point(self.iteration, state)
        loader = obs.point_loader(self.iteration)
        if self.keep_points or loader is not None:
            self.results[k].points.append(self.iteration, state if self.keep_points else loader)

    def _hand_over_path(self, k: int) -> None:
        """A path that ended complete: record the path its method built, if that is not its saved points."""
        knots = self.method.path(k)
        if knots is not None:
            self.results[k].path = knots
            self.observers[k].on_path(knots.curve, knots.states)

    def _retire(self, k: int) -> None:
        self.active.remove(k)
        self.records[k].iterations = self.iteration
        self.method.retire(k)

    # ------------------------------------------------------------ checkpoint

    def state_dict(self, k: int = 0) -> dict:
        """Everything needed to continue path k bit for bit (call after a flush)."""
        return {"iteration": self.iteration, "record": asdict(self.records[k]), "rng": rng_state(),
                "method": self.method.state_dict(k)}

    def load_state_dict(self, state: dict, k: int = 0) -> None:
        self.iteration = int(state["iteration"])
        self.records[k] = Record(**state["record"])
        self.method.load_state_dict(k, state["method"])
        set_rng_state(state["rng"])

    # ------------------------------------------------------------ the loop

    def run(self, progress: bool = False) -> list[PathResult]:
        """Run to the end of the schedule (or until a stop is requested); one PathResult per path."""
        m = self.method
        if self.iteration == 0:
            m.begin(self.evaluate)
            for k in self.active:
                row = {"iteration": 0, "phase": 0, "rounds": 0}
                self._evaluate_into(k, row)
                self._emit(k, [row])
                self._save_point(k)
            for k in [k for k in self.active if m.zero_length(k)]:  # nothing to walk: the path is its start
                self._hand_over_path(k)
                self._retire(k)
        bar = progress_bar(total=m.total, initial=self.iteration, desc=m.name.upper(), enabled=progress)
        stop = self._stop_agreed()
        while self.iteration < m.total and self.active and not stop:
            stop = self.step(bar)
            if bar.total != m.total:  # AutoNEB re-plans its later cycles as it inserts pivots
                bar.total = m.total
        bar.close()
        return self._results()

    def step(self, bar=None) -> bool:
        """One iteration of every path, recorded on cadence; True when a stop was agreed (and checkpointed)."""
        m = self.method
        i = self.iteration + 1
        rp = phase_at(m.schedule, i)
        loss, rounds = m.iterate(i, rp)
        self.iteration = i
        self.pending.append((i, rp.index, loss, rounds))
        if bar is not None:
            bar.update(1)
        finishing = {k for k in self.active if m.finished(k)}
        if finishing or self._on_cadence(i):
            self._record(i, finishing, bar)
        stop = self._stop_agreed()
        if stop and self.active:
            self._checkpoint_active(i)
        return stop

    def _stop_agreed(self) -> bool:
        """The stop request acted on: read once per iteration; data-parallel, requested on any rank (one all-reduce).

        A signal can reach one rank and not the others, or each at another
        iteration; acting on the agreed value, every rank stops after the same
        iteration, so none waits in a collective the others have left.
        """
        return any_rank(self.stop_requested) if self.method.data_parallel else self.stop_requested

    def _on_cadence(self, i: int) -> bool:
        c = self.cfg
        return i == self.method.total or i % c.eval_every == 0 or i % c.save_every == 0 or i % c.checkpoint_every == 0

    def _record(self, i: int, finishing: set[int], bar) -> None:
        """Rows, evaluation, points and checkpoints of iteration ``i`` for every active path."""
        c = self.cfg
        rows_of = self._flush()
        for k in list(self.active):
            rows, rec = rows_of[k], self.records[k]
            last = i == self.method.total or k in finishing
            if rec.failure is None and (last or i % c.eval_every == 0):
                self._evaluate_into(k, rows[-1])
                if k == self.active[0] and bar is not None:
                    bar.set_postfix(loss=f"{rows[-1].get('train_loss', rows[-1]['batch_loss']):.4f}")
            self._emit(k, rows)
            if rec.failure:
                self._retire(k)
                continue
            if i % c.save_every == 0 or last:
                self._save_point(k)
            if last:
                self._hand_over_path(k)
                rec.stopped_early = k in finishing
                self._retire(k)
            elif i % c.checkpoint_every == 0:
                self.observers[k].on_checkpoint(i, self.state_dict(k))

    def _checkpoint_active(self, i: int) -> None:
        """A stop was requested: flush, and checkpoint every path still running so it can resume."""
        rows_of = self._flush()
        for k in list(self.active):
            self._emit(k, rows_of[k])
            if self.records[k].failure:
                self._retire(k)
            else:
                self.observers[k].on_checkpoint(i, self.state_dict(k))

    def _results(self) -> list[PathResult]:
        """Summaries for the paths that ended (failed, finished or complete); models for all."""
        m = self.method
        for k, res in enumerate(self.results):
            if k not in self.active:
                res.summary = path_summary(m, k, self.records[k])
                self.observers[k].on_summary(res.summary)
            res.model = m.model_of(k) if m.paths == 1 else copy.deepcopy(m.model_of(k))  # one module per path
            res.best_model = m.best_model(k)
        return self.results


def path_summary(method: Method, k: int, rec: Record) -> dict:
    """Path k's ``summary.json``: what every method reports (status, iterations, loss maxima), then its own fields."""
    finite = lambda v: v if math.isfinite(v) else None  # noqa: E731
    s: dict[str, Any] = {
        "kind": method.kind or method.name,
        "status": "failed" if rec.failure else "complete",
        "iterations": rec.iterations,
        "planned_iterations": method.total,
        "max_batch_loss": finite(rec.max_batch_loss),
        "max_train_loss": finite(rec.max_train_loss),
        "numerics": method.numerics(),
    }
    if rec.failure:
        s["reason"] = rec.failure
    if method.zero_length(k):
        s["zero_length"] = True
    s.update(method.summary(k, rec))
    return s
