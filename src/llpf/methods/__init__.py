"""Path methods, by name. A new method is one module and one entry here.

``METHODS`` maps the name a config table, ``run.json`` and ``summary.json``
use to the class; ``llpf.methods.base`` documents what a method implements.
"""
from __future__ import annotations

from ..errors import ConfigError
from .autoneb import AutoNEBPath
from .base import Knots, Method, Record, SinglePath, TrainBatches
from .curve import CurvePath
from .fixed_ends import FixedEnds
from .line import Line
from .m2m import M2M, m2m_iteration
from .m2o import M2O, m2o_iteration

METHODS: dict[str, type[Method]] = {"m2m": M2M, "m2o": M2O, "autoneb": AutoNEBPath, "bezier": CurvePath, "line": Line}


def register(cls: type[Method]) -> type[Method]:
    """Add a method under ``cls.name`` (usable as a class decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"no path method named {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


__all__ = ["METHODS", "M2M", "M2O", "AutoNEBPath", "CurvePath", "FixedEnds", "Knots", "Line", "Method", "Record",
           "SinglePath", "TrainBatches", "m2m_iteration", "m2o_iteration", "method_class", "register"]
