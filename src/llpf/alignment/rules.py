"""How each operation carries units from its inputs to its output: the rules of the graph walk (``graph.Walk``).

A rule takes the walk and a node and returns the node's output units, axis ->
layout (or a parameter's axis). Rules for the layers that make new units
(convolution, linear, embedding) and those whose parameters follow units
(normalisation layers) tie state-dict axes; the others only move units between
axes. Whatever has no rule here is unknown: its units stay in place.
"""
from __future__ import annotations

from typing import Callable

import torch.fx as fx

from .graph import FromParam, Walk
from .layout import Segment, scaled

Rule = Callable[[Walk, fx.Node], dict]


def rule_for(walk: Walk, node: fx.Node) -> Rule:
    """The rule of ``node``: by module type for a module call, by name for a torch function or tensor method."""
    from .modules import module_rule

    if node.op in ("placeholder", "get_attr", "output"):
        return {"placeholder": lambda w, n: {}, "get_attr": parameter, "output": output}[node.op]
    if node.meta.get("tensor_meta") is None:
        return lambda w, n: {}  # shape arithmetic (x.size(0), x.shape): no tensor, no units
    if node.op == "call_module":
        return module_rule(walk.module(node))
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    module = "" if node.op == "call_method" else getattr(node.target, "__module__", None) or ""
    known = node.op == "call_method" or module.split(".")[0] in ("torch", "_operator", "torchvision")
    if known and name in FUNCTIONS:
        return FUNCTIONS[name]
    return lambda w, n: w.unknown(n, name or str(n.target))


def parameter(w: Walk, node: fx.Node) -> dict:
    """A parameter or buffer read directly: each axis may follow the units it meets."""
    if node.target not in w.names or w.shape(node) is None:
        return {}
    return {a: FromParam(node.target, a) for a, n in enumerate(w.shape(node)) if n > 1}


def output(w: Walk, node: fx.Node) -> dict:
    """The network's outputs never move: their order is the meaning of the classes."""
    for inp in node.all_input_nodes:
        for units in w.state(inp).values():
            w.fix(units, "reaches the network's output")
    return {}


def same(w: Walk, node: fx.Node) -> dict:
    """Axes unchanged (a copy, a dtype change, softmax along any axis: it is equivariant to a permutation)."""
    return dict(w.state(node.args[0]))


def elementwise(w: Walk, node: fx.Node) -> dict:
    """Elementwise operations with broadcasting: operands' units meet axis by axis (a residual addition joins)."""
    operands = [a for a in node.all_input_nodes if w.shape(a) is not None]
    out = w.shape(node)
    state = {}
    for o in range(len(out)):
        entries = []
        for x in operands:
            s = w.shape(x)
            a = o - (len(out) - len(s))
            if a >= 0 and s[a] > 1:
                entries.append(w.state(x).get(a))
        if any(e is not None for e in entries):
            units = w.merge(entries, f"meets entries that do not move in {node.name}")
            if units is not None:
                state[o] = units
    return state


def spatial(w: Walk, node: fx.Node, trailing: int | None = None) -> dict:
    """Pooling, resampling, padding: they act on the last ``trailing`` axes (default: all after batch and
    channel); units there would be mixed, so they stay in place."""
    st = w.state(node.args[0])
    nd = len(w.shape(node.args[0]))
    trailing = nd - 2 if trailing is None else trailing
    if len(w.shape(node)) != nd or any(a >= nd - trailing for a in st):
        return w.unknown(node, f"{node.name} over units")
    return dict(st)


