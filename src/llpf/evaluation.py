"""Evaluation at the cost of its forward passes: the layout and batch an evaluation runs in, and BatchNorm's slice.

A full evaluation (the training and test sets, every ``eval_every``
iterations) is forward passes and nothing else (``train.evaluate``: no
autograd, the outputs gathered on the device and reduced once). What is left
to choose is how those passes run:

- the memory layout: conv nets are evaluated as a copy in ``channels_last``
  with the evaluation sets held in it on the device, converted once. On the
  2-core CPU this was measured on, a LeNet5 forward pass cost 35 us per image
  in it against 51 us in NCHW (most of that is max-pooling, slow in NCHW on
  that CPU), a ResNet18 at width 0.25 0.71 ms against 1.0 ms;
- the batch: measured for the model on its device (:func:`measured_batch_size`),
  not fixed. On that CPU LeNet5 costs the same per image at batches of 64 to
  512 and half again as much at 1,024, where the activations no longer fit in
  its cache. On the CPU a model's output for one example does not depend on the
  batch it is computed in, so with the reduction done once over all outputs the
  evaluated numbers do not depend on the batch either;
- BatchNorm recalibration (running statistics recomputed at each evaluated
  point) runs on a fixed slice of the training set (:func:`bn_slice`) in
  batches of :data:`RECALIBRATION_BATCH`, a fixed size since the statistics
  depend on it.
"""
from __future__ import annotations

import copy
import time

import torch
from torch import Tensor, nn

from .data import Split

RECALIBRATION_BATCH = 256
CANDIDATE_BATCHES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
_MEASURED: dict[tuple, int] = {}


def eval_format(model: nn.Module) -> torch.memory_format:
    """The memory layout ``model`` is evaluated in: ``channels_last`` for a conv net, else the plain one."""
    conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    return torch.channels_last if conv else torch.contiguous_format


def module_in(model: nn.Module, fmt: torch.memory_format) -> nn.Module:
    """A copy of ``model`` with its 4-D parameters and buffers in layout ``fmt``."""
    return copy.deepcopy(model).to(memory_format=fmt)


def split_in(split: Split, fmt: torch.memory_format) -> Split:
    """``split`` with its images (4-D inputs) in layout ``fmt`` (itself when they already are)."""
    if split.x.dim() != 4:
        return split
    return Split(split.x.contiguous(memory_format=fmt), split.y)


def bn_slice(train: Split, examples: int, seed: int = 0) -> Split:
    """The fixed slice BatchNorm statistics are recomputed on: ``examples`` training examples (all when 0 or
    more than there are), drawn once with ``seed``, in a random order, so no batch of a class-sorted split holds
    one class."""
    n = len(train)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:examples or n].to(train.y.device)
    return Split(train.x[idx], train.y[idx])


def _seconds(fn, cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def eval_batch_for(model: nn.Module, split: Split) -> int:
    """The batch ``model`` is evaluated on ``split`` in, measured on its first examples (``measured_batch_size``)."""
    return measured_batch_size(model, split.x[:CANDIDATE_BATCHES[-1]])


def measured_batch_size(model: nn.Module, x: Tensor, budget_s: float = 1.0) -> int:
    """The evaluation batch with the least time per example for ``model`` on the examples ``x`` (on its device).

    Batches of 32, 64, ... up to ``len(x)`` are each run once to warm up and
    twice timed; the sweep stops at a batch 20% slower per example than the
    best so far, at one whose pass took over ``budget_s``, or when the device
    runs out of memory. The answer is kept for the process, per architecture,
    input shape, layout and device.
    """
    key = (type(model).__name__, tuple((n, tuple(p.shape)) for n, p in model.named_parameters()),
           tuple(x.shape[1:]), x.dtype, str(x.device), x.is_contiguous(memory_format=torch.channels_last))
    if key not in _MEASURED:
        _MEASURED[key] = _sweep(model, x, budget_s)
    return _MEASURED[key]


def _sweep(model: nn.Module, x: Tensor, budget_s: float) -> int:
    cuda, was_training = x.device.type == "cuda", model.training
    best, best_t = min(len(x), CANDIDATE_BATCHES[0]), float("inf")
    model.eval()
    try:
        with torch.inference_mode():
            for b in (c for c in CANDIDATE_BATCHES if c <= len(x)):
                xb = x[:b]
                model(xb)
                t = min(_seconds(lambda: model(xb), cuda) for _ in range(2))
                if t / b < best_t:
                    best, best_t = b, t / b
                if t / b > 1.2 * best_t or t > budget_s:
                    break
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
    finally:
        model.train(was_training)
    return best
