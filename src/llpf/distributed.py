"""Several processes on one path: ``torch.distributed`` under ``torchrun``.

``torchrun`` starts one process per rank and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` (and the rendezvous address); :func:`init` joins the process
group (NCCL on CUDA, Gloo on CPU) only when ``WORLD_SIZE`` > 1, so every
function here is a no-op in a single process.

Data parallelism (:class:`DataParallelTrainR`, Train_r of Algorithm 1 line 7
and Algorithm 2 line 8): every rank holds the same flat weights and draws the
same global batch of B from an identically seeded stream, trains on its
contiguous B / world share, and averages the flat gradient and the batch loss
in one all-reduce. The loss is a batch mean, so the mean of the equal shards'
gradients is the gradient at the whole batch: every rank applies the update
the single process would (up to float rounding), and the until-loss test
reads the same reduced loss on every rank, so all ranks stop at the same step.

Move, VarianceCorrection and AngleConformal run on every rank, identically,
without communication. Their inputs (the weights, v0, the destination) are
the same bits on every rank: the start is broadcast from rank 0 once, and an
all-reduce hands every rank the same result, so every rank's SGD update is the
same. Running them on rank 0 and broadcasting instead would cost a collective
over all D weights every iteration (as much traffic as a Train_r step; at
r = 1 it would double it) while the other ranks wait. The one condition is
that the geometry be deterministic: on a GPU the per-layer sums are an
``index_add_`` whose float atomics add in no fixed order, so a data-parallel
path switches them to per-layer reductions (:func:`deterministic_geometry_`).
:func:`in_sync` checks the claim (one all-reduce over the weights) and
:func:`ensure_synced_` repairs any drift from rank 0; the driver calls
neither, since the tests show the ranks stay bit-identical, but a user who
doubts it on other hardware can.

Models with BatchNorm see the statistics of their shard, as under
DistributedDataParallel without SyncBatchNorm; the running statistics are
averaged over the ranks after every Train_r (exact for the running means).

Around the path (``llpf.driver``, ``llpf.runner``): evaluations are sharded
(:func:`evaluate_sharded`, :func:`recompute_bn_stats_sharded`) and every rank
gets the whole set's means; a stop request (a signal, which may reach one rank
only) is acted on when :func:`any_rank` says some rank has one, so all ranks
stop after the same iteration; rank 0 alone reads and writes the run
directory, and :func:`on_main` hands what it read (a resume's checkpoint) or
the one-line error it raised to every rank. Endpoint training
(``train.train_endpoint``) is data-parallel the same way, through
DistributedDataParallel (:func:`data_parallel_module`).
"""
from __future__ import annotations

import os
import uuid
from datetime import timedelta
from typing import Iterator, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .data import Split
from .errors import LLPFError
from .evaluation import eval_batch_for
from .fast import FastPath
from .flat import FlatParams
from .runtime import pick_device
from .train import DEFAULT_METRICS, LossFn, MetricFn, TrainR, evaluate, recompute_bn_stats


class DistributedError(LLPFError):
    """The launch or the run does not fit several ranks (environment, batch size, devices)."""


# ---------------------------------------------------------------- the process group


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"environment variable {name}={value!r} is not an integer") from None


def is_distributed() -> bool:
    """True when this process is one of several ranks in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (the process group's, else ``WORLD_SIZE``, else 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _env_int("WORLD_SIZE", 1)


def rank() -> int:
    """This process's global rank (the process group's, else ``RANK``, else 0)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0)


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``), which picks its GPU."""
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """True on rank 0, the one rank that writes run directories and aggregates."""
    return rank() == 0


def is_leader() -> bool:
    """True in a single process and on rank 0 of a process group: the process that writes what the ranks compute.

    Unlike :func:`is_main` (rank 0 of the launch), this is True on every rank
    of ``reproduce`` once the ranks have left the group to run repetitions of
    their own, each writing its own run directories.
    """
    return not is_distributed() or dist.get_rank() == 0


def device_for_rank(device=None) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` where a node has several GPUs; one CPU thread per rank.

    ``device`` ("cpu", "cuda", "cuda:1"; default CUDA when present) names the
    kind; an explicit GPU index is kept. Several ranks on CPU each use
    ``OMP_NUM_THREADS`` threads (torchrun sets 1), so they do not fight over cores.
    """
    d = pick_device(device)
    if d.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise DistributedError("device cuda was asked for but no GPU is visible")
        if d.index is None:
            d = torch.device("cuda", local_rank() % count)
        torch.cuda.set_device(d)
    elif d.type == "cpu" and world_size() > 1:
        torch.set_num_threads(max(1, _env_int("OMP_NUM_THREADS", 1)))
    return d


