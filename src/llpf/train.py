"""Training: Train_r (Algorithm 1 line 7), evaluation, and endpoints (paper Table 3).

Train_r works on a :class:`~llpf.flat.FlatParams`, so an SGD step with
per-layer learning rates is one fused update of the flat vector.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Phase, TrainConfig
from .errors import DataError, NonFiniteError
from .data import Split
from .evaluation import RECALIBRATION_BATCH, eval_batch_for
from .fast import FastPath
from .flat import FlatParams
from .progress import progress_bar

LossFn = Callable[[Tensor, Tensor], Tensor]
MetricFn = Callable[[Tensor, Tensor], Tensor]


def accuracy(output: Tensor, target: Tensor) -> Tensor:
    """Fraction of rows whose arg-max equals the target (the default metric)."""
    return (output.argmax(-1) == target).float().mean()


DEFAULT_METRICS: dict[str, MetricFn] = {"accuracy": accuracy}


def cycle(data: Iterable) -> Iterator:
    """An endless iterator over ``data``: a stream continues, a re-iterable restarts."""
    if iter(data) is data:
        yield from data
        raise DataError("the training data (a one-shot iterator) ran out of batches; pass a DataLoader, a list "
                        "or an llpf.Split, which restart")
    while True:
        empty = True
        for item in data:
            empty = False
            yield item
        if empty:
            raise DataError("the training data yields no batches")


class TrainR:
    """Train_r: r steps of plain SGD on the flat vector, drawing from one continuing stream.

    All trainable parameters are trained (not only the moved ones). ``lr`` may
    be a per-layer tensor (AngleConformal in M2O). Momentum and weight decay are
    available but the paper uses neither; ``weight_decay`` may be a per-element
    tensor (zero on the parameters it spares).
    """

    def __init__(self, fp: FlatParams, batches: Iterator, loss_fn: LossFn, lr: float,
                 momentum: float = 0.0, weight_decay: float | Tensor = 0.0, device=None, fast: FastPath | None = None):
        self.fp, self.batches, self.loss_fn = fp, batches, loss_fn
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.buf = torch.zeros_like(fp.flat) if momentum else None
        self.device = device if device is not None else fp.flat.device
        self.fast = fast or FastPath()
        self.forward = torch.compile(self._forward) if self.fast.compile else self._forward

    def _forward(self, x: Tensor, y: Tensor) -> Tensor:
        """The batch loss (on the fast path when asked: bf16 autocast, channels_last inputs)."""
        with self.fast.autocast(self.device):
            return self.loss_fn(self.fp.model(self.fast.inputs(x)), y)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        """The next batch of the stream, on the device."""
        x, y = next(self.batches)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def gradient(self) -> Tensor:
        """The first half of a step: draw a batch, leave the gradient of its loss in ``fp.grad``; return the loss."""
        fp = self.fp
        x, y = self.next_batch()
        fp.zero_grad()
        loss = self.forward(x, y)
        loss.backward()
        return loss.detach()

    @torch.no_grad()
    def apply(self, lr_elem: Tensor | float) -> None:
        """The second half: the SGD update of the flat vector by ``fp.grad`` (per-element rates when a tensor)."""
        fp = self.fp
        g = fp.grad
        if isinstance(self.weight_decay, Tensor):
            g = g.addcmul(fp.flat, self.weight_decay)
        elif self.weight_decay:
            g = g.add(fp.flat, alpha=self.weight_decay)
        if self.buf is not None:
            self.buf.mul_(self.momentum).add_(g)
            g = self.buf
        if isinstance(lr_elem, Tensor):
            fp.flat.addcmul_(g, lr_elem, value=-1.0)
        else:
            fp.flat.add_(g, alpha=-lr_elem)

    def step(self, lr_elem: Tensor | float) -> Tensor:
        """One SGD step; returns the batch loss."""
        loss = self.gradient()
        self.apply(lr_elem)
        return loss

    def __call__(self, phase: Phase, lr_per_layer: Tensor | None = None) -> tuple[Tensor, int]:
        """Run Train_r under ``phase``'s rule; return the last batch loss and rounds taken.

        Fixed r never waits on the device. With ``until_loss`` set, training
        stops once the loss of the step just taken is below it (after at least
        ``min_rounds``) or after ``max_rounds`` steps.
        """
        self.fp.model.train()
        lr_elem = self.lr if lr_per_layer is None else self.fp.seg.expand(lr_per_layer)
        if phase.until_loss <= 0:
            for _ in range(phase.rounds):
                loss = self.step(lr_elem)
            return loss, phase.rounds
        for r in range(1, phase.max_rounds + 1):
            loss = self.step(lr_elem)
            if r >= phase.min_rounds:
                value = float(loss)
                if value < phase.until_loss or not math.isfinite(value):
                    return loss, r
        return loss, phase.max_rounds

    def state_dict(self) -> dict:
        return {"momentum_buffer": self.buf}

    def load_state_dict(self, state: dict) -> None:
        if state.get("momentum_buffer") is not None:
            self.buf.copy_(state["momentum_buffer"])


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Iterable, loss_fn: LossFn = F.cross_entropy,
             metrics: Mapping[str, MetricFn] = DEFAULT_METRICS, device=None) -> dict[str, float]:
    """Loss and metrics over all batches (eval mode, no autograd): ``loss_fn`` and each metric, means over
    examples, applied once to the outputs of every batch gathered on the device.

    Nothing waits on the device before the end, and the result does not depend
    on how the set is cut into batches wherever a model's output for one
    example does not (as on the CPU): ``llpf.evaluation`` chooses the batch.
    """
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    outs, targets = [], []
    for x, y in batches:
        outs.append(model(x.to(device, non_blocking=True)))
        targets.append(y.to(device, non_blocking=True))
    model.train(was_training)
    if not outs:
        return {}
    out, y = torch.cat(outs), torch.cat(targets)
    values = torch.stack([loss_fn(out, y)] + [m(out, y) for m in metrics.values()]).tolist()
    return dict(zip(["loss", *metrics], values))


BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, BN_TYPES) and m.track_running_stats for m in model.modules())


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches: Iterable, device=None) -> None:
    """Replace BatchNorm running statistics by their exact average over ``batches`` (train mode, no grad)."""
    bns = [m for m in model.modules() if isinstance(m, BN_TYPES) and m.track_running_stats]
    if not bns:
        return
    device = device or next(model.parameters()).device
    was_training, momenta = model.training, [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for x, _ in batches:
            model(x.to(device))
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)


def evaluate_state(model: nn.Module, state: Mapping[str, Tensor], splits: Mapping[str, Split], loss_fn: LossFn,
                   metrics: Mapping[str, MetricFn], batch_size: int, recompute_bn: bool, bn_data) -> dict:
    """Load ``state`` into ``model`` (recomputing BatchNorm statistics on ``bn_data`` in batches of
    ``RECALIBRATION_BATCH`` if asked) and evaluate every split in batches of ``batch_size`` (0: measured)."""
    model.load_state_dict(state)
    if recompute_bn:
        recompute_bn_stats(model, bn_data.batches(RECALIBRATION_BATCH))
    row: dict[str, float] = {}
    for name, split in splits.items():
        batch = batch_size or eval_batch_for(model, split)
        for k, v in evaluate(model, split.batches(batch), loss_fn, metrics).items():
            row[f"{name}_{k}" if name else k] = v
    return row


# ---------------------------------------------------------------- endpoints (paper Table 3)


def endpoint_optimizer(model: nn.Module, recipe: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (LeNet5, ResNet18) or AdamW (CCT7), as paper Table 3 gives them."""
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=tuple(recipe.betas),
                                 weight_decay=recipe.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay)


