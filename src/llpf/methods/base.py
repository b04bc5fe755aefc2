"""The interface every path method implements, and the one-path base that M2M and M2O share.

The driver (``llpf.driver``) runs a method over its phase schedule and owns
everything methods have in common: the iteration counter, evaluation every
``eval_every``, recording, points, checkpoints, resume, stop signals, progress
and NaN handling. A method owns its parameters, its training and its algorithm.

A method advances ``paths`` = K >= 1 independent paths of one architecture at
once (K = 1 for :class:`SinglePath`; a batched method keeps ``[K, n]``
parameters). Path k has its own run directory, record and checkpoint. The
driver calls, in this order:

``check_eval_sets(names)``
    once, with the names of the evaluation sets (M2O needs its ``select_on`` split).
``begin(evaluate)``
    once before iteration 0; ``evaluate(model, sets=None) -> dict`` is the
    driver's evaluator (keys like ``train_loss``, ``test_accuracy``).
``iterate(iteration, phase) -> (loss, rounds)``
    advance every active path by one iteration of ``phase`` (a
    :class:`~llpf.schedule.ResolvedPhase`); ``loss`` is the last batch loss per
    path (a ``[K]`` or 0-dim tensor, left on the device), ``rounds`` the
    Train_r steps taken (an int or a ``[K]`` tensor).
``model_of(k)``
    a module holding path k's current point (evaluated and saved by the driver).
``measure(k) -> dict``
    the method's columns of an evaluation row (per-layer distances, ratios).
``after_evaluation(k, iteration, row, record, measured) -> bool``
    sees each evaluation row and the module measured (path k's point, with
    BatchNorm statistics recomputed when the driver does); True when the
    point is path k's new best, which the driver then saves as measured.
``finished(k) -> bool``
    path k stops before the end of the schedule (M2O's target variance ratio).
``zero_length(k) -> bool``
    path k's destination is its start (identical parameters and buffers): the
    driver ends it complete at iteration 0, a path of one point and length 0.
``retire(k)``
    path k has failed or finished: stop updating it.
``summary(k, record) -> dict``
    the method's fields of path k's ``summary.json``.
``state_dict(k)`` / ``load_state_dict(k, state)``
    path k's own checkpoint state, tensors and plain data only
    (``torch.load(weights_only=True)`` reads it).
``best_model(k)``
    the point the method chose (M2O), or None.
``path(k)``
    when path k has ended complete: the path the method built, when it is not
    the sequence of points the driver saved (AutoNEB's pivots, a curve's
    control points) as :class:`Knots`; None for M2M and M2O.

``model_of(k)`` may hand back one module that the next call for another path
overwrites (a batched method's scratch module): the driver copies what it keeps.
``kind`` names what each path is in summaries and run directories (a batched
M2M's paths are ``m2m`` paths); empty, it is ``name``.

A method with ``data_parallel`` set is computed by all ranks of a process
group together: the driver then shards its evaluations over the ranks and
makes every rank act on the same stop request, and the ranks' copies of
everything above must stay equal.

A new method is one module with a subclass of :class:`Method` (or of
:class:`SinglePath`) and one entry in ``llpf.methods.METHODS``. ``table``
names the config table it reads (``[m2m]`` or ``[m2o]``; default its name).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import PathConfig, path_config
from ..data import BatchStream, Split
from ..data.augment import augmented
from ..distributed import DataParallelTrainR, broadcast_, check_divisible, is_distributed
from ..errors import ConfigError
from ..fast import FastPath, fast_path
from ..flat import FlatParams, check_finite, check_same_architecture, cpu_state, flat_of, same_state
from ..geometry import Segments
from ..runtime import pick_device
from ..schedule import ResolvedPhase, resolve
from ..train import LossFn, TrainR, cycle

Evaluate = Callable[..., dict]
SMOOTH = 10  # paper Figure 2: every iteration's training loss, smoothed by a moving average over 10 iterations


@dataclass
class Record:
    """What the driver tracks for one path (its part of the checkpoint)."""

    max_batch_loss: float = -math.inf
    max_train_loss: float = -math.inf
    start_metrics: dict = field(default_factory=dict)
    stopped_early: bool = False
    failure: str | None = None
    iterations: int = 0
    batch_losses: int = 0  # iterations whose batch loss was recorded
    batch_losses_above: int = 0  # ... and of those, the ones above cfg.loss_threshold
    recent_batch_losses: list = field(default_factory=list)  # the last SMOOTH - 1 of them, oldest first
    max_smoothed_batch_loss: float = -math.inf  # the largest trailing mean over SMOOTH iterations (fewer at first)

    def add_batch_loss(self, loss: float, threshold: float) -> None:
        """One iteration's batch loss: the maxima, the count above ``threshold``, the smoothed maximum."""
        self.max_batch_loss = max(self.max_batch_loss, loss)
        self.batch_losses += 1
        self.batch_losses_above += loss > threshold
        window = [*self.recent_batch_losses, loss]
        self.max_smoothed_batch_loss = max(self.max_smoothed_batch_loss, sum(window) / len(window))
        self.recent_batch_losses = window[1 - SMOOTH:]