def _check_gpus(d: torch.device) -> None:
    per_node = _env_int("LOCAL_WORLD_SIZE", 1)
    count = torch.cuda.device_count()
    if d.type == "cuda" and per_node > count:
        raise DistributedError(f"{per_node} ranks on this node but {count} GPU(s): NCCL needs one GPU per rank; "
                               f"use --nproc-per-node {count}, or --device cpu")


def init(device=None, timeout_s: float | None = None) -> torch.device:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 (NCCL on CUDA, Gloo on CPU); return this rank's device.

    Safe to call twice and in a single process (then it only picks the device).
    ``timeout_s`` bounds how long a collective waits for a rank that is gone.
    """
    d = device_for_rank(device)
    if world_size() <= 1 or dist.is_initialized():
        return d
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise DistributedError(f"WORLD_SIZE is {world_size()} but {', '.join(missing)} is not set: "
                               f"launch with torchrun (see docs/distributed.md)")
    if not dist.is_available():
        raise DistributedError("this PyTorch build has no torch.distributed")
    _check_gpus(d)
    kwargs = {"backend": "nccl" if d.type == "cuda" else "gloo"}
    if timeout_s is not None:
        kwargs["timeout"] = timedelta(seconds=timeout_s)
    if d.type == "cuda":
        kwargs["device_id"] = d
    dist.init_process_group(**kwargs)
    return d


def cleanup() -> None:
    """Leave the process group (the end of a run, or on the way out after an error)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def on_main(fn):
    """Run ``fn`` on rank 0 alone and hand every rank its result, or raise its LLPFError on every rank.

    For what only rank 0 may touch (the run directory: its checks, its
    config, its checkpoint): the other ranks need neither see its filesystem
    nor read a file rank 0 may be writing. The result travels pickled
    (``broadcast_object_list``) from rank 0 of this launch, so it should be
    plain data and CPU tensors; files themselves are read on rank 0 by
    safetensors or ``torch.load(weights_only=True)``. In one process, ``fn()``.
    """
    if not is_distributed():
        return fn()
    box = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = (fn(), None)
        except LLPFError as e:  # a user mistake: every rank says the same one line
            box[0] = (None, e)
    dist.broadcast_object_list(box, src=0)
    value, error = box[0]
    if error is not None:
        raise error
    return value


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is set on any rank: one scalar all-reduce (``flag`` itself in one process).

    Stop requests come from signal handlers, which can fire on one rank and
    not another, or on each at a different iteration; the ranks act on this
    agreed value only, so all of them stop at the same iteration.
    """
    if not is_distributed():
        return bool(flag)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def shared_run_id() -> str:
    """A fresh identifier that every rank of this launch agrees on (rank 0 draws it)."""
    box = [uuid.uuid4().hex if is_main() else None]
    if is_distributed():
        dist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------- collectives


def all_reduce_mean_(flat: Tensor) -> Tensor:
    """In place: the mean of ``flat`` over the ranks (one collective). Returns ``flat``."""
    if is_distributed():
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(dist.get_world_size())
    return flat


def reduced_loss(loss: Tensor) -> Tensor:
    """A new tensor holding the mean of ``loss`` over the ranks."""
    return all_reduce_mean_(loss.detach().clone())


def broadcast_(tensor: Tensor, src: int = 0) -> Tensor:
    """In place: ``tensor`` becomes rank ``src``'s. Returns ``tensor``."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor


def reduce_sums(sums: Tensor, count: int | float) -> tuple[Tensor, float]:
    """Sum ``sums`` (a vector of per-rank totals) and ``count`` over the ranks, in one collective."""
    if not is_distributed():
        return sums, count
    packed = torch.cat([sums.reshape(-1).to(torch.float64),
                        torch.tensor([float(count)], dtype=torch.float64, device=sums.device)])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return packed[:-1].to(sums.dtype).view_as(sums), float(packed[-1])