def endpoint_epochs(recipe: TrainConfig) -> int:
    """Epochs an endpoint trains for: ``epochs``, plus ``cooldown_epochs`` at ``min_lr`` after a cosine schedule."""
    return recipe.epochs + (recipe.cooldown_epochs if recipe.schedule == "cosine" else 0)


def lr_factor(recipe: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Step -> multiple of ``recipe.lr`` for the cosine schedule, as timm's ``CosineLRScheduler`` computes it.

    The learning rate is set once per epoch (timm's default, which the CCT7
    recipe uses). In epoch ``e``: ``warmup_lr + e * (lr - warmup_lr) / warmup_epochs``
    while ``e < warmup_epochs``; then ``min_lr + (lr - min_lr) * (1 + cos(pi e / epochs)) / 2``
    (the cosine runs over ``epochs`` counted from 0, the warmup overriding its
    start); then ``min_lr`` for the ``cooldown_epochs`` added after ``epochs``
    (300 + 10 = 310 epochs for CCT7).
    """
    lo, w0, peak = recipe.min_lr, recipe.warmup_lr, recipe.lr

    def factor(s: int) -> float:
        e = s // steps_per_epoch
        if e < recipe.warmup_epochs:
            return (w0 + e * (peak - w0) / recipe.warmup_epochs) / peak
        if e >= recipe.epochs:
            return lo / peak
        return (lo + 0.5 * (peak - lo) * (1 + math.cos(math.pi * e / recipe.epochs))) / peak
    return factor


def endpoint_schedule(opt: torch.optim.Optimizer, recipe: TrainConfig, steps_per_epoch: int):
    """The learning-rate schedule of ``recipe`` (OneCycle, or cosine with warmup and cooldown), stepped once a step."""
    if recipe.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr,
                                                   total_steps=steps_per_epoch * endpoint_epochs(recipe))
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(recipe, steps_per_epoch))
    return None


def train_endpoint(model: nn.Module, train_split, recipe: TrainConfig, seed: int, device=None,
                   loss_fn: LossFn = F.cross_entropy, progress: bool = False,
                   dataset: str | None = None) -> list[float]:
    """Train a model from scratch with the paper's Table 3 recipe. Returns per-epoch mean losses.

    Augmentation (``recipe.augmentation``; "default" is the usual one for
    ``dataset``) is applied to each batch on the device, reproducibly from ``seed``.

    Under a process group of several ranks (``torchrun``) the ranks train
    together, data-parallel: each draws and augments the same global batch,
    trains on its share in DistributedDataParallel (gradients averaged), so
    every rank takes the single process's steps up to float rounding.
    """
    from . import distributed as D
    from .data import BatchStream
    from .data.augment import augment, default_augmentation

    device = device or next(model.parameters()).device
    stream = BatchStream(train_split, recipe.batch_size, seed=seed)
    parallel = D.is_distributed()
    if parallel:
        D.check_divisible(stream.batch_size)
    net = D.data_parallel_module(model, torch.device(device)) if parallel else model
    steps_per_epoch = max(1, len(train_split) // stream.batch_size)
    epochs = endpoint_epochs(recipe)
    opt = endpoint_optimizer(model, recipe)
    sched = endpoint_schedule(opt, recipe, steps_per_epoch)
    name = recipe.augmentation
    aug = augment(default_augmentation(dataset or "") if name == "default" else name)
    gen = torch.Generator(device=device).manual_seed(seed) if aug is not None else None
    model.train()
    losses = []
    bar = progress_bar(range(epochs), desc=f"train seed {seed}", enabled=progress)
    for _ in bar:
        acc = torch.zeros((), device=device)
        for _ in range(steps_per_epoch):
            x, y = next(stream)
            x = x.to(device)
            if aug is not None:
                x = aug(x, generator=gen)
            if parallel:
                x, y = D.shard(x, y)
            loss = loss_fn(net(x), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            acc += loss.detach()
        losses.append(float(D.reduced_loss(acc) if parallel else acc) / steps_per_epoch)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if not math.isfinite(losses[-1]):
            raise NonFiniteError(f"endpoint training diverged (loss {losses[-1]}) at epoch {len(losses)}")
    if parallel:
        D.sync_buffers_(model)  # BatchNorm running statistics: the mean over the ranks' shards
    return losses
