"""A model's trainable parameters as one flat vector, and the checks two models must pass.

``FlatParams`` lays every trainable parameter of a model end to end in one
tensor and makes the model's parameters (and their gradients) views into it.
The geometry (``llpf.geometry``) then works on the whole model in a handful of
kernels.
"""
from __future__ import annotations

import torch
from typing import Mapping

from torch import Tensor, nn

from .errors import ModelMismatchError, NonFiniteError
from .geometry import Layout, Segments


def layout_of(model: nn.Module) -> Layout:
    """The Layout of a model's trainable parameters, in ``named_parameters`` order."""
    named = [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]
    return Layout(tuple(n for n, _ in named), tuple(s for _, s in named))


def check_same_architecture(a: nn.Module, b: nn.Module, what=("start", "destination")) -> None:
    """Raise ModelMismatchError unless both models have the same parameter names and shapes."""
    la, lb = layout_of(a), layout_of(b)
    if la.names != lb.names:
        only_a = sorted(set(la.names) - set(lb.names))[:3]
        only_b = sorted(set(lb.names) - set(la.names))[:3]
        raise ModelMismatchError(
            f"{what[0]} and {what[1]} models have different architectures "
            f"(only in {what[0]}: {only_a or '-'}; only in {what[1]}: {only_b or '-'})")
    for n, sa, sb in zip(la.names, la.shapes, lb.shapes):
        if sa != sb:
            raise ModelMismatchError(f"{what[0]} and {what[1]} differ in the shape of {n}: {list(sa)} vs {list(sb)}")


def same_state(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models hold identical parameters and buffers: a pair with nothing between them."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(v, sb[n].to(v.device)) for n, v in sa.items())


def check_finite(model: nn.Module, what: str) -> None:
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise NonFiniteError(f"{what} model has non-finite values in {n}")


class FlatParams:
    """A model's trainable parameters as views into one flat vector (and likewise their grads)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.layout = layout_of(model)
        params = [p for _, p in model.named_parameters() if p.requires_grad]
        device = params[0].device
        dtype = params[0].dtype
        self.flat = torch.cat([p.detach().reshape(-1) for p in params]).to(device, dtype)
        self.grad = torch.zeros_like(self.flat)
        for p, v, g in zip(params, self.layout.split(self.flat), self.layout.split(self.grad)):
            p.data = v
            p.grad = g
        self.seg = Segments(self.layout, device, dtype)

    def zero_grad(self) -> None:
        self.grad.zero_()


def flat_of(model: nn.Module, names: tuple[str, ...]) -> torch.Tensor:
    """The named parameters of ``model`` laid end to end (a copy, on the model's device)."""
    params = dict(model.named_parameters())
    return torch.cat([params[n].detach().reshape(-1) for n in names])


def interpolate_state(a: Mapping[str, Tensor], b: Mapping[str, Tensor], t: float) -> dict[str, Tensor]:
    """``(1 - t) a + t b`` for floating tensors; integer buffers (``num_batches_tracked``) from ``a``."""
    if set(a) != set(b):
        raise ModelMismatchError(f"the two models hold different tensors: {sorted(set(a) ^ set(b))[:3]}")
    out = {}
    for k, va in a.items():
        vb = b[k].to(va.dtype)
        if vb.shape != va.shape:
            raise ModelMismatchError(f"{k} has shape {list(va.shape)} in one model and {list(vb.shape)} in the other")
        if not va.is_floating_point() or t == 0:
            out[k] = va.clone()
        elif t == 1:
            out[k] = vb.clone()
        else:
            out[k] = torch.lerp(va, vb, t)
    return out


def cpu_state(model: nn.Module) -> dict[str, Tensor]:
    """A model's parameters and buffers (its ``state_dict``), detached contiguous copies on the CPU (whatever the
    model's memory layout: an evaluation copy is ``channels_last``)."""
    return {n: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
            for n, v in model.state_dict().items()}

