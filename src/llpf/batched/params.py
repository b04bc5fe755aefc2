"""K models of one architecture as one ``[K, n]`` parameter tensor and stacked buffers.

Row k of ``flat`` is path k's flat parameter vector, laid out as
:func:`llpf.train.layout_of` lays out one model, so the geometry of
:mod:`llpf.geometry` applies to all K paths in one call (it accepts a leading
batch dimension). Buffers (BatchNorm running statistics) and frozen
parameters are stacked the same way, ``[K, ...]`` per name.
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import ModelMismatchError
from ..geometry import Segments
from ..flat import check_same_architecture, cpu_state, layout_of


def _stacked(models: Sequence[nn.Module], named: str, device) -> dict[str, Tensor]:
    """``{name: [K, ...]}`` of every model's buffers (``named="buffers"``) or frozen parameters."""
    tables = []
    for m in models:
        items = m.named_buffers() if named == "buffers" else m.named_parameters()
        tables.append({n: t.detach() for n, t in items if named == "buffers" or not t.requires_grad})
    first = tables[0]
    for i, t in enumerate(tables[1:], 1):
        if list(t) != list(first) or any(t[n].shape != first[n].shape for n in first):
            raise ModelMismatchError(f"path 0 and path {i} models have different {named}")
    return {n: torch.stack([t[n] for t in tables]).to(device) for n in first}


class BatchedParams:
    """The points of K paths: ``flat`` ``[K, n]``, ``buffers`` and ``frozen`` ``{name: [K, ...]}``.

    Built from K models of one architecture (copied; the models are not
    touched). ``model_of(k)`` writes path k into a scratch module for
    evaluation or saving. ``active`` says which paths still move: a retired
    path (failed or finished) is left as it is by the batched iterations.
    """

    def __init__(self, models: Sequence[nn.Module], device=None):
        if not models:
            raise ValueError("BatchedParams needs at least one model")
        first = models[0]
        for i, m in enumerate(models[1:], 1):
            check_same_architecture(first, m, ("path 0", f"path {i}"))
        self.layout = layout_of(first)
        ref = next(p for _, p in first.named_parameters() if p.requires_grad)
        device = ref.device if device is None else torch.device(device)
        self.flat = torch.stack([self._flat_of(m) for m in models]).to(device, ref.dtype)
        self.buffers = _stacked(models, "buffers", device)
        self.frozen = _stacked(models, "frozen", device)
        self.scratch = copy.deepcopy(first).to(device)
        self.seg = Segments(self.layout, device, ref.dtype)
        self.active = [True] * len(models)
        self.active_mask: Tensor | None = None  # [K] bool on the device; None while every path is active

    @property
    def paths(self) -> int:
        return self.flat.shape[0]

    @property
    def device(self) -> torch.device:
        return self.flat.device

    def _flat_of(self, model: nn.Module) -> Tensor:
        params = dict(model.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self.layout.names])

    def params(self, flat: Tensor | None = None) -> dict[str, Tensor]:
        """Views of each layer of ``flat`` (default: all paths, ``[K, *shape]``)."""
        return dict(zip(self.layout.names, self.layout.split(self.flat if flat is None else flat)))

    def model_of(self, k: int) -> nn.Module:
        """The scratch module holding path k's current point (overwritten by the next call)."""
        own = dict(self.scratch.named_parameters())
        with torch.no_grad():
            for name, view in self.params(self.flat[k]).items():
                own[name].copy_(view)
            for name, t in self.frozen.items():
                own[name].copy_(t[k])
            for name, b in self.scratch.named_buffers():
                b.copy_(self.buffers[name][k])
        return self.scratch

    def state_dict(self, k: int) -> dict[str, Tensor]:
        """Path k as the model's own ``state_dict`` (parameters and buffers), on the CPU."""
        return cpu_state(self.model_of(k))

    def load_(self, k: int, state: Mapping[str, Tensor] | nn.Module) -> None:
        """Set path k from a model or a state dict of the same architecture."""
        if isinstance(state, nn.Module):
            state = state.state_dict()
        with torch.no_grad():
            self.scratch.load_state_dict(state)
            own = dict(self.scratch.named_parameters())
            self.flat[k].copy_(torch.cat([own[n].detach().reshape(-1) for n in self.layout.names]))
            for name, t in self.frozen.items():
                t[k].copy_(own[name])
            for name, b in self.scratch.named_buffers():
                self.buffers[name][k].copy_(b)

    def retire(self, k: int) -> None:
        """Path k stops moving: the batched iterations leave its point, buffers and batch stream as they are."""
        self.active[k] = False
        self.active_mask = torch.tensor(self.active, device=self.device)
