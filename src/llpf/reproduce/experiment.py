"""The paper's experiments: the shipped configs that name one path method each, and how one is loaded."""
from __future__ import annotations

import dataclasses

from .. import config as C
from ..errors import ConfigError

KINDS = ("m2m", "m2o")


def experiments() -> list[str]:
    """Names of the shipped experiment configs (every shipped config but the demo)."""
    return [n for n in C.shipped_configs() if n != "demo"]


def kind_of(cfg: C.Config) -> str:
    """``"m2m"`` or ``"m2o"``: the one path table an experiment config holds."""
    if (cfg.m2m is None) == (cfg.m2o is None):
        raise ConfigError(f"config {cfg.name!r} must have exactly one of [m2m] and [m2o] to be reproduced "
                          f"(pick one with --method)")
    return "m2m" if cfg.m2m is not None else "m2o"


def load_experiment(name: str, data_dir: str | None, method: str | None = None) -> C.Config:
    """The config ``name`` (shipped name or TOML file), reading its dataset from ``data_dir`` when given.

    ``method`` ("m2m" or "m2o") keeps that path table alone, for a config that
    holds both (such as ``demo``).
    """
    cfg = C.load_config(name)
    if data_dir:
        cfg.data.root = str(data_dir)
    if method is not None:
        if method not in KINDS:
            raise ConfigError(f"--method must be one of {', '.join(KINDS)}, not {method!r}")
        if getattr(cfg, method) is None:
            raise ConfigError(f"config {cfg.name!r} has no [{method}] table")
        cfg = dataclasses.replace(cfg, **{k: None for k in KINDS if k != method})
    return cfg


def check_request(name: str, reps: int, data_dir: str | None = None, method: str | None = None, start=None,
                  dest=None, fast: dict | None = None) -> tuple[C.Config, str]:
    """What ``reproduce`` and its dry run both check before anything runs; returns the config and its kind.

    The repetitions, the config and its one path table, ``--dest`` only for
    M2M, the fast-path overrides (applied to the path table), and given
    endpoints, which must load into the model.
    """
    from ..runner import load_model

    if reps < 1:
        raise ConfigError(f"--reps must be at least 1, got {reps}")
    cfg = load_experiment(name, data_dir, method)
    kind = kind_of(cfg)
    if dest is not None and kind == "m2o":
        raise ConfigError("--dest is for M2M experiments; M2O walks toward the origin")
    for key, value in (fast or {}).items():
        setattr(getattr(cfg, kind), key, value)
    for path, what in ((start, "start"), (dest, "destination")):
        if path is not None:
            load_model(cfg, path, what)
    return cfg, kind
