"""Units that never activate, and the parameters whose gradient they pin to zero.

A ReLU unit whose output is zero for every training input passes no gradient
back: its incoming weights and bias (and the matching BatchNorm scale and
shift) get exactly zero gradient at every step, and so do the weights that
read an input that is always zero. Such parameters cannot move in any
low-loss direction found by training; they are the structural rank deficits
of the dimensionality analysis (paper §5, "no redundant parameters").

A second structural deficit comes from softmax cross-entropy: the gradient
with respect to the logits, ``softmax(z) - onehot(y)``, sums to zero over the
classes, so the last layer's bias moves in at most C-1 directions and each
column of its weight likewise.

Units are found with forward hooks: every module with its own parameters (and
every per-channel pass-through such as BatchNorm or Dropout) records its
output, and every ReLU looks up which module produced its input, by identity
of the tensor, so a ReLU module reused at several places (as in LeNet5) is
attributed correctly. A ReLU whose input no module produced (a residual sum,
say) is reported as unattributed and makes no structural claim.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import Tensor, nn

ACTIVATIONS = (nn.ReLU, nn.ReLU6)  # exactly zero output and zero gradient for x <= 0
UNIT_MODULES = (nn.Linear, nn.modules.conv._ConvNd)  # weight[k] and bias[k] belong to output unit k
PASS_THROUGH = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)


@dataclass
class Units:
    """What the hooks saw over a dataset."""

    dead: dict[str, list[int]] = field(default_factory=dict)  # producing module -> output units never active
    chains: dict[str, list[str]] = field(default_factory=dict)  # producing module -> modules whose unit k it is
    dead_inputs: dict[str, list[int]] = field(default_factory=dict)  # module -> input units always zero
    output_module: str | None = None  # the module whose output is the model's output
    unattributed: int = 0  # ReLU calls whose input came from no recorded module
    samples: int = 0
    active: dict[str, Tensor] = field(default_factory=dict)  # producing module -> per unit, samples it is active on

    def names(self) -> list[str]:
        """``fc1 unit 17``-style names of every dead unit, in model order."""
        return [unit_name(self.chains[m], k) for m in self.dead for k in self.dead[m]]

    def rarely_active(self, fraction: float = 0.01) -> dict[str, int]:
        """Units alive but active on at most ``fraction`` of the samples: name -> number of samples.

        Their gradients are rare and small, so they add directions with tiny
        singular values (near-structural zeros) rather than exact ones.
        """
        limit = fraction * self.samples
        return {unit_name(self.chains[m], k): int(c) for m, counts in self.active.items()
                for k, c in enumerate(counts.tolist()) if 0 < c <= limit}


def unit_name(chain: list[str], k: int) -> str:
    root, rest = chain[-1], chain[:-1]
    via = f" (through {', '.join(reversed(rest))})" if rest else ""
    return f"{root} unit {k}{via}"


def _unit_dim(module: nn.Module) -> int:
    """The dimension that indexes units in a module's output: features last for Linear, channels first otherwise."""
    return -1 if isinstance(module, nn.Linear) else 1


def _per_unit_max(x: Tensor, dim: int) -> Tensor:
    dim = dim % x.dim()
    return x.detach().abs().movedim(dim, 0).reshape(x.shape[dim], -1).amax(1)


@torch.no_grad()
def find_dead_units(model: nn.Module, batches: Iterable, device=None, train_mode: bool = True) -> Units:
    """Run ``model`` over ``batches`` and find the units that never activate (and inputs always zero).

    Works on a copy, so BatchNorm running statistics of ``model`` are left as
    they are; ``train_mode`` (default) sees BatchNorm and Dropout as Train_r does.
    """
    model = copy.deepcopy(model)
    model.train(train_mode)
    device = device or next(model.parameters()).device
    hooks = UnitHooks(model)
    handles = hooks.attach()
    try:
        for x, _ in batches:
            hooks.produced.clear()
            out = model(x.to(device))
            hit = hooks.produced.get(id(out))
            if hit is not None and hit[0] is out:
                hooks.units.output_module = hit[1][-1]
            hooks.units.samples += len(x)
        hooks.produced.clear()
    finally:
        for h in handles:
            h.remove()
    return hooks.finish()