def spatial_fn(w: Walk, node: fx.Node) -> dict:
    """Pooling and padding functions: max_pool2d acts on the last 2 axes, pad on as many as its widths name."""
    name = node.target if isinstance(node.target, str) else node.target.__name__
    if name == "pad":
        return spatial(w, node, len(w.arg(node, 1, "pad")) // 2)
    return spatial(w, node, next((k for k in (1, 2, 3) if f"{k}d" in name), None))


def reshape_chunks(a: tuple, b: tuple) -> list[tuple[list[int], list[int]]]:
    """A reshape from shape ``a`` to ``b`` as runs of consecutive axes of equal size (merged, split or kept)."""
    chunks, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        di, dj, pi, pj = [], [], 1, 1
        if i < len(a):
            di.append(i)
            pi, i = a[i], i + 1
        if j < len(b):
            dj.append(j)
            pj, j = b[j], j + 1
        while pi != pj and (i < len(a) or j < len(b)):
            if (pi < pj and i < len(a)) or j >= len(b):
                di.append(i)
                pi, i = pi * a[i], i + 1
            else:
                dj.append(j)
                pj, j = pj * b[j], j + 1
        chunks.append((di, dj))
    return chunks


def reshape(w: Walk, node: fx.Node) -> dict:
    """view, reshape, flatten, squeeze ...: a units axis kept whole moves; one merged with the axes after it
    becomes blocks (a conv's channels flattened with H*W); one split or merged after other axes stays in place."""
    x = node.args[0]
    st, a, b = w.state(x), w.shape(x), w.shape(node)
    out = {}
    for di, dj in reshape_chunks(a, b):
        big_in = [d for d in di if a[d] > 1]
        big_out = [d for d in dj if b[d] > 1]
        for d in big_in:
            units = st.get(d)
            if units is None:
                continue
            if d == big_in[0] and len(big_out) == 1 and (len(big_in) == 1 or isinstance(units, tuple)):
                k = 1
                for e in big_in[1:]:
                    k *= a[e]
                out[big_out[0]] = scaled(units, k) if isinstance(units, tuple) else units
            else:
                w.fix(units, f"reaches a reshape across units ({node.name})")
    return out


def _axis(d: int, nd: int) -> int:
    return d % nd if nd else 0


def reorder(w: Walk, node: fx.Node) -> dict:
    """transpose, permute, movedim, t: units follow their axis."""
    x = node.args[0]
    nd = len(w.shape(x))
    name = node.target if isinstance(node.target, str) else node.target.__name__
    order = list(range(nd))
    if name in ("transpose", "swapaxes", "swapdims", "t"):
        i, j = (0, 1) if name == "t" else (_axis(w.arg(node, 1, "dim0"), nd), _axis(w.arg(node, 2, "dim1"), nd))
        order[i], order[j] = order[j], order[i]
    elif name == "permute":
        dims = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (list, tuple)) else node.args[1:]
        order = [_axis(d, nd) for d in (dims or node.kwargs.get("dims"))]
    else:  # movedim, moveaxis
        src, dst = w.arg(node, 1, "source"), w.arg(node, 2, "destination")
        src = [_axis(d, nd) for d in (src if isinstance(src, (list, tuple)) else [src])]
        dst = [_axis(d, nd) for d in (dst if isinstance(dst, (list, tuple)) else [dst])]
        rest = iter(d for d in range(nd) if d not in src)
        placed = dict(zip(dst, src))
        order = [placed[o] if o in placed else next(rest) for o in range(nd)]
    return {order.index(a): u for a, u in w.state(x).items()}


def getitem(w: Walk, node: fx.Node) -> dict:
    """Indexing: an axis taken whole keeps its units; an axis indexed or sliced loses them (they stay in place)."""
    x, index = node.args
    if not isinstance(x, fx.Node) or w.shape(x) is None:
        return {}  # an item of a tuple of outputs, whose units an unknown operation already fixed
    st, nd = w.state(x), len(w.shape(x))
    index = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, (fx.Node, list)) for i in index):
        return w.unknown(node, f"indexing by a tensor ({node.name})")
    real = sum(1 for i in index if i is not None and i is not Ellipsis)
    out, a, o = {}, 0, 0
    for i in index:
        span = nd - real if i is Ellipsis else 0 if i is None else 1
        if i is None:
            o += 1
            continue
        for _ in range(span):
            whole = i is Ellipsis or (isinstance(i, slice) and i == slice(None))
            if a in st and whole:
                out[o] = st[a]
            elif a in st:
                w.fix(st[a], f"is indexed ({node.name})")
            a, o = a + 1, o + (0 if isinstance(i, int) else 1)
    out.update({o + (b - a): st[b] for b in range(a, nd) if b in st})
    return out


def reduce(w: Walk, node: fx.Node) -> dict:
    """sum, mean, amax ... : a reduction over units does not depend on their order, so they are forgotten."""
    x = node.args[0]
    nd = len(w.shape(x))
    dim, keep = w.arg(node, 1, "dim"), len(w.shape(node)) == nd  # keepdim, read from the shapes
    if dim is None:
        return {}
    dims = {_axis(d, nd) for d in (dim if isinstance(dim, (list, tuple)) else [dim])}
    return {a if keep else a - sum(d < a for d in dims): u for a, u in w.state(x).items() if a not in dims}


def cat(w: Walk, node: fx.Node) -> dict:
    """Concatenation: along the units axis the operands' units lie side by side; along others they join."""
    tensors = w.arg(node, 0, "tensors")
    nd = len(w.shape(node))
    dim = _axis(w.arg(node, 1, "dim", node.kwargs.get("axis", 0)), nd)
    out = {}
    for o in range(nd):
        if o == dim:
            continue
        entries = [w.state(t).get(o) for t in tensors if w.shape(t)[o] > 1]
        if any(e is not None for e in entries):
            units = w.merge(entries, f"meets entries that do not move in {node.name}")
            if units is not None:
                out[o] = units
    segments = []
    for t in tensors:
        units = w.state(t).get(dim)
        if isinstance(units, tuple):
            segments += units
        else:
            w.fix(units, f"is concatenated ({node.name})")
            segments.append(Segment(None, w.shape(t)[dim]))
    if any(s.group is not None for s in segments):
        out[dim] = tuple(segments)
    return out