def in_sync(tensor: Tensor) -> bool:
    """True when ``tensor`` holds the same values on every rank (two collectives; call at evaluation time)."""
    if not is_distributed():
        return True
    top = tensor.detach().clone()
    dist.all_reduce(top, op=dist.ReduceOp.MAX)
    differs = torch.tensor([float(not torch.equal(top, tensor))], device=tensor.device)
    dist.all_reduce(differs, op=dist.ReduceOp.MAX)
    return not bool(differs.item())


def ensure_synced_(tensor: Tensor, src: int = 0) -> bool:
    """Give every rank rank ``src``'s ``tensor`` when the ranks differ; return whether they did."""
    if in_sync(tensor):
        return False
    broadcast_(tensor, src)
    return True


def sync_buffers_(model: nn.Module) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) over the ranks, in one collective."""
    if not is_distributed():
        return
    bufs = [b for b in model.buffers() if b.is_floating_point()]
    if not bufs:
        return
    flat = torch.cat([b.reshape(-1) for b in bufs])
    all_reduce_mean_(flat)
    for b, v in zip(bufs, flat.split([b.numel() for b in bufs])):
        b.copy_(v.view_as(b))


# ---------------------------------------------------------------- sharding


def shard(x: Tensor, y: Tensor, rank_: int | None = None, world: int | None = None) -> tuple[Tensor, Tensor]:
    """This rank's contiguous share of a global batch: rows ``[r*B/W, (r+1)*B/W)``; B must divide by W."""
    w = world_size() if world is None else world
    r = rank() if rank_ is None else rank_
    if w == 1:
        return x, y
    n = len(y)
    if n % w:
        raise DistributedError(f"the global batch of {n} does not split into {w} equal shards; "
                               f"use a batch size divisible by {w}")
    b = n // w
    return x[r * b:(r + 1) * b], y[r * b:(r + 1) * b]


def check_divisible(batch_size: int, world: int | None = None) -> None:
    """Raise DistributedError before a run starts when ``batch_size`` does not split over the ranks."""
    w = world_size() if world is None else world
    if batch_size % w:
        raise DistributedError(f"batch_size {batch_size} does not split into {w} equal shards; "
                               f"use a batch size divisible by {w}")


def shard_range(n: int, rank_: int | None = None, world: int | None = None) -> slice:
    """This rank's contiguous part of ``n`` evaluation examples (sizes differ by at most one)."""
    w = world_size() if world is None else world
    r = rank() if rank_ is None else rank_
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