def ratio_to(x: Tensor, ref: Tensor) -> Tensor:
    """``x / ref`` elementwise, 1 where ``ref`` is 0 (per-layer ratios to a start value)."""
    return torch.where(ref > 0, x / torch.where(ref > 0, ref, 1.0), 1.0)


@dataclass
class Knots:
    """A path in parameter space given by model states.

    ``curve`` says how the states make the path: ``"polygon"``, straight
    segments between consecutive states (AutoNEB's pivots, a polygonal chain);
    ``"bezier"``, the quadratic Bezier curve with the three states as control
    points (start, bend, destination).
    """

    curve: str
    states: list[dict[str, Tensor]]


class Method:
    """A path method: see the module docstring for what the driver calls and when."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    table: ClassVar[str] = ""  # the config table this method reads; "" means the one named like the method
    needs_dest: ClassVar[bool] = False
    paths: int = 1
    data_parallel: bool = False  # the ranks of a process group compute the paths together (evaluation sharded too)
    zero_lengths: tuple[bool, ...] | list[bool] = ()  # per path: start and destination are the same model (``_check_models``)
    cfg: PathConfig
    device: torch.device
    loss_fn: LossFn
    names: tuple[str, ...]
    schedule: list[ResolvedPhase]
    total: int

    def check_eval_sets(self, names: set[str]) -> None:
        pass

    def _check_models(self, start: nn.Module, dest: nn.Module | None) -> bool:
        """Check a start (and destination); True when the destination is the start itself (a zero-length pair)."""
        check_finite(start, "start")
        if not self.needs_dest:
            if dest is not None:
                raise ConfigError(f"{self.name} takes no destination model")
            return False
        if dest is None:
            raise ConfigError(f"{self.name} needs a destination model")
        check_same_architecture(start, dest)
        check_finite(dest, "destination")
        return same_state(start, dest)

    def zero_length(self, k: int) -> bool:
        """Path k's destination is its start: the path is that one point, ended at iteration 0."""
        return k < len(self.zero_lengths) and bool(self.zero_lengths[k])

    def begin(self, evaluate: Evaluate) -> None:
        pass

    def iterate(self, iteration: int, phase: ResolvedPhase) -> tuple[Tensor, Tensor | int]:
        raise NotImplementedError

    def model_of(self, k: int) -> nn.Module:
        raise NotImplementedError

    def measure(self, k: int) -> dict:
        return {}

    def after_evaluation(self, k: int, iteration: int, row: dict, record: Record, measured: nn.Module) -> bool:
        return False

    def finished(self, k: int) -> bool:
        return False

    def retire(self, k: int) -> None:
        pass

    def best_model(self, k: int) -> nn.Module | None:
        return None

    def path(self, k: int) -> Knots | None:
        return None

    def summary(self, k: int, record: Record) -> dict:
        return {}

    def numerics(self) -> dict:
        """How the path's training steps computed (``summary.json``'s ``numerics``): the parameters' dtype, and
        Train_r's fast path where the method trains with Train_r (the baselines step in the parameters' dtype)."""
        train_r = getattr(self, "train_r", None)
        fast = train_r.fast if train_r is not None else FastPath()
        return fast.numerics(next(self.model_of(0).parameters()).dtype)

    def state_dict(self, k: int) -> dict:
        raise NotImplementedError

    def load_state_dict(self, k: int, state: dict) -> None:
        raise NotImplementedError


