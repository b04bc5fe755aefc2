"""Typed configs, read from TOML data (never Python).

A config file has up to eight tables: ``[model]``, ``[data]``, ``[train]`` (the
endpoint recipe, paper Table 3), ``[m2m]`` (Algorithm 1, Table 1), ``[m2o]``
(Algorithm 2, Table 2), and the baselines ``llpf compare`` runs on the same
pairs: ``[autoneb]`` (Draxler et al. 2018), ``[bezier]`` (Garipov et al. 2018)
and ``[line]`` (the straight line). Each M2M/M2O table holds a list of
``[[m2m.phases]]``; AutoNEB's holds ``[[autoneb.cycles]]``. Unknown keys and
wrong types are errors that name the key.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class ModelConfig:
    """The architecture: one of llpf's own (``lenet5``, ``resnet18`` ...) or ``torchvision:<builder>``.

    ``width`` is the builder's width multiplier where it has one (MobileNet's
    ``width_mult``); ``stem = "cifar"`` gives a torchvision model a 3x3
    stride-1 first convolution and no stem max-pool, for 32x32 images
    (``llpf.models.by_name``).
    """

    name: str = "lenet5"
    num_classes: int = 10
    in_channels: int = 1
    image_size: int = 32
    width: float = 1.0  # channels (ResNet18, LeNet5), embedding dimension (CCT) or a torchvision builder's multiplier
    stem: str = "default"  # torchvision models: "default" (the builder's) | "cifar"


@dataclass
class DataConfig:
    name: str = "digits"
    root: str = ""
    validation_fraction: float = 0.0
    eval_batch_size: int = 0  # 0: measured for the model on its device (llpf.evaluation)
    # BatchNorm statistics are recomputed on this many training examples, a slice drawn once (0: all of them)
    recalibration_examples: int = 8192
    limit_train: int = 0
    limit_test: int = 0


@dataclass
class TrainConfig:
    """Endpoint training (paper Table 3): SGD with momentum, or AdamW (CCT7).

    ``lr`` is the constant rate, OneCycle's max lr, or cosine's initial (peak)
    lr. OneCycle is torch's ``OneCycleLR`` with its defaults, which also cycle
    SGD's momentum between 0.85 and 0.95 (``momentum`` is then not used).
    The cosine schedule is timm's, which the paper's CCT7 recipe names: set
    once per epoch, it warms up linearly from ``warmup_lr`` toward ``lr`` over
    the first ``warmup_epochs``, anneals to ``min_lr`` over ``epochs``, then
    holds ``min_lr`` for ``cooldown_epochs`` more (``epochs + cooldown_epochs``
    in all).
    ``augmentation`` "default" picks the dataset's usual one (crop-flip for
    CIFAR, none otherwise).
    """

    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "sgd"  # "sgd" | "adamw"
    lr: float = 0.01
    momentum: float = 0.9  # SGD
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW
    weight_decay: float = 0.0
    schedule: str = "constant"  # "constant" | "onecycle" | "cosine"
    warmup_epochs: int = 0
    warmup_lr: float = 0.0  # cosine
    min_lr: float = 0.0  # cosine
    cooldown_epochs: int = 0  # cosine
    augmentation: str = "default"  # "default" | "none" | "crop-flip"
    # [train.dest]: the destinations' recipe, as keys of this table that override its values
    # (empty: both ends are trained alike). ``recipe("dest")`` is the merged recipe.
    dest: dict | None = None

    def recipe(self, which: str = "start") -> "TrainConfig":
        """The recipe that trains the ``which`` end: "start" is ``[train]`` itself, "dest" is ``[train]``
        with ``[train.dest]``'s keys over it (the same as "start" when there is no ``[train.dest]``)."""
        if which not in RECIPES:
            raise ConfigError(f"recipe must be one of {', '.join(RECIPES)}, got {which!r}")
        base = {k: v for k, v in dataclasses.asdict(self).items() if k != "dest"}
        if which == "start" or not self.dest:
            return from_dict(TrainConfig, base)
        if "dest" in self.dest:
            raise ConfigError("train.dest cannot hold a dest table of its own")
        return from_dict(TrainConfig, {**base, **self.dest}, "train.dest.")

    def recipe_of(self, end: str) -> str:
        """The recipe that trains a pair's ``end`` ("start" or "dest"): "dest" only where ``[train.dest]`` is."""
        return "dest" if end == "dest" and self.dest else "start"

    def endpoint_file(self, seed: int, end: str = "start") -> str:
        """The file of the endpoint of ``seed`` at a pair's ``end``: ``seedS.safetensors``, or
        ``seedS-dest.safetensors`` for a destination trained with ``[train.dest]``."""
        return f"seed{seed}{'-dest' if self.recipe_of(end) == 'dest' else ''}.safetensors"