def stack(w: Walk, node: fx.Node) -> dict:
    """Stacking: the operands' units join axis by axis; the new axis has none."""
    tensors = w.arg(node, 0, "tensors")
    nd = len(w.shape(node))
    dim = _axis(w.arg(node, 1, "dim", 0), nd)
    out = {}
    for a in range(nd - 1):
        entries = [w.state(t).get(a) for t in tensors if w.shape(t)[a] > 1]
        if any(e is not None for e in entries):
            units = w.merge(entries, f"meets entries that do not move in {node.name}")
            if units is not None:
                out[a if a < dim else a + 1] = units
    return out


def matmul(w: Walk, node: fx.Node) -> dict:
    """A @ B: the contracted axes' units must match (they cancel); the others carry over."""
    x, y = node.args[0], node.args[1]
    sx, sy, nd = w.shape(x), w.shape(y), len(w.shape(node))
    if len(sx) < 2 or len(sy) < 2:
        return w.unknown(node, f"a vector product ({node.name})")
    stx, sty = w.state(x), w.state(y)
    inner = [stx.get(len(sx) - 1), sty.get(len(sy) - 2)]
    if any(e is not None for e in inner):
        w.merge(inner, f"is contracted with entries that do not move ({node.name})")
    out = {}
    for o in range(nd - 2):
        entries = [st.get(o - (nd - len(s))) for s, st in ((sx, stx), (sy, sty))
                   if o - (nd - len(s)) >= 0 and s[o - (nd - len(s))] > 1]
        if any(e is not None for e in entries):
            units = w.merge(entries, f"meets entries that do not move in {node.name}")
            if units is not None:
                out[o] = units
    for o, units in ((nd - 2, stx.get(len(sx) - 2)), (nd - 1, sty.get(len(sy) - 1))):
        if units is not None:
            out[o] = units
    return out


def expand(w: Walk, node: fx.Node) -> dict:
    """expand, broadcast_to: axes aligned from the right keep their units."""
    x = node.args[0]
    shift = len(w.shape(node)) - len(w.shape(x))
    return {a + shift: u for a, u in w.state(x).items()}


def norm_fn(w: Walk, node: fx.Node) -> dict:
    """F.layer_norm and F.batch_norm with parameters read directly: the parameters follow the normalised units."""
    x = node.args[0]
    st, nd = w.state(x), len(w.shape(x))
    if getattr(node.target, "__name__", node.target) == "layer_norm":
        k = len(w.arg(node, 1, "normalized_shape"))
        params = [w.arg(node, 2, "weight"), w.arg(node, 3, "bias")]
        axes = {nd - k + j: j for j in range(k)}
    else:  # batch_norm(input, running_mean, running_var, weight, bias, ...)
        params = [w.arg(node, i, key) for i, key in enumerate(("running_mean", "running_var", "weight", "bias"), 1)]
        axes = {1 if nd > 1 else 0: 0}
    for a, j in axes.items():
        entries = [st.get(a)] + [w.state(p).get(j) for p in params if isinstance(p, fx.Node)]
        if any(e is not None for e in entries):
            units = w.merge(entries, f"meets normalisation parameters that do not move ({node.name})")
            if units is None:
                st = {b: u for b, u in st.items() if b != a}
    return dict(st)


def _table() -> dict[str, Rule]:
    table: dict[str, Rule] = {}
    groups = {
        elementwise: "add sub mul div truediv floordiv pow neg abs exp log sqrt rsqrt square reciprocal sign erf "
                     "sin cos relu relu_ relu6 gelu silu sigmoid tanh hardswish hardsigmoid hardtanh leaky_relu elu "
                     "selu celu mish softplus dropout dropout1d dropout2d dropout3d alpha_dropout clamp clip maximum "
                     "minimum where add_ mul_ sub_ div_ clamp_ sigmoid_ tanh_ masked_fill stochastic_depth",
        same: "contiguous clone detach to float half double bfloat16 type_as softmax log_softmax normalize",
        reshape: "view reshape flatten unflatten squeeze unsqueeze view_as reshape_as",
        reorder: "transpose swapaxes swapdims permute movedim moveaxis t",
        reduce: "sum mean amax amin var std logsumexp",
        cat: "cat concat concatenate",
        stack: "stack",
        matmul: "matmul bmm",
        expand: "expand expand_as broadcast_to",
        spatial_fn: "max_pool1d max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d "
                    "adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d "
                    "adaptive_max_pool3d interpolate upsample pad",
        getitem: "getitem",
        norm_fn: "layer_norm batch_norm",
    }
    for rule, names in groups.items():
        table.update(dict.fromkeys(names.split(), rule))
    return table


FUNCTIONS = _table()