class FlatPaths(Method):
    """What the paths of Algorithms 1 and 2 share, one path or K: flat points, start variances, phase masks.

    A subclass keeps its points in ``flat`` (``[n]`` for one path, ``[K, n]``
    for K) beside ``start_flat``, ``v0`` (the variance sphere S_var of each
    start, taken once) and, with a destination, ``dest_flat``; ``of_path(t, k)``
    is path k's part of any of them. Measurements and verdicts are written once
    over these, for one path and for K.
    """

    seg: Segments
    start_flat: Tensor
    v0: Tensor
    dest_flat: Tensor | None = None

    def _setup(self, cfg: PathConfig | dict | None, device, loss_fn: LossFn | None) -> None:
        self.cfg = path_config(cfg)
        self.device = pick_device(device)
        self.loss_fn = loss_fn or F.cross_entropy

    def _resolve(self, layout, model: nn.Module) -> None:
        """The phase schedule against ``model``'s layers, with one layer mask per phase."""
        self.names = layout.names
        self.schedule = resolve(self.cfg.phases, self.names, self.excluded_layers(model), self.cfg.sphere)
        if not self.needs_dest and any(rp.sphere != "start" for rp in self.schedule):
            raise ConfigError(f"{self.name} has no destination: its variance sphere can only be the start's "
                              f"(sphere is an M2M setting)")
        self.total = self.cfg.total_iterations
        self.masks = [layout.mask(rp.moved, self.device) for rp in self.schedule]
        self.all_layers = torch.ones(len(self.names), dtype=torch.bool, device=self.device)
        self.ever_moved = torch.stack(self.masks).any(0)

    def excluded_layers(self, model: nn.Module) -> set[str]:
        """Layers no phase moves, whatever its patterns say."""
        return set()

    def weight_decay(self) -> float | Tensor:
        """Train_r's weight decay: ``cfg.weight_decay`` on every parameter, or per element on the layers some
        phase moves only (``weight_decay_on = "moved"``: the fine-tuning baseline of M2O decays what M2O shrinks)."""
        if self.cfg.weight_decay_on == "all" or not self.cfg.weight_decay or bool(self.ever_moved.all()):
            return self.cfg.weight_decay  # every layer decayed: the same steps as "all", to the bit
        return self.seg.expand(self.ever_moved.to(self.start_flat.dtype) * self.cfg.weight_decay)

    @property
    def flat(self) -> Tensor:
        raise NotImplementedError

    def of_path(self, t: Tensor, k: int) -> Tensor:
        """Path k's row of a per-path tensor (``t`` itself for one path)."""
        raise NotImplementedError

    # ------------------------------------------------------------ measurements

    def variance_ratio(self, k: int = 0) -> Tensor:
        """Per-layer variance ratio Var(P_l) / v_l of path k (1 where v_l is 0)."""
        return ratio_to(self.seg.variance(self.of_path(self.flat, k)), self.of_path(self.v0, k))

    def ratio_layers(self) -> Tensor:
        """The layers whose variance ratios the mean is taken over."""
        return self.all_layers

    def mean_variance_ratio(self, k: int = 0) -> Tensor:
        return self.variance_ratio(k)[self.ratio_layers()].mean()

    def measure(self, k: int) -> dict:
        return {"distance_to_origin": float(self.of_path(self.flat, k).norm()),
                "mean_variance_ratio": float(self.mean_variance_ratio(k))}


