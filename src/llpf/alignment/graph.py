"""Permutation groups found from a model's graph (torch.fx), not from a list written per architecture.

The model is traced once (``torch.fx.symbolic_trace``, in eval mode) and run
once on an example batch to learn every tensor's shape. Walking the graph in
order, each tensor's axes carry the units that flow through them: a
convolution, linear layer or embedding starts a new group on its output axis
and ties its weight's input axis (and nothing else) to the units arriving; a
normalisation layer ties its parameters and running statistics to the units it
normalises; elementwise operations, pooling, softmax and reductions pass units
through (a reduction over units forgets them); a flatten merges a channel with
its H*W positions into blocks; a residual addition or multiplication joins the
groups of its operands into one, a concatenation lays them side by side.

Anything the walk does not understand (an attention layer splitting units into
heads, a reshape across units, a grouped convolution, a module or function it
does not know) is handled, not refused: the units reaching it stay in place
(their group is *fixed*), so the aligned model still computes the same
function, and ``PermutationSpec.fixed`` names each such group and why. So are
the network's outputs: their order is the meaning of the classes. A model that
torch.fx cannot trace is refused with one line (AlignmentError).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from ..errors import AlignmentError
from .layout import Groups, Layout, PermutationSpec, Segment, group_name, groups_of


@dataclass(frozen=True)
class FromParam:
    """An axis that is axis ``axis`` of state entry ``name``, read by a ``get_attr``: it moves if tied to units."""

    name: str
    axis: int


def trace(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """The model's graph, with each node's output shape (``node.meta['tensor_meta']``) from one eval-mode pass."""
    from torch.fx.passes.shape_prop import ShapeProp

    work = copy.deepcopy(model).eval()
    try:
        gm = fx.symbolic_trace(work)
    except Exception as e:  # noqa: BLE001 - fx raises many kinds; each is "cannot trace"
        why = " ".join(str(e).split())[:200] or type(e).__name__
        raise AlignmentError(f"cannot trace {type(model).__name__} with torch.fx, so its permutation groups are "
                             f"unknown ({type(e).__name__}: {why})") from None
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except Exception as e:  # noqa: BLE001
        why = " ".join(str(e).split())[:200] or type(e).__name__
        raise AlignmentError(f"the traced {type(model).__name__} does not run on the example input "
                             f"({type(e).__name__}: {why})") from None
    return gm


def permutation_spec(model: nn.Module, example: torch.Tensor) -> PermutationSpec:
    """The permutation groups of ``model`` and the tensor axes each reorders, from its traced graph."""
    from .rules import rule_for

    gm = trace(model, example)
    walk = Walk(gm, set(model.state_dict()))
    for node in gm.graph.nodes:
        walk.states[node] = rule_for(walk, node)(walk, node)
    return walk.finish()


class Walk:
    """The walk over a graph: each node's units per axis, the groups, and which tensor axes they reorder."""

    def __init__(self, gm: fx.GraphModule, names: set[str]):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.names = names
        self.groups = Groups()
        self.states: dict[fx.Node, dict[int, object]] = {}
        self.ties: dict[str, dict[int, Layout]] = {}
        self.kept: dict[tuple[str, int], str] = {}  # (state entry, axis) -> why it must stay in place

    # ------------------------------------------------------------ reading nodes

    def state(self, value) -> dict[int, object]:
        return self.states.get(value, {}) if isinstance(value, fx.Node) else {}

    @staticmethod
    def shape(value) -> tuple[int, ...] | None:
        meta = value.meta.get("tensor_meta") if isinstance(value, fx.Node) else None
        return tuple(meta.shape) if hasattr(meta, "shape") else None

    @staticmethod
    def arg(node: fx.Node, i: int, key: str | None = None, default=None):
        if len(node.args) > i:
            return node.args[i]
        return node.kwargs.get(key, default) if key else default

    def module(self, node: fx.Node) -> nn.Module:
        return self.modules[node.target]

    # ------------------------------------------------------------ groups and ties

    def new_group(self, units: int, producer: str, tied: list[tuple[str, int]]) -> Layout | None:
        """A new group of ``units`` (made by ``producer``) whose order the ``tied`` tensor axes follow."""
        if units < 2:
            return None
        layout = (Segment(self.groups.new(units, producer), units),)
        for name, axis in tied:
            self.tie(name, axis, layout)
        return layout

    def tie(self, name: str, axis: int, units, why: str = "") -> None:
        """Axis ``axis`` of state entry ``name`` meets ``units``: it follows a layout, and stays for anything else."""
        if name not in self.names:
            return
        if not isinstance(units, tuple):
            self.keep(name, axis, why or f"{name} meets units that do not move")
            if isinstance(units, FromParam):
                self.keep(units.name, units.axis, why or f"{units.name} meets {name}")
            return
        old = self.ties.setdefault(name, {}).get(axis)
        self.ties[name][axis] = units if old is None else self.unify(old, units, f"{name} is used twice")

    def keep(self, name: str, axis: int, why: str) -> None:
        self.kept.setdefault((name, axis), why)

    def fix(self, units, why: str) -> None:
        """``units`` stay in place: a layout's groups are fixed, a parameter's axis is kept."""
        if isinstance(units, FromParam):
            self.keep(units.name, units.axis, why)
        elif units:
            for g in groups_of(units):
                self.groups.fix(g, why)

    def unify(self, a: Layout, b: Layout, why: str) -> Layout | None:
        """Two layouts that must move as one: their groups join segment by segment; unlike layouts stay in place."""
        if [(s.units, s.block) for s in a] != [(s.units, s.block) for s in b]:
            self.fix(a, why)
            self.fix(b, why)
            return None
        for sa, sb in zip(a, b):
            if sa.group is not None and sb.group is not None:
                self.groups.union(sa.group, sb.group)
            elif sa.group is not None or sb.group is not None:
                self.groups.fix(sa.group if sa.group is not None else sb.group, why)
        return a

    def merge(self, entries: list, why: str):
        """The units of one axis where several tensors meet elementwise (or contract): ``None`` for a tensor
        whose entries do not move. Layouts join; a parameter's axis follows them; anything else fixes them."""
        layouts = [e for e in entries if isinstance(e, tuple)]
        params = [e for e in entries if isinstance(e, FromParam)]
        still = any(e is None for e in entries)
        if not layouts:
            if len(params) == 1 and not still:
                return params[0]
            for p in params:
                self.keep(p.name, p.axis, why)
            return None
        out = layouts[0]
        for other in layouts[1:]:
            if out is None:
                self.fix(other, why)
            else:
                out = self.unify(out, other, why)
        for p in params:
            self.tie(p.name, p.axis, out, why)
        if still and out is not None:
            self.fix(out, why)
            return None
        return out

    def unknown(self, node: fx.Node, what: str) -> dict:
        """An operation the walk does not understand: every unit reaching it stays in place; its output has none."""
        why = f"reaches {what} ({node.name})"
        for inp in node.all_input_nodes:
            for units in self.state(inp).values():
                self.fix(units, why)
        return {}

    # ------------------------------------------------------------ the result

    def finish(self) -> PermutationSpec:
        """Resolve the walk into a PermutationSpec: fixed groups become units that never move."""
        for (name, axis), why in self.kept.items():
            self.fix(self.ties.get(name, {}).get(axis), why)
        g = self.groups
        resolve = lambda s: Segment(None if s.group is None or g.is_fixed(s.group) else g.find(s.group),  # noqa: E731
                                    s.units, s.block)
        axes: dict[str, dict[int, Layout]] = {}
        for name, by_axis in self.ties.items():
            for axis, layout in by_axis.items():
                layout = tuple(map(resolve, layout))
                if groups_of(layout):
                    axes.setdefault(name, {})[axis] = layout
        moving = sorted({s.group for a in axes.values() for lay in a.values() for s in lay if s.group is not None})
        producers = {r: g.producers(r) for r in [*moving, *g.fixed]}
        fixed = {group_name(producers[r]): why for r, why in sorted(g.fixed.items())}
        return PermutationSpec(units={r: g.units[r] for r in moving}, producers={r: producers[r] for r in moving},
                               axes=axes, fixed=fixed)
