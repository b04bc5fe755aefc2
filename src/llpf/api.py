"""The Python API: a path between any ``nn.Module`` pair, or toward the origin, on any data.

``find_path`` runs any registered method (``llpf.methods.METHODS``: the
paper's ``m2m`` and ``m2o``, and the baselines ``line``, ``autoneb``,
``bezier``, ``finetune`` and ``move-only``); ``m2m`` and ``m2o`` name the
paper's two; ``find_paths`` runs K paths at once with a batched method.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any, Mapping, Sequence

from torch import nn

from .config import PathConfig
from .data import Split
from .driver import Driver, PathResult
from .errors import PrerequisiteWarning
from .methods import Method, method_class
from .observer import Observer
from .train import LossFn, MetricFn


def find_path(method: str | type[Method], start: nn.Module, train_data, config: PathConfig | Mapping | None = None,
              *, dest: nn.Module | None = None, test_data=None, eval_sets: Mapping[str, Any] | None = None,
              loss_fn: LossFn | None = None, metrics: Mapping[str, MetricFn] | None = None, device=None,
              progress: bool = False, observer: Observer | None = None, keep_points: bool = False,
              eval_batch_size: int = 0, recalibration_examples: int = 8192,
              augmentation: str | None = None) -> PathResult:
    """Run ``method`` (a name or a Method class) from ``start`` (to ``dest``) and return the PathResult.

    ``train_data`` is a :class:`~llpf.data.Split` or any iterable of
    ``(input, target)`` batches; ``test_data`` and ``eval_sets`` are evaluated
    along the path. Without a ``train`` evaluation set, a re-iterable
    ``train_data`` (a Split, a DataLoader, a list) is evaluated as one; a
    one-shot iterator (or a stateful loader, whose passes continue its
    epoch) is not, and the verdict rests on batch losses. With
    ``config.augment``, Train_r's batches get ``augmentation`` ("crop-flip").
    ``config`` is the method's table (a PathConfig for M2M and M2O; an
    AutoNEBConfig, CurveConfig or LineConfig for the baselines) or a dict,
    checked as a TOML table is. A baseline's ``result.path`` holds the path it
    built (its knots), its rows the point the driver evaluated. Points
    are kept in memory with ``keep_points``, else read back from the
    observer's run directory when asked. The models passed in are not modified.
    Evaluations run in batches of ``eval_batch_size`` (0: measured for the
    model on the device); BatchNorm statistics are recomputed on
    ``recalibration_examples`` training examples drawn once (0: all of them).
    """
    cls = method_class(method) if isinstance(method, str) else method
    m = cls(start, config, train_data, dest=dest, loss_fn=loss_fn, device=device, augmentation=augmentation)
    return _drive(m, train_data, test_data, eval_sets, metrics, progress, None if observer is None else [observer],
                  keep_points, eval_batch_size, recalibration_examples)[0]


def find_paths(method: str | type[Method], starts: Sequence[nn.Module], train_data,
               config: PathConfig | Mapping | None = None, *, dest: Sequence[nn.Module] | None = None,
               seeds: Sequence[int] | None = None, test_data=None, eval_sets: Mapping[str, Any] | None = None,
               loss_fn: LossFn | None = None, metrics: Mapping[str, MetricFn] | None = None, device=None,
               progress: bool = False, observers: Sequence[Observer] | None = None, keep_points: bool = False,
               eval_batch_size: int = 0, recalibration_examples: int = 8192) -> list[PathResult]:
    """K paths at once with a batched method ("m2m-batched", "m2o-batched"): one PathResult per start.

    Path k runs from ``starts[k]`` (to ``dest[k]``), drawing its batches from
    ``train_data`` (a Split) as it would alone with seed ``seeds[k]`` (default
    ``config.seed + k``); its result equals that of :func:`find_path` with the
    one-path method and that seed. Other arguments are those of :func:`find_path`.
    """
    cls = method_class(method) if isinstance(method, str) else method
    m = cls(starts, config, train_data, dest=dest, seeds=seeds, loss_fn=loss_fn, device=device)
    return _drive(m, train_data, test_data, eval_sets, metrics, progress, observers, keep_points, eval_batch_size,
                  recalibration_examples)


def _drive(m: Method, train_data, test_data, eval_sets, metrics, progress, observers, keep_points,
           eval_batch_size, recalibration_examples) -> list[PathResult]:
    sets = dict(eval_sets or {})
    if test_data is not None:
        sets.setdefault("test", test_data)
    if "train" not in sets:
        # Re-iterable (a Split, a DataLoader, a list): judged on the full training loss. Asked of the type, not by
        # calling iter(), which would start a DataLoader's worker processes for nothing.
        if isinstance(train_data, Split) or not (isinstance(train_data, Iterator) or hasattr(train_data, "state_dict")):
            sets["train"] = train_data
        else:
            warnings.warn("train_data is a one-shot iterator or a stateful loader and no 'train' evaluation set was "
                          "given: the path is judged on its batch losses (pass eval_sets={'train': ...} for the "
                          "full training loss)", PrerequisiteWarning, stacklevel=4)
    driver = Driver(m, eval_sets=sets, metrics=metrics, observers=observers, keep_points=keep_points,
                    eval_batch_size=eval_batch_size, recalibration_examples=recalibration_examples)
    return driver.run(progress=progress)

def m2m(start: nn.Module, dest: nn.Module, train_data, config: PathConfig | Mapping | None = None,
        **kwargs) -> PathResult:
    """A low-loss path from ``start`` to ``dest`` (paper Algorithm 1); the final model is ``result.model``.

    Keyword arguments are those of :func:`find_path`.
    """
    return find_path("m2m", start, train_data, config, dest=dest, **kwargs)


def m2o(start: nn.Module, train_data, config: PathConfig | Mapping | None = None, **kwargs) -> PathResult:
    """Walk ``start`` toward the origin (paper Algorithm 2) and keep the best-generalising point.

    The best point is chosen on ``config.select_on`` ("test" as the paper did,
    or "validation", which must then be in ``eval_sets``); it is ``result.best_model``.
    """
    return find_path("m2o", start, train_data, config, **kwargs)
