"""The LLPF path engine: Algorithm 1 (M2M) and Algorithm 2 (M2O).

``m2m_iteration`` and ``m2o_iteration`` are the loop bodies and read line by
line against the paper. ``PathEngine`` runs them over a phase schedule,
evaluates every ``eval_every`` iterations, and hands rows, points and
checkpoints to an observer (the run-directory store, or nothing). It knows
nothing about files.
"""
from __future__ import annotations

import copy
import math
import random
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import PathConfig, from_dict
from .data import BatchStream, Split
from .errors import ConfigError
from .geometry import (angle_conformal_lr, distance_floor, layer_distances, move_,
                       variance_correction_)
from .schedule import normalisation_parameters, phase_at, resolve
from .train import (DEFAULT_METRICS, FlatParams, LossFn, MetricFn, TrainR, check_finite,
                    check_same_architecture, cycle, evaluate)

# ---------------------------------------------------------------- the algorithms


def m2m_iteration(fp: FlatParams, dest: Tensor, v0: Tensor, rp, cfg: PathConfig, train_r: TrainR,
                  moved: Tensor, corrected: Tensor) -> tuple[Tensor, int]:
    """One iteration of Algorithm 1 (lines 5-8): Move, VarianceCorrection, Train_r, VarianceCorrection."""
    ph = rp.phase
    with torch.no_grad():
        move_(fp.flat, dest, fp.seg, ph.step_a, ph.step_f, moved, cfg.step_rule)  # M1 = Move(P_i, D)
        variance_correction_(fp.flat, v0, fp.seg, corrected)  # M2 = VarianceCorrection(M1, S_var)
    loss, rounds = train_r(ph)  # M3 = Train_r(M2)
    with torch.no_grad():
        variance_correction_(fp.flat, v0, fp.seg, corrected)  # P_{i+1} = VarianceCorrection(M3, S_var)
    return loss, rounds


def m2o_iteration(fp: FlatParams, v0: Tensor, rp, cfg: PathConfig, train_r: TrainR,
                  moved: Tensor) -> tuple[Tensor, int, Tensor]:
    """One iteration of Algorithm 2 (lines 6-8): Move toward O, AngleConformal, Train_r."""
    ph = rp.phase
    with torch.no_grad():
        move_(fp.flat, None, fp.seg, ph.step_a, ph.step_f, moved, cfg.step_rule)  # N = Move(P_i, O)
        lr = angle_conformal_lr(cfg.lr, fp.seg.variance(fp.flat), v0, moved)  # x = AngleConformal(N, v)
    loss, rounds = train_r(ph, lr)  # P_{i+1} = Train_r(N, x)
    return loss, rounds, lr


# ---------------------------------------------------------------- results


@dataclass
class Path:
    """What a path run returns: the recorded rows, saved points, final model and summary."""

    kind: str
    names: tuple[str, ...]
    rows: list[dict] = field(default_factory=list)
    points: list[tuple[int, dict[str, Tensor]]] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    model: nn.Module | None = None
    best_model: nn.Module | None = None

    def column(self, name: str) -> list[tuple[int, float]]:
        """``(iteration, value)`` for every row that has ``name``."""
        return [(r["iteration"], r[name]) for r in self.rows if r.get(name) is not None]


class PrerequisiteWarning(UserWarning):
    """An input breaks a premise of the method (paper section 3.2, Eq. 4); the run goes on."""


class Observer:
    """Receives what the engine records; the run-directory store implements it."""

    def on_rows(self, rows: list[dict]) -> None: ...
    def on_point(self, iteration: int, state: dict[str, Tensor]) -> None: ...
    def on_best(self, iteration: int, state: dict[str, Tensor]) -> None: ...
    def on_checkpoint(self, iteration: int, state: dict[str, Any]) -> None: ...
    def on_summary(self, summary: dict) -> None: ...