class TrainBatches:
    """The one continuing stream of training batches a method draws from, and its exact position.

    A :class:`~llpf.data.Split` is drawn as a shuffled stream of ``batch_size``
    batches seeded by ``seed``; any other iterable of ``(input, target)``
    batches is cycled (a stateful loader, such as a ResumableLoader, keeps its
    own position). With ``augment``, every batch gets the augmentation named
    ``augmentation`` ("crop-flip"), drawn from its own seeded generator.
    """

    def __init__(self, train_data, batch_size: int, seed: int, device: torch.device, augment: bool = False,
                 augmentation: str | None = None):
        self.stream = self.loader = None
        if isinstance(train_data, Split):
            self.stream = batches = BatchStream(train_data.to(device), batch_size, seed=seed)
        else:
            self.loader = train_data if hasattr(train_data, "state_dict") else None  # e.g. a ResumableLoader
            batches = cycle(train_data)
        self.augmenter = None
        if augment:
            if not augmentation:
                raise ConfigError("augment = true needs an augmentation name (such as 'crop-flip')")
            gen = torch.Generator(device if self.stream is not None else "cpu").manual_seed(seed)
            self.augmenter = batches = augmented(batches, augmentation, gen)
        self.batches = batches

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.batches)

    def state_dict(self) -> dict:
        source = self.stream if self.stream is not None else self.loader
        return {"stream": source.state_dict() if source is not None else None,
                "augment": self.augmenter.state_dict() if self.augmenter is not None else None}

    def load_state_dict(self, state: dict) -> None:
        source = self.stream if self.stream is not None else self.loader
        if source is not None and state["stream"] is not None:
            source.load_state_dict(state["stream"])
        if self.augmenter is not None and state.get("augment") is not None:
            self.augmenter.load_state_dict(state["augment"])


class SinglePath(FlatPaths):
    """One path: a copy of the start model whose parameters are views of one flat vector.

    Holds what Algorithms 1 and 2 share: the start variances ``v0`` (the
    variance sphere S_var of P0, taken once), the phase schedule with one
    layer mask per phase, the batch stream and Train_r. ``train_data`` is a
    :class:`~llpf.data.Split` (drawn as a shuffled stream of ``cfg.batch_size``
    batches) or any iterable of ``(input, target)`` batches.

    Built while a process group of several ranks is active (under
    ``torchrun``), the path is data-parallel (``llpf.distributed``): every
    rank draws the same global batch, trains on its share, and the gradients
    are averaged; Move and VarianceCorrection run on every rank alike.
    """

    def __init__(self, start: nn.Module, cfg: PathConfig | dict | None, train_data, *,
                 dest: nn.Module | None = None, loss_fn: LossFn | None = None, device=None,
                 augmentation: str | None = None):
        self._setup(cfg, device, loss_fn)
        self.data_parallel = is_distributed()
        if self.data_parallel and isinstance(train_data, Split):
            check_divisible(min(self.cfg.batch_size, len(train_data)))
        self.zero_lengths = [self._check_models(start, dest)]
        torch.manual_seed(self.cfg.seed)
        self.model = copy.deepcopy(start).to(self.device)
        self.fp = FlatParams(self.model)
        self.seg = self.fp.seg
        self._resolve(self.fp.layout, self.model)
        self.batches = TrainBatches(train_data, self.cfg.batch_size, self.cfg.seed, self.device, self.cfg.augment,
                                    augmentation)
        self.start_flat = self.fp.flat.clone()
        make = DataParallelTrainR if self.data_parallel else TrainR  # data-parallel: every rank takes rank 0's start
        self.train_r = make(self.fp, self.batches, self.loss_fn, self.cfg.lr, self.cfg.momentum,
                            self.weight_decay(), self.device, fast=fast_path(self.cfg, self.device, self.model))
        self.v0 = self.fp.seg.variance(self.start_flat)
        self.dest_model = dest
        self.dest_flat = None if dest is None else flat_of(dest, self.names).to(self.device, self.fp.flat.dtype)
        if self.data_parallel and self.dest_flat is not None:
            broadcast_(self.dest_flat)

    @property
    def flat(self) -> Tensor:
        return self.fp.flat

    def of_path(self, t: Tensor, k: int) -> Tensor:
        return t

    def dest_module(self, k: int) -> nn.Module:
        return copy.deepcopy(self.dest_model).to(self.device)

    def model_of(self, k: int) -> nn.Module:
        return self.model

    # ------------------------------------------------------------ checkpoint

    def state_dict(self, k: int) -> dict:
        """The weights, Train_r's state and the exact position of the batch stream (tensor Split or stateful loader)."""
        return {"model": cpu_state(self.model),
                **self.batches.state_dict(), "train_r": self.train_r.state_dict()}

    def load_state_dict(self, k: int, state: dict) -> None:
        self.model.load_state_dict(state["model"])  # writes through the flat views
        self.batches.load_state_dict(state)
        self.train_r.load_state_dict(state["train_r"])