class UnitHooks:
    """Forward hooks that attribute every ReLU's output units to the module that produced its input.

    ``produced`` maps a tensor's id to ``(tensor, chain)``: the chain names the
    producing module and the pass-through modules after it, innermost first.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.names = {m: n for n, m in model.named_modules()}
        self.produced: dict[int, tuple[Tensor, list[str]]] = {}
        self.act_max: dict[str, Tensor] = {}
        self.in_max: dict[str, Tensor] = {}
        self.units = Units()

    def attach(self) -> list:
        handles = []
        for module in self.model.modules():
            if isinstance(module, ACTIVATIONS):
                handles.append(module.register_forward_hook(self.on_activation))
            elif isinstance(module, PASS_THROUGH) or any(True for _ in module.parameters(recurse=False)):
                handles.append(module.register_forward_hook(self.on_output))
            if isinstance(module, UNIT_MODULES):
                handles.append(module.register_forward_pre_hook(self.on_input))
        return handles

    def on_output(self, module, inputs, output) -> None:
        if not isinstance(output, Tensor):
            return
        known = self.produced.get(id(output))
        if known is not None and known[0] is output:
            return  # an outer module returning an inner one's output: keep the innermost
        chain = [self.names[module]]
        if isinstance(module, PASS_THROUGH) and inputs and isinstance(inputs[0], Tensor):
            prev = self.produced.get(id(inputs[0]))
            if prev is not None and prev[0] is inputs[0]:
                chain = chain + prev[1]
        self.produced[id(output)] = (output, chain)

    def on_input(self, module, inputs) -> None:
        if inputs and isinstance(inputs[0], Tensor) and inputs[0].dim() >= 2:
            m = _per_unit_max(inputs[0], _unit_dim(module))
            n = self.names[module]
            self.in_max[n] = m if n not in self.in_max else torch.maximum(self.in_max[n], m)

    def on_activation(self, module, inputs, output) -> None:
        prev = self.produced.get(id(inputs[0])) if inputs else None
        if prev is None or prev[0] is not inputs[0]:
            self.units.unattributed += 1
            return
        chain = prev[1]
        root = self.model.get_submodule(chain[-1])
        dim = _unit_dim(root) % output.dim()
        m = _per_unit_max(output, dim)
        key = chain[0]
        self.act_max[key] = m if key not in self.act_max else torch.maximum(self.act_max[key], m)
        per_sample = (output.detach().movedim(dim, -1).reshape(output.shape[0], -1, output.shape[dim]) > 0).any(1)
        n = per_sample.sum(0)
        active = self.units.active
        active[key] = n if key not in active else active[key] + n
        self.units.chains[key] = chain

    def finish(self) -> Units:
        """The units (and unit inputs) whose largest value over the whole pass was zero, in model order."""
        order = list(self.names.values())
        for found, into in ((self.act_max, self.units.dead), (self.in_max, self.units.dead_inputs)):
            for key in sorted(found, key=order.index):
                dead = (found[key] == 0).nonzero().flatten().tolist()
                if dead:
                    into[key] = dead
        return self.units


@dataclass
class LayerStructure:
    """The structural bound on the directions one parameter tensor can move in."""

    name: str
    numel: int
    zero: Tensor  # bool mask: entries with exactly zero gradient by construction
    free: int  # dimension of the subspace its gradients live in
    dead_units: list[str] = field(default_factory=list)
    dead_inputs: int = 0
    softmax_constraint: bool = False

    @property
    def reasons(self) -> list[str]:
        out = []
        if self.dead_units:
            out.append(f"{len(self.dead_units)} dead unit(s): {', '.join(self.dead_units)}")
        if self.dead_inputs:
            out.append(f"{self.dead_inputs} input unit(s) always zero")
        if self.softmax_constraint:
            out.append("softmax cross-entropy: gradients sum to zero over the classes")
        return out


def structure(model: nn.Module, units: Units, softmax_output: bool = True) -> dict[str, LayerStructure]:
    """Per trainable parameter: the entries frozen by dead units or dead inputs, and the free dimension.

    With ``softmax_output`` (the loss is softmax cross-entropy on the model's
    output) the output module's bias has C-1 free directions and its weight
    (C-1) per live input column.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    out = {n: LayerStructure(n, p.numel(), torch.zeros(p.shape, dtype=torch.bool), p.numel()) for n, p in params.items()}

    def pname(module: str, attr: str) -> str:
        return f"{module}.{attr}" if module else attr

    for key, dead in units.dead.items():
        chain = units.chains[key]
        labels = [unit_name(chain, k) for k in dead]
        for mod in chain:
            for attr in ("weight", "bias"):
                ls = out.get(pname(mod, attr))
                if ls is None or ls.zero.dim() == 0:
                    continue
                ls.zero[dead] = True
                ls.dead_units += labels
    for mod, dead in units.dead_inputs.items():
        ls = out.get(pname(mod, "weight"))
        if ls is not None and ls.zero.dim() >= 2:
            ls.zero[:, dead] = True
            ls.dead_inputs = len(dead)
    for ls in out.values():
        ls.free = int((~ls.zero).sum())
    if softmax_output and units.output_module is not None:
        m = model.get_submodule(units.output_module)
        if isinstance(m, nn.Linear):
            w, b = out.get(pname(units.output_module, "weight")), out.get(pname(units.output_module, "bias"))
            live_cols = (~w.zero).any(0).sum() if w is not None else 0
            if w is not None:
                w.free = int(max(0, m.out_features - 1) * live_cols)
                w.softmax_constraint = True
            if b is not None:
                b.free = max(0, int((~b.zero).sum()) - 1)
                b.softmax_constraint = True
    return out