RECIPES = ("start", "dest")  # the ends an endpoint recipe trains: [train], and [train] with [train.dest] over it


@dataclass
class Phase:
    """One row of paper Table 1/2: T iterations moving the layers named by ``layers``.

    ``rounds`` is Train_r's fixed r; with ``until_loss`` set, Train_r instead
    trains until the batch loss is below it, at least ``min_rounds`` and at
    most ``max_rounds`` steps. ``keep_previous`` adds the previous phase's layers
    (the paper's tables are cumulative: "Phase 2 + layer1.*").
    """

    iterations: int = 100
    layers: list[str] = field(default_factory=lambda: ["*"])
    keep_previous: bool = False
    step_a: float = 0.0
    step_f: float = 1e-3
    rounds: int = 5
    until_loss: float = 0.0
    min_rounds: int = 1
    max_rounds: int = 100
    sphere: str = ""  # M2M: the table's ``sphere`` when empty; else "start" | "dest" | "moving" for this phase


@dataclass
class PathConfig:
    """Settings shared by M2M and M2O."""

    phases: list[Phase] = field(default_factory=lambda: [Phase()])
    batch_size: int = 64
    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    weight_decay_on: str = "all"  # the parameters weight_decay shrinks: "all" | "moved" (the layers a phase moves)
    step_rule: str = "sum"  # "sum" (paper) | "max" (authors' public code)
    correct: str = "all"  # M2M: VarianceCorrection on "all" parameters or "moved" only
    # M2M: the variance sphere VarianceCorrection projects onto (llpf.schedule.SPHERES): the start's
    # (the paper), the destination's, or one moving from the start's to the destination's over the phase
    sphere: str = "start"
    eval_every: int = 100
    save_every: int = 100
    checkpoint_every: int = 100
    loss_threshold: float = 0.1
    # M2M: also judge the path against relative x the larger endpoint's full training
    # loss: threshold = max(loss_threshold, relative x max(L(start), L(dest))); 0: off
    loss_threshold_relative: float = 0.0
    # M2M: a layer has arrived when final <= floor + arrival_tolerance x its initial distance
    arrival_tolerance: float = 0.01
    # Models with BatchNorm: recompute the running statistics on the training set (on a copy)
    # before each evaluation, so path points are measured as straight lines are; the path is unchanged
    recalibrate_bn: bool = True
    target_variance_ratio: float = 0.0  # M2O: stop when mean Var(P_l)/v_l falls to it (0: never); paper Fig. 3's "0.76" is 1 - |P_l|/|P0_l|, not this
    select_on: str = "test"  # M2O: split that picks the best point: "test" | "validation"
    select_by: str = "loss"  # M2O: "loss" (lowest) | "accuracy" (highest)
    # Train_r draws plain training batches in the paper (Algorithm 1 line 7, Algorithm 2 line 8),
    # so off by default; true applies the dataset's default augmentation (data.augment) to them
    augment: bool = False
    # The fast path of Train_r's steps (llpf.fast). bf16 autocast changes Train_r's numerics (and so the
    # until-loss decisions) against the paper's fp32: a speed setting, off unless named ("auto": on with CUDA)
    bf16: str = "off"  # bf16 autocast: "off" | "on" | "auto"
    channels_last: str = "auto"  # conv nets: channels_last inputs: "auto" (on with CUDA) | "on" | "off"
    compile: bool = False  # torch.compile of the training step's forward and loss
    seed: int = 0

    @property
    def total_iterations(self) -> int:
        return sum(p.iterations for p in self.phases)


