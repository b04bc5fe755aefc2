"""The rules for calls of torch.nn layers: the ones that make units, the ones whose parameters follow them.

Convolution, linear and embedding layers start a new group on their output
axis (weight axis 0, bias; an embedding's weight axis 1) and tie their
weight's input axis to the units arriving (Ainsworth et al. 2023, §3: the
permutation of a layer's outputs is undone on the next layer's inputs). A
depthwise convolution keeps its input's units (channel c reads channel c);
BatchNorm, LayerNorm, GroupNorm with one group or one per channel, and
InstanceNorm tie their parameters and running statistics to the units they
normalise. Other layers with parameters (grouped convolutions, attention,
transposed convolutions, ...) are unknown: the units reaching them stay.
"""
from __future__ import annotations

import torch.fx as fx
from torch import nn

from .graph import Walk
from .rules import Rule, reshape, same, spatial


def conv(w: Walk, node: fx.Node) -> dict:
    m, name = w.module(node), node.target
    st = w.state(node.args[0])
    ch = len(w.shape(node.args[0])) - len(m.kernel_size) - 1  # 1 for a batch, 0 for one sample
    for a, units in st.items():
        if a != ch:
            w.fix(units, f"lies on a convolution's spatial axis ({name})")
    if m.groups == 1:
        w.tie(f"{name}.weight", 1, st.get(ch))
        return _made(w, name, m.out_channels, ch, len(w.shape(node)), [f"{name}.weight", f"{name}.bias"])
    if m.groups == m.in_channels == m.out_channels:  # depthwise: output channel c reads input channel c
        units = st.get(ch)
        for p in (f"{name}.weight", f"{name}.bias"):
            w.tie(p, 0, units)
        return {ch: units} if isinstance(units, tuple) else {}
    return w.unknown(node, f"a grouped convolution {name} ({m.groups} groups)")


def linear(w: Walk, node: fx.Node) -> dict:
    m, name = w.module(node), node.target
    st = w.state(node.args[0])
    last = len(w.shape(node.args[0])) - 1
    w.tie(f"{name}.weight", 1, st.get(last))
    out = {a: u for a, u in st.items() if a != last}
    return {**out, **_made(w, name, m.out_features, last, last + 1, [f"{name}.weight", f"{name}.bias"])}


def embedding(w: Walk, node: fx.Node) -> dict:
    name, nd = node.target, len(w.shape(node))
    for units in w.state(node.args[0]).values():
        w.fix(units, f"indexes an embedding ({name})")
    layout = w.new_group(w.module(node).embedding_dim, name, [(f"{name}.weight", 1)])
    return {nd - 1: layout} if layout else {}


def _made(w: Walk, name: str, units: int, axis: int, nd: int, params: list[str]) -> dict:
    """A new group of ``units`` on ``axis`` of the output, followed by axis 0 of ``params``."""
    layout = w.new_group(units, name, [(p, 0) for p in params])
    return {axis: layout} if layout and axis < nd else {}


def channel_norm(w: Walk, node: fx.Node) -> dict:
    """BatchNorm, InstanceNorm, GroupNorm(1 or C groups): per-channel parameters and statistics follow the channels."""
    m, name = w.module(node), node.target
    if isinstance(m, nn.GroupNorm) and m.num_groups not in (1, m.num_channels):
        return w.unknown(node, f"GroupNorm {name} with {m.num_groups} groups")
    st = w.state(node.args[0])
    ch = 1 if len(w.shape(node.args[0])) > 1 else 0
    for p in ("weight", "bias", "running_mean", "running_var"):
        w.tie(f"{name}.{p}", 0, st.get(ch))
    return dict(st)


def layer_norm(w: Walk, node: fx.Node) -> dict:
    """LayerNorm (and RMSNorm) over the last axes: statistics ignore the order of units, parameters follow it."""
    m, name = w.module(node), node.target
    st = w.state(node.args[0])
    nd, k = len(w.shape(node.args[0])), len(m.normalized_shape)
    for j in range(k):
        for p in ("weight", "bias"):
            w.tie(f"{name}.{p}", j, st.get(nd - k + j))
    return dict(st)


ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
               nn.Hardsigmoid, nn.Hardtanh, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Softsign,
               nn.Tanhshrink, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity,
               nn.Softmax, nn.LogSoftmax)
POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
         nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
         nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d, nn.Upsample)

MODULE_RULES: list[tuple[tuple[type, ...], Rule]] = [
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), conv),
    ((nn.Linear,), linear),
    ((nn.Embedding,), embedding),
    ((nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm), channel_norm),
    ((nn.LayerNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())), layer_norm),
    ((nn.Flatten, nn.Unflatten), reshape),
    (ELEMENTWISE, same),
]


def module_rule(m: nn.Module) -> Rule:
    """The rule of a call of ``m`` (an unknown layer keeps the units reaching it in place)."""
    if isinstance(m, POOLS):
        name = type(m).__name__
        k = next((k for k in (1, 2, 3) if f"{k}d" in name), None)
        return lambda w, n: spatial(w, n, k)
    rule = next((r for types, r in MODULE_RULES if isinstance(m, types)), None)
    return rule or (lambda w, n: w.unknown(n, f"{type(m).__name__} {n.target}"))