def pick_device(device=None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _as_config(cfg) -> PathConfig:
    if cfg is None:
        return PathConfig()
    if isinstance(cfg, PathConfig):
        return cfg
    if isinstance(cfg, Mapping):
        return from_dict(PathConfig, dict(cfg), "")
    raise ConfigError(f"config must be a PathConfig or a dict, got {type(cfg).__name__}")


def rng_state() -> dict:
    """Every RNG state (Python, NumPy, torch CPU and CUDA), as data ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- the engine


class PathEngine:
    """Runs M2M or M2O over a phase schedule and records everything a run directory holds.

    ``train_data`` is a :class:`~llpf.data.Split` (drawn as a shuffled stream of
    ``cfg.batch_size`` batches) or any iterable of ``(input, target)`` batches.
    ``eval_sets`` maps a name (``train``, ``test``, ``validation``) to a Split or
    a re-iterable of batches, evaluated every ``cfg.eval_every`` iterations.
    """

    def __init__(self, kind: str, start: nn.Module, cfg: PathConfig | Mapping | None, train_data,
                 *, dest: nn.Module | None = None, eval_sets: Mapping[str, Any] | None = None,
                 loss_fn: LossFn | None = None, metrics: Mapping[str, MetricFn] | None = None,
                 device=None, observer: Observer | None = None, keep_points: bool = True,
                 eval_batch_size: int = 1024):
        if kind not in ("m2m", "m2o"):
            raise ValueError(f"kind must be 'm2m' or 'm2o', got {kind!r}")
        self.kind, self.cfg = kind, _as_config(cfg)
        self.device = pick_device(device)
        self.loss_fn = loss_fn or F.cross_entropy
        self.metrics = dict(DEFAULT_METRICS if metrics is None else metrics)
        self.observer = observer or Observer()
        self.keep_points = keep_points
        self.eval_batch_size = eval_batch_size

        check_finite(start, "start")
        if kind == "m2m":
            if dest is None:
                raise ValueError("M2M needs a destination model")
            check_same_architecture(start, dest)
            check_finite(dest, "destination")
        torch.manual_seed(self.cfg.seed)
        self.model = copy.deepcopy(start).to(self.device)
        self.fp = FlatParams(self.model)
        names = self.fp.layout.names
        seg = self.fp.seg

        exclude = normalisation_parameters(self.model) if kind == "m2o" else set()
        self.schedule = resolve(self.cfg.phases, names, exclude)
        self.masks = [self.fp.layout.mask(rp.moved, self.device) for rp in self.schedule]
        self.all_layers = torch.ones(len(names), dtype=torch.bool, device=self.device)
        self.ever_moved = torch.stack(self.masks).any(0)

        self.start_flat = self.fp.flat.clone()
        self.v0 = seg.variance(self.start_flat)  # the variance sphere S_var of P0, taken once
        self.dest_flat = None
        if dest is not None:
            dparams = dict(dest.named_parameters())
            self.dest_flat = torch.cat([dparams[n].detach().reshape(-1) for n in names]).to(self.device, self.fp.flat.dtype)
        self.dest_model = dest  # evaluated once on the training set at the start (relative threshold)

        if isinstance(train_data, Split):
            self.stream = BatchStream(train_data.to(self.device), self.cfg.batch_size, seed=self.cfg.seed)
            self.batches = self.stream
        else:
            self.stream = None
            self.batches = cycle(train_data)
        self.train_r = TrainR(self.fp, self.batches, self.loss_fn, self.cfg.lr, self.cfg.momentum,
                              self.cfg.weight_decay, self.device)
        self.eval_sets = dict(eval_sets or {})
        if "train" not in self.eval_sets and isinstance(train_data, Split):
            self.eval_sets["train"] = train_data
        if kind == "m2o" and self.cfg.select_on not in self.eval_sets:
            raise ConfigError(f"M2O selects its best point on the {self.cfg.select_on!r} split, which was not given")
        for name, data in self.eval_sets.items():
            if isinstance(data, Split):
                self.eval_sets[name] = data.to(self.device)

        self.iteration = 0
        self.total = self.cfg.total_iterations
        self.pending: list[tuple[int, int, Tensor, int]] = []
        self.path = Path(kind, names)
        self.track = {"max_batch_loss": -math.inf, "max_train_loss": -math.inf, "best_score": None,
                      "best_iteration": 0, "best_metrics": {}, "best_variance_ratio": 1.0, "start_metrics": {},
                      "stopped_early": False}
        self.best_flat: Tensor | None = None
        self.best_buffers: dict[str, Tensor] | None = None
        self.failure: str | None = None
        self.stop_requested = False  # set from a signal handler: checkpoint and return at the next iteration
        self.last_lr: Tensor | None = None

    # ------------------------------------------------------------ recording

    def _moved_ratio(self) -> Tensor:
        """Per-layer variance ratio Var(P_l) / v_l (1 where v_l is 0)."""
        v = self.fp.seg.variance(self.fp.flat)
        return torch.where(self.v0 > 0, v / torch.where(self.v0 > 0, self.v0, 1.0), 1.0)

    def mean_variance_ratio(self) -> Tensor:
        """Mean of Var(P_l)/v_l over the layers M2O moves (all layers for M2M)."""
        mask = self.ever_moved if self.kind == "m2o" else self.all_layers
        return self._moved_ratio()[mask].mean()

    def _eval_row(self) -> dict:
        row: dict[str, Any] = {}
        for name, data in self.eval_sets.items():
            batches = data.batches(self.eval_batch_size) if isinstance(data, Split) else data
            for k, v in evaluate(self.model, batches, self.loss_fn, self.metrics, self.device).items():
                row[f"{name}_{k}"] = v
        seg, names = self.fp.seg, self.fp.layout.names
        row["distance_to_origin"] = float(self.fp.flat.norm())
        row["mean_variance_ratio"] = float(self.mean_variance_ratio())
        if self.kind == "m2m":
            d = layer_distances(self.fp.flat, self.dest_flat, seg).tolist()
            row.update({f"dist/{n}": x for n, x in zip(names, d)})
        else:
            r = self._moved_ratio().tolist()
            row.update({f"var_ratio/{n}": x for n, x, m in zip(names, r, self.ever_moved.tolist()) if m})
        return row

    def _flush(self) -> list[dict]:
        """Bring the buffered batch losses to the host as rows; stop at the first non-finite one."""
        if not self.pending:
            return []
        losses = torch.stack([p[2] for p in self.pending]).tolist()
        rows = []
        for (it, ph, _, rounds), loss in zip(self.pending, losses):
            if not math.isfinite(loss):
                self.failure = f"batch loss became {loss} at iteration {it}"
                break
            rows.append({"iteration": it, "phase": ph + 1, "batch_loss": loss, "rounds": rounds})
            self.track["max_batch_loss"] = max(self.track["max_batch_loss"], loss)
        self.pending = []
        return rows

    def _emit(self, rows: list[dict]) -> None:
        if rows:
            self.path.rows.extend(rows)
            self.observer.on_rows(rows)

    def _evaluate_now(self, row: dict) -> dict:
        """Evaluate at the current point and add the results to ``row``."""
        ev = self._eval_row()
        if "train_loss" in ev:
            self.track["max_train_loss"] = max(self.track["max_train_loss"], ev["train_loss"])
            if not math.isfinite(ev["train_loss"]):
                self.failure = f"training-set loss became {ev['train_loss']} at iteration {self.iteration}"
        if self.iteration == 0:
            self.track["start_metrics"] = dict(ev)
        if self.kind == "m2o":
            self._consider_best(ev)
        row.update(ev)
        return row

    def _warn_about_prerequisites(self) -> None:
        """Paper §3.2: endpoints must sit in flat minima with near-zero training loss."""
        if self.kind != "m2m":
            return
        for what, loss in (("start", self.track["start_metrics"].get("train_loss")),
                           ("destination", self.track.get("dest_train_loss"))):
            if loss is not None and loss > self.cfg.loss_threshold:
                warnings.warn(f"the {what} model's training loss {loss:.4f} is above the path's loss threshold "
                              f"{self.cfg.loss_threshold}: the paper's M2M needs endpoints with near-zero training "
                              f"loss (section 3.2); judge the path by its relative threshold", PrerequisiteWarning,
                              stacklevel=2)

    def _dest_train_loss(self) -> float | None:
        """The destination's full training-set loss (None without a ``train`` evaluation set)."""
        data = self.eval_sets.get("train")
        if data is None or self.dest_model is None:
            return None
        batches = data.batches(self.eval_batch_size) if isinstance(data, Split) else data
        dest = copy.deepcopy(self.dest_model).to(self.device)
        return evaluate(dest, batches, self.loss_fn, {}, self.device).get("loss")

    def _consider_best(self, ev: dict) -> None:
        key = f"{self.cfg.select_on}_{self.cfg.select_by}"
        if key not in ev or not math.isfinite(ev[key]):
            return
        score = ev[key] if self.cfg.select_by == "loss" else -ev[key]
        if self.track["best_score"] is None or score < self.track["best_score"]:
            self.track.update(best_score=score, best_iteration=self.iteration, best_metrics=dict(ev),
                              best_variance_ratio=ev["mean_variance_ratio"])
            self.best_flat = self.fp.flat.clone()
            self.best_buffers = {k: b.clone() for k, b in self.model.named_buffers()}
            self.observer.on_best(self.iteration, self.state_of_model())

    def _save_point(self) -> None:
        """Record the current point of the path (in memory when ``keep_points``, and to the observer)."""
        state = self.state_of_model()
        if self.keep_points:
            self.path.points.append((self.iteration, state))
        self.observer.on_point(self.iteration, state)

    def state_of_model(self) -> dict[str, Tensor]:
        """The current model's parameters and buffers, on the CPU."""
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    # ------------------------------------------------------------ checkpoint

    def state_dict(self) -> dict:
        """Everything needed to continue the run bit for bit (call after a flush)."""
        return {
            "iteration": self.iteration,
            "model": self.state_of_model(),
            "stream": self.stream.state_dict() if self.stream is not None else None,
            "train_r": self.train_r.state_dict(),
            "rng": rng_state(),
            "track": dict(self.track),
            "best_flat": None if self.best_flat is None else self.best_flat.cpu(),
            "best_buffers": None if self.best_buffers is None else {k: v.cpu() for k, v in self.best_buffers.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])
        self.model.load_state_dict(state["model"])  # writes through the flat views
        if self.stream is not None and state["stream"] is not None:
            self.stream.load_state_dict(state["stream"])
        self.train_r.load_state_dict(state["train_r"])
        set_rng_state(state["rng"])
        self.track = dict(state["track"])
        if state["best_flat"] is not None:
            self.best_flat = state["best_flat"].to(self.device)
            self.best_buffers = {k: v.to(self.device) for k, v in state["best_buffers"].items()}

    # ------------------------------------------------------------ the loop

    def run(self, progress: bool = False) -> Path:
        """Run to the end of the schedule (or until a stop is requested) and return the Path."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        if self.iteration == 0:
            if self.kind == "m2m":
                self.track["dest_train_loss"] = self._dest_train_loss()
            self._emit([self._evaluate_now({"iteration": 0, "phase": 0, "rounds": 0})])
            self._warn_about_prerequisites()
            self._save_point()
        bar = tqdm(total=self.total, initial=self.iteration, desc=self.kind.upper(), disable=not progress,
                   dynamic_ncols=True, leave=False)
        target = cfg.target_variance_ratio if self.kind == "m2o" else 0.0
        while self.iteration < self.total and self.failure is None and not self.stop_requested:
            i = self.iteration + 1
            rp = phase_at(self.schedule, i)
            moved = self.masks[rp.index]
            if self.kind == "m2m":
                corrected = self.all_layers if cfg.correct == "all" else moved
                loss, rounds = m2m_iteration(self.fp, self.dest_flat, self.v0, rp, cfg, self.train_r, moved, corrected)
            else:
                loss, rounds, self.last_lr = m2o_iteration(self.fp, self.v0, rp, cfg, self.train_r, moved)
            self.iteration = i
            self.pending.append((i, rp.index, loss, rounds))
            bar.update(1)
            reached = bool(target) and float(self.mean_variance_ratio()) <= target
            last = i == self.total or reached
            if last or i % cfg.eval_every == 0 or i % cfg.save_every == 0 or i % cfg.checkpoint_every == 0:
                rows = self._flush()
                if self.failure is None and (last or i % cfg.eval_every == 0):
                    self._evaluate_now(rows[-1])
                    bar.set_postfix(loss=f"{rows[-1].get('train_loss', rows[-1]['batch_loss']):.4f}")
                self._emit(rows)
                if self.failure:
                    break
                if i % cfg.save_every == 0 or last:
                    self._save_point()
                if reached:
                    self.track["stopped_early"] = True
                    break
                if i % cfg.checkpoint_every == 0 and not last:
                    self.observer.on_checkpoint(i, self.state_dict())
            if self.stop_requested and not last:
                self._emit(self._flush())
                if self.failure is None:
                    self.observer.on_checkpoint(i, self.state_dict())
                break
        bar.close()
        done = self.failure is not None or self.iteration >= self.total or self.track["stopped_early"]
        if done:
            self.path.summary = self.summary()
            self.observer.on_summary(self.path.summary)
        self.path.model = self.model
        if self.kind == "m2o" and self.best_flat is not None:
            best = copy.deepcopy(self.model)
            bfp = FlatParams(best)
            bfp.flat.copy_(self.best_flat)
            for k, b in best.named_buffers():
                b.copy_(self.best_buffers[k])
            self.path.best_model = best
        return self.path

    # ------------------------------------------------------------ summary

    def summary(self) -> dict:
        names, seg, t = self.fp.layout.names, self.fp.seg, self.track
        s: dict[str, Any] = {
            "kind": self.kind,
            "status": "failed" if self.failure else "complete",
            "iterations": self.iteration,
            "planned_iterations": self.total,
            "max_batch_loss": t["max_batch_loss"] if math.isfinite(t["max_batch_loss"]) else None,
            "max_train_loss": t["max_train_loss"] if math.isfinite(t["max_train_loss"]) else None,
        }
        if self.failure:
            s["reason"] = self.failure
        if self.kind == "m2m":
            init = layer_distances(self.start_flat, self.dest_flat, seg)
            final = layer_distances(self.fp.flat, self.dest_flat, seg)
            floor = distance_floor(self.start_flat, self.dest_flat, seg)
            rel = torch.where(init > 0, final / torch.where(init > 0, init, 1.0), 0.0)
            floor_reached = bool((final <= floor + 0.05 * init).all())
            loss_for_validity = s["max_train_loss"] if s["max_train_loss"] is not None else s["max_batch_loss"]
            ends = [t.get("start_metrics", {}).get("train_loss"), t.get("dest_train_loss")]
            rel_thres = None
            if self.cfg.loss_threshold_relative and None not in ends:
                rel_thres = max(self.cfg.loss_threshold, self.cfg.loss_threshold_relative * max(ends))
            s.update(
                loss_threshold=self.cfg.loss_threshold,
                loss_ok=loss_for_validity is not None and loss_for_validity <= self.cfg.loss_threshold,
                endpoint_train_loss={"start": ends[0], "dest": ends[1]},
                loss_threshold_relative=self.cfg.loss_threshold_relative or None,
                relative_threshold=rel_thres,
                loss_ok_relative=None if rel_thres is None else (
                    loss_for_validity is not None and loss_for_validity <= rel_thres),
                initial_distance=dict(zip(names, init.tolist())),
                final_distance=dict(zip(names, final.tolist())),
                distance_floor=dict(zip(names, floor.tolist())),
                final_relative_distance_max=float(rel.max()),
                floor_reached=floor_reached,
            )
            s["valid"] = bool(s["loss_ok"] and floor_reached and not self.failure)
            s["valid_relative"] = None if rel_thres is None else bool(
                s["loss_ok_relative"] and floor_reached and not self.failure)
        else:
            start, best = t["start_metrics"], t["best_metrics"]
            sel = self.cfg.select_on
            s.update(
                selected_on=sel,
                selected_by=self.cfg.select_by,
                stopped_at_target=t["stopped_early"],
                target_variance_ratio=self.cfg.target_variance_ratio or None,
                best_iteration=t["best_iteration"],
                best_variance_ratio=t["best_variance_ratio"],
                final_variance_ratio=float(self.mean_variance_ratio()),
            )
            for split in ("test", "validation"):
                for m in ("loss", *self.metrics):
                    key = f"{split}_{m}"
                    if key in start:
                        s[f"start_{key}"] = start[key]
                        s[f"best_{key}"] = best.get(key)
        return s


# ---------------------------------------------------------------- the Python API


def m2m(start: nn.Module, dest: nn.Module, train_data, config: PathConfig | Mapping | None = None, *,
        test_data=None, eval_sets: Mapping[str, Any] | None = None, loss_fn: LossFn | None = None,
        metrics: Mapping[str, MetricFn] | None = None, device=None, progress: bool = False,
        observer: Observer | None = None, keep_points: bool = True) -> Path:
    """Build a low-loss path from ``start`` to ``dest`` (paper Algorithm 1).

    ``train_data`` is a Split or any iterable of ``(input, target)`` batches;
    ``test_data`` (optional) is evaluated along the path. The models are not
    modified; the path's final model is ``path.model``.
    """
    sets = dict(eval_sets or {})
    if test_data is not None:
        sets.setdefault("test", test_data)
    eng = PathEngine("m2m", start, config, train_data, dest=dest, eval_sets=sets, loss_fn=loss_fn,
                     metrics=metrics, device=device, observer=observer, keep_points=keep_points)
    return eng.run(progress=progress)


def m2o(start: nn.Module, train_data, config: PathConfig | Mapping | None = None, *,
        test_data=None, eval_sets: Mapping[str, Any] | None = None, loss_fn: LossFn | None = None,
        metrics: Mapping[str, MetricFn] | None = None, device=None, progress: bool = False,
        observer: Observer | None = None, keep_points: bool = True) -> Path:
    """Walk ``start`` toward the origin (paper Algorithm 2) and keep the best-generalising point.

    The best point is chosen on ``config.select_on`` ("test" as the paper did,
    or "validation", which must then be in ``eval_sets``); it is ``path.best_model``.
    """
    sets = dict(eval_sets or {})
    if test_data is not None:
        sets.setdefault("test", test_data)
    eng = PathEngine("m2o", start, config, train_data, eval_sets=sets, loss_fn=loss_fn, metrics=metrics,
                     device=device, observer=observer, keep_points=keep_points)
    return eng.run(progress=progress)