@dataclass
class DriverSettings:
    """What the driver reads from every baseline's table (PathConfig has the same fields for M2M and M2O).

    The driver evaluates the method's current point every ``eval_every``
    iterations, saves it every ``save_every``, checkpoints every
    ``checkpoint_every``; ``batch_size`` and ``seed`` shape the stream of
    training batches; ``recalibrate_bn``: recompute BatchNorm statistics on
    the training set before each evaluation.
    """

    batch_size: int = 64
    eval_every: int = 20
    save_every: int = 100
    checkpoint_every: int = 20
    loss_threshold: float = 0.1
    recalibrate_bn: bool = True
    augment: bool = False
    seed: int = 0


@dataclass
class Cycle:
    """One AutoNEB cycle: ``steps`` band steps at learning rate ``lr``."""

    steps: int = 100
    lr: float = 0.01


# The cycle schedule published with AutoNEB's code for the paper's CIFAR ResNets: 4 cycles of 1000
# steps at lr 0.1, 2 of 2000 at 0.1, 4 of 1000 at 0.01, 4 of 1000 at 0.001 (16,000 band steps).
PAPER_CYCLES: tuple[Cycle, ...] = (
    (Cycle(1000, 0.1),) * 4 + (Cycle(2000, 0.1),) * 2 + (Cycle(1000, 0.01),) * 4 + (Cycle(1000, 0.001),) * 4)


def paper_cycles(scale: float = 1.0, lr: float = 0.1) -> list[Cycle]:
    """The published schedule with every cycle's step count multiplied by ``scale`` (at least 1 step) and
    its learning rates by ``lr / 0.1`` (so ``lr`` is the first cycle's; the decays stay 10x and 100x)."""
    return [Cycle(max(1, round(c.steps * scale)), c.lr * lr / 0.1) for c in PAPER_CYCLES]


@dataclass
class AutoNEBConfig(DriverSettings):
    """AutoNEB (``llpf.baselines.elastic_band``): a nudged elastic band grown in cycles.

    The defaults are the published settings but four, all for LeNet5 on
    digits: the published schedule's shape at 2% of its steps (320 band steps;
    20 per 1000), a tenth of its learning rates (first cycle 0.01, LeNet5's own
    endpoint rate), no weight decay (published: 1e-4) and batch 64 (published:
    512). At the published first rate 0.1 the band on the demo's
    LeNet5 endpoints jumped to chance-level loss (2.3) in its first cycle; at
    0.01 its peak fell from the straight line's 1.54 to 0.015 (both measured
    with the earlier insertion at the highest loss). The paper's
    configs set the published values. ``insertion_samples`` > 0 decides where
    pivots go on that many training samples (a fixed random subset) instead of
    the whole training split: the grid of ``(P - 1) * points_per_segment + P``
    evaluations per cycle dominates a small run's time. ``budget`` > 0 is the
    number of gradient evaluations the run spends, the cycles' steps then
    giving only their proportions.
    """

    cycles: list[Cycle] = field(default_factory=lambda: paper_cycles(0.02, lr=0.01))
    initial_pivots: int = 3  # interior pivots of the first band (published)
    insert_per_cycle: int = 2  # published
    insert_threshold: float = 0.1  # a pivot only where the loss rises this far above the chord (published)
    max_pivots: int = 31  # pivots in all, ends included: what the published schedule reaches
    points_per_segment: int = 9  # interior evaluation points per segment (published)
    spring: float = math.inf  # inf: no spring force, pivots redistributed along the chain (published)
    optimizer: str = "sgd"  # "sgd" | "adam"
    momentum: float = 0.9  # published (the configs' SGD with momentum 0.9)
    weight_decay: float = 0.0  # added to each pivot's gradient before the projection (published: 1e-4)
    insertion_samples: int = 0  # 0: the whole training split
    budget: int = 0  # gradient evaluations to spend (0: the cycles' steps as given)