def shard_batches(data, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """This rank's part of an evaluation set: its contiguous slice of a Split, or every W-th batch of an iterable."""
    if isinstance(data, Split):
        part = shard_range(len(data))
        x, y = data.x[part], data.y[part]
        for i in range(0, len(y), batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]
        return
    w, r = world_size(), rank()
    for i, batch in enumerate(data):
        if i % w == r:
            yield batch


def evaluate_sharded(model: nn.Module, data, batch_size: int, loss_fn: LossFn,
                     metrics: Mapping[str, MetricFn] = DEFAULT_METRICS, device=None) -> dict[str, float]:
    """``train.evaluate`` over a Split (or any iterable of batches) with each rank taking its part.

    Every rank gets the means over the whole set. In one process this is
    ``train.evaluate`` itself (the same bits). ``batch_size`` 0 is measured
    for the model on the device (``llpf.evaluation``).
    """
    if isinstance(data, Split) and not batch_size:
        batch_size = eval_batch_for(model, data)
    if not is_distributed():
        return evaluate(model, data.batches(batch_size) if isinstance(data, Split) else data, loss_fn, metrics, device)
    device = device or next(model.parameters()).device
    count = [0]

    def counted():
        for x, y in shard_batches(data, batch_size):
            count[0] += len(y)
            yield x, y
    local = evaluate(model, counted(), loss_fn, metrics, device)
    names = ["loss", *metrics]
    values = torch.tensor([local.get(k, 0.0) for k in names], dtype=torch.float64) * count[0]
    sums, total = reduce_sums(values.to(device), count[0])
    if total == 0:
        return {}
    return dict(zip(names, (sums / total).tolist()))


def recompute_bn_stats_sharded(model: nn.Module, data, batch_size: int, device=None) -> None:
    """``train.recompute_bn_stats`` with each rank on its part of ``data``, then the statistics averaged over the ranks."""
    if not is_distributed():
        recompute_bn_stats(model, data.batches(batch_size) if isinstance(data, Split) else data, device)
        return
    recompute_bn_stats(model, shard_batches(data, batch_size), device)
    sync_buffers_(model)


def data_parallel_module(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel: its gradients averaged over the ranks during backward.

    BatchNorm buffers are not broadcast from rank 0 at each forward (each rank
    keeps the running statistics of its shards); :func:`sync_buffers_` averages
    them when training ends.
    """
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


# ---------------------------------------------------------------- Train_r over all ranks


def deterministic_geometry_(fp: FlatParams) -> None:
    """Per-layer reductions by layer views (fixed summation order) instead of float-atomic ``index_add_``.

    Needed on GPUs only (the CPU already reduces by views), so that Move and
    VarianceCorrection give the same bits on every rank.
    """
    fp.seg.per_view = True


def _pack_grad(fp: FlatParams) -> Tensor:
    """A [D + 1] buffer whose first D elements become the flat gradient (the last carries the batch loss)."""
    packed = torch.zeros(fp.grad.numel() + 1, device=fp.grad.device, dtype=fp.grad.dtype)
    packed[:-1].copy_(fp.grad)
    fp.grad = packed[:-1]
    params = [p for _, p in fp.model.named_parameters() if p.requires_grad]
    for p, g in zip(params, fp.layout.split(fp.grad)):
        p.grad = g
    return packed


class DataParallelTrainR(TrainR):
    """Train_r (Algorithm 1 line 7, Algorithm 2 line 8) computed by all ranks together.

    ``batches`` yields the global batch of B (every rank's stream seeded
    alike) and each rank trains on its :func:`shard`; with ``presharded`` the
    stream already yields this rank's share (a per-rank loader). The gradient
    and the loss are averaged in one all-reduce; the returned loss, the one the
    until-loss rule reads, is that average. ``loss_fn`` must average over the
    batch (the default cross-entropy does). In one process this is TrainR.
    """

    def __init__(self, fp: FlatParams, batches: Iterator, loss_fn: LossFn, lr: float,
                 momentum: float = 0.0, weight_decay: float | Tensor = 0.0, device=None, *, presharded: bool = False,
                 fast: FastPath | None = None):
        super().__init__(fp, batches, loss_fn, lr, momentum, weight_decay, device, fast)
        self.presharded = presharded
        self.packed = _pack_grad(fp)
        if is_distributed():
            deterministic_geometry_(fp)
            broadcast_(fp.flat)  # every rank starts from rank 0's weights
            for b in fp.model.buffers():
                broadcast_(b)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        x, y = next(self.batches)
        if not self.presharded:
            x, y = shard(x, y)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def gradient(self) -> Tensor:
        """This rank's gradient and loss, then their means over the ranks in one collective."""
        loss = super().gradient()
        with torch.no_grad():
            self.packed[-1] = loss
            all_reduce_mean_(self.packed)
        return self.packed[-1].clone()

    def __call__(self, phase, lr_per_layer: Tensor | None = None) -> tuple[Tensor, int]:
        loss, rounds = super().__call__(phase, lr_per_layer)
        sync_buffers_(self.fp.model)
        return loss, rounds


__all__ = ["DistributedError", "init", "cleanup", "is_distributed", "world_size", "rank", "local_rank", "is_main",
           "is_leader", "on_main", "any_rank", "barrier", "device_for_rank", "shared_run_id", "all_reduce_mean_",
           "reduced_loss", "broadcast_", "reduce_sums", "in_sync", "ensure_synced_", "sync_buffers_", "shard",
           "check_divisible", "shard_range", "shard_batches", "evaluate_sharded", "recompute_bn_stats_sharded",
           "data_parallel_module", "deterministic_geometry_", "DataParallelTrainR"]
