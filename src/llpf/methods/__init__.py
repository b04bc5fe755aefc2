"""Path methods, by name. A new method is one module and one entry here.

``METHODS`` maps the name a config table, ``run.json`` and ``summary.json``
use to the class; ``llpf.methods.base`` documents what a method implements.
"""
from __future__ import annotations

from ..errors import ConfigError
from .autoneb import AutoNEBPath
from .base import FlatPaths, Knots, Method, Record, SinglePath, TrainBatches
from .finetune import FineTune, MoveOnly
from .batched import BatchedM2M, BatchedM2O, BatchedPaths
from .curve import CurvePath
from .fixed_ends import FixedEnds
from .line import Line
from .m2m import M2M, M2MRecords, m2m_iteration
from .m2o import M2O, M2ORecords, m2o_iteration

METHODS: dict[str, type[Method]] = {"m2m": M2M, "m2o": M2O, "finetune": FineTune, "move-only": MoveOnly,
                                    "m2m-batched": BatchedM2M, "m2o-batched": BatchedM2O,
                                    "autoneb": AutoNEBPath, "bezier": CurvePath, "line": Line}


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


def batched_class(kind: str) -> type[Method]:
    """The method that runs many paths of ``kind`` ("m2m", "m2o") together (``KIND-batched``)."""
    return method_class(f"{kind}-batched")


def config_table(name: str) -> str:
    """The config table (``m2m`` or ``m2o``) that method ``name`` reads its settings from."""
    cls = method_class(name)
    return cls.table or cls.name


__all__ = ["METHODS", "AutoNEBPath", "BatchedM2M", "BatchedM2O", "BatchedPaths", "CurvePath", "FineTune", "FixedEnds",
           "FlatPaths", "Knots", "Line", "M2M", "M2MRecords", "M2O", "M2ORecords", "Method", "MoveOnly", "Record",
           "SinglePath", "TrainBatches", "batched_class", "config_table", "m2m_iteration", "m2o_iteration",
           "method_class", "register"]