@dataclass
class CurveConfig(DriverSettings):
    """A curve with one trained bend (``llpf.baselines.bezier``), Garipov et al. (2018).

    ``lr = 0.015`` is the published rate for VGG16 curves (no BatchNorm, like
    LeNet5); on the demo's LeNet5 endpoints 2000 steps at it left a peak
    training loss of 0.005 along the curve (0.055 at 0.003, 0.010 at 0.01).
    No weight decay: the aim is the loss along the curve, and decay would pull
    the bend towards the origin. One step draws one ``t`` and one batch.
    """

    kind: str = "bezier"  # "bezier" | "polychain"
    steps: int = 2000
    lr: float = 0.015
    momentum: float = 0.9
    optimizer: str = "sgd"  # "sgd" | "adam"
    weight_decay: float = 0.0
    save_every: int = 500
    eval_every: int = 100
    checkpoint_every: int = 100


@dataclass
class LineConfig:
    """The straight line between the two models, walked in ``points - 1`` iterations and evaluated at each.

    Models with BatchNorm get their running statistics recomputed at every
    point (``recalibrate_bn``); ``false`` evaluates the raw interpolation of the
    two models' statistics instead.
    """

    points: int = 21
    recalibrate_bn: bool = True
    batch_size: int = 64  # the one training batch whose loss each iteration records
    loss_threshold: float = 0.1
    seed: int = 0
    augment = False
    eval_every = 1
    checkpoint_every = 1

    @property
    def save_every(self) -> int:
        return self.points - 1  # a line's points are its two ends; the rest are evaluated, not stored


@dataclass
class Config:
    name: str = "custom"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    m2m: PathConfig | None = None
    m2o: PathConfig | None = None
    autoneb: AutoNEBConfig | None = None
    bezier: CurveConfig | None = None
    line: LineConfig | None = None


_CHOICES = {
    ("PathConfig", "step_rule"): ("sum", "max"),
    ("PathConfig", "correct"): ("all", "moved"),
    ("PathConfig", "sphere"): ("start", "dest", "moving"),
    ("Phase", "sphere"): ("", "start", "dest", "moving"),
    ("ModelConfig", "stem"): ("default", "cifar"),
    ("PathConfig", "weight_decay_on"): ("all", "moved"),
    ("PathConfig", "select_on"): ("test", "validation"),
    ("PathConfig", "select_by"): ("loss", "accuracy"),
    ("PathConfig", "bf16"): ("auto", "on", "off"),
    ("PathConfig", "channels_last"): ("auto", "on", "off"),
    ("TrainConfig", "schedule"): ("constant", "onecycle", "cosine"),
    ("TrainConfig", "optimizer"): ("sgd", "adamw"),
    ("TrainConfig", "augmentation"): ("default", "none", "crop-flip"),
    ("AutoNEBConfig", "optimizer"): ("sgd", "adam"),
    ("CurveConfig", "optimizer"): ("sgd", "adam"),
    ("CurveConfig", "kind"): ("bezier", "polychain"),
}
_POSITIVE = {"iterations", "rounds", "min_rounds", "max_rounds", "batch_size", "epochs", "eval_every",
             "save_every", "checkpoint_every", "num_classes", "in_channels", "image_size", "width",
             "steps", "initial_pivots", "max_pivots", "points_per_segment", "points"}
_NON_NEGATIVE = {"step_a", "step_f", "lr", "momentum", "weight_decay", "until_loss", "loss_threshold",
                 "target_variance_ratio", "arrival_tolerance", "validation_fraction", "limit_train", "limit_test", "warmup_epochs",
                 "warmup_lr", "min_lr", "cooldown_epochs", "loss_threshold_relative", "insert_per_cycle", "spring",
                 "insertion_samples", "insert_threshold", "budget", "eval_batch_size", "recalibration_examples"}


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(value, args[0], where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            value = dataclasses.asdict(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {type(value).__name__}")
        return from_dict(tp, value, f"{where}.")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {type(value).__name__}")
        return dict(value)
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass ``cls`` from a dict, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(repr(where + k) for k in unknown)}"
                          f" (valid: {', '.join(sorted(names))})")
    kwargs = {}
    for key, value in data.items():
        full = f"{where}{key}"
        v = _convert(value, hints[key], full)
        choices = _CHOICES.get((cls.__name__, key))
        if choices and v not in choices:
            raise ConfigError(f"{full} must be one of {', '.join(c or repr(c) for c in choices)}, got {v!r}")
        if key in _POSITIVE and not v > 0:
            raise ConfigError(f"{full} must be positive, got {v!r}")
        if key in _NON_NEGATIVE and (v < 0 or v != v):
            raise ConfigError(f"{full} must not be negative, got {v!r}")
        kwargs[key] = v
    return cls(**kwargs)


def _check_path(pc: PathConfig, where: str) -> None:
    """The rules across fields of a path table (``where`` names it in errors: "m2m." or "")."""
    if not pc.phases:
        raise ConfigError(f"{where}phases must hold at least one phase")
    for i, ph in enumerate(pc.phases):
        if ph.step_a == 0 and ph.step_f == 0:
            raise ConfigError(f"{where}phases[{i}]: step_a and step_f are both zero, the path would not move")
        if ph.until_loss > 0 and ph.min_rounds > ph.max_rounds:
            raise ConfigError(f"{where}phases[{i}]: min_rounds ({ph.min_rounds}) exceeds max_rounds ({ph.max_rounds})")
        if i == 0 and ph.keep_previous:
            raise ConfigError(f"{where}phases[0]: keep_previous needs a previous phase")


def _check_autoneb(c: AutoNEBConfig, where: str) -> None:
    if not c.cycles:
        raise ConfigError(f"{where}cycles must hold at least one cycle")
    for i, cy in enumerate(c.cycles):
        if not cy.lr > 0:
            raise ConfigError(f"{where}cycles[{i}].lr must be positive, got {cy.lr!r}")
    if c.max_pivots < c.initial_pivots + 2:
        raise ConfigError(f"{where}max_pivots ({c.max_pivots}) must be at least initial_pivots + 2 "
                          f"({c.initial_pivots + 2}): the ends count as pivots")
    least = autoneb_step_cost(c)
    if c.budget and c.budget < least:
        raise ConfigError(f"{where}budget ({c.budget}) is below one band step per cycle ({least} gradient "
                          f"evaluations for {len(c.cycles)} cycles)")


def projected_pivots(interior: int, cycles: int, insert: int, max_pivots: int) -> list[int]:
    """Interior pivots of ``cycles`` AutoNEB cycles from one with ``interior`` on, if every later one inserts
    ``insert`` (at most ``max_pivots`` in all, ends included)."""
    return [min(interior + insert * j, max_pivots - 2) for j in range(cycles)]


def autoneb_step_cost(c: AutoNEBConfig, steps: list[int] | None = None) -> int:
    """Gradient evaluations of AutoNEB's cycles at ``steps`` band steps each (default: one each) if every cycle
    inserts ``insert_per_cycle`` pivots: a band step costs one evaluation per interior pivot."""
    steps = steps or [1] * len(c.cycles)
    pivots = projected_pivots(c.initial_pivots, len(c.cycles), c.insert_per_cycle, c.max_pivots)
    return sum(s * n for s, n in zip(steps, pivots))


def _check_curve(c: CurveConfig, where: str) -> None:
    if not c.lr > 0:
        raise ConfigError(f"{where}lr must be positive, got {c.lr!r}")


def _check_line(c: LineConfig, where: str) -> None:
    if c.points < 2:
        raise ConfigError(f"{where}points must be at least 2 (the two ends), got {c.points}")


_CROSS_CHECKS = {PathConfig: _check_path, AutoNEBConfig: _check_autoneb, CurveConfig: _check_curve,
                 LineConfig: _check_line}


def method_config(cls, cfg, where: str = ""):
    """A method's table built in Python (an instance of ``cls``, a dict, or None for the defaults),
    checked as a TOML one is: types, ranges, choices and the cross-field rules raise the same one-line
    ConfigError; a valid object comes back as a fresh, typed copy."""
    if cfg is None:
        cfg = {}
    if isinstance(cfg, cls):
        try:
            data = dataclasses.asdict(cfg)
        except TypeError as e:
            raise ConfigError(f"{cls.__name__} holds a value that is not plain data: {e}") from None
    elif isinstance(cfg, dict):
        data = dict(cfg)
    else:
        raise ConfigError(f"config must be a {cls.__name__} or a dict, got {type(cfg).__name__}")
    out = from_dict(cls, data, where)
    _CROSS_CHECKS[cls](out, where)
    return out


def path_config(cfg: PathConfig | dict | None) -> PathConfig:
    """An M2M/M2O table built in Python, checked as a TOML one is (:func:`method_config`)."""
    return method_config(PathConfig, cfg)


METHOD_TABLES = ("m2m", "m2o", "autoneb", "bezier", "line")  # the Config fields that configure a path method
# The baselines' tables; a config without one runs that baseline with the table's defaults.
BASELINE_TABLES = {"autoneb": AutoNEBConfig, "bezier": CurveConfig, "line": LineConfig}


def _check(cfg: Config) -> Config:
    for kind in METHOD_TABLES:
        table = getattr(cfg, kind)
        if table is not None:
            _CROSS_CHECKS[type(table)](table, f"{kind}.")
    if cfg.m2o is not None and (cfg.m2o.sphere != "start" or any(ph.sphere not in ("", "start")
                                                                   for ph in cfg.m2o.phases)):
        raise ConfigError("m2o: sphere is an [m2m] setting; M2O walks toward the origin and has no "
                          "destination sphere")
    _check_recipe(cfg.train, "train.")
    if cfg.train.dest:
        _check_recipe(cfg.train.recipe("dest"), "train.dest.")
    if not 0 <= cfg.data.validation_fraction < 1:
        raise ConfigError(f"data.validation_fraction must be in [0, 1), got {cfg.data.validation_fraction}")
    return cfg


def _check_recipe(tr: TrainConfig, where: str) -> None:
    if len(tr.betas) != 2 or not all(0 <= b < 1 for b in tr.betas):
        raise ConfigError(f"{where}betas must be two numbers in [0, 1), got {tr.betas}")
    if tr.warmup_epochs > tr.epochs:
        raise ConfigError(f"{where}warmup_epochs ({tr.warmup_epochs}) exceeds {where}epochs ({tr.epochs})")


def config_from_dict(data: dict) -> Config:
    return _check(from_dict(Config, data))


def shipped_configs() -> list[str]:
    """Names of the configs shipped inside the package."""
    files = resources.files("llpf") / "configs"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


def load_config(name_or_path: str | Path) -> Config:
    """Read a config from a TOML file path or the name of a shipped config."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if path.is_dir():
            raise ConfigError(f"{path} is a folder, not a config; name a TOML file or a shipped config")
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise ConfigError(f"{path} is not a TOML config (it is not text)") from None
    else:
        res = resources.files("llpf") / "configs" / f"{name_or_path}.toml"
        if not res.is_file():
            raise ConfigError(f"no config named {str(name_or_path)!r}; shipped: {', '.join(shipped_configs())}")
        text = res.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{name_or_path}: invalid TOML: {e}") from None
    return config_from_dict(data)


def to_dict(cfg) -> dict:
    """A config as plain data, with None tables dropped (TOML has no null)."""
    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if v is not None}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x
    return clean(dataclasses.asdict(cfg))


def dumps(cfg) -> str:
    return tomli_w.dumps(to_dict(cfg))
