"""Phase schedules (paper Appendix A.4, Tables 1 and 2): which layers move, and when.

Layers are selected by glob patterns over parameter names (``layer1.*``,
``classifier.blocks.0.*``, ``*`` for all). A pattern that matches no parameter
is an error listing the valid names. Normalisation layers are found by module
type, not by name.

Each M2M phase also names the variance sphere its VarianceCorrections project
onto (``SPHERES``), as a fraction of the way from the start's sphere (0, the
paper's Algorithm 1) to the destination's (1, the later version's mode for
modes trained with different hyperparameters): "start" holds 0, "dest" holds
1, "moving" goes linearly from where the previous phase left it (0 for the
first phase) to 1 over the phase.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fnmatch import fnmatchcase

from torch import nn

from .config import Phase
from .errors import ConfigError

SPHERES = ("start", "dest", "moving")

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
if hasattr(nn, "RMSNorm"):
    NORM_TYPES = NORM_TYPES + (nn.RMSNorm,)


def normalisation_parameters(model: nn.Module) -> set[str]:
    """Names of the parameters that belong to normalisation modules (BatchNorm, LayerNorm, GroupNorm...)."""
    out = set()
    for mname, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            for pname, _ in module.named_parameters(recurse=False):
                out.add(f"{mname}.{pname}" if mname else pname)
    return out


@dataclass(frozen=True)
class LayerGroup:
    """The parameters one module owns directly, in model order: what a phase pattern like ``module.*`` selects."""

    module: str
    type: str
    parameters: tuple[tuple[str, tuple[int, ...]], ...]  # (short name, shape)
    normalisation: bool

    @property
    def size(self) -> int:
        return sum(math.prod(shape) for _, shape in self.parameters)


def layer_groups(model: nn.Module) -> list[LayerGroup]:
    """The model's trainable parameters grouped by the module that owns them, in order (``llpf layers``)."""
    out = []
    for mname, module in model.named_modules():
        params = tuple((n, tuple(p.shape)) for n, p in module.named_parameters(recurse=False) if p.requires_grad)
        if params:
            out.append(LayerGroup(mname, type(module).__name__, params, isinstance(module, NORM_TYPES)))
    return out


def select(patterns: list[str], names: tuple[str, ...] | list[str]) -> list[str]:
    """The names matched by any of the glob ``patterns``, in model order.

    A pattern without wildcards also selects the parameters under it
    (``conv1`` selects ``conv1.weight`` and ``conv1.bias``).
    """
    chosen = set()
    for pat in patterns:
        hits = {n for n in names if fnmatchcase(n, pat) or fnmatchcase(n, pat + ".*")}
        if not hits:
            shown = ", ".join(names[:40]) + (", ..." if len(names) > 40 else "")
            raise ConfigError(f"layer pattern {pat!r} matches no parameter; valid names: {shown} "
                              f"(llpf layers CONFIG lists them by module)")
        chosen |= hits
    return [n for n in names if n in chosen]


@dataclass(frozen=True)
class ResolvedPhase:
    """A phase with its moved layers resolved against a model and its place on the iteration axis."""

    index: int
    phase: Phase
    moved: tuple[str, ...]
    first: int  # first iteration of the phase (1-based, inclusive)
    last: int  # last iteration (inclusive)
    sphere: str = "start"  # one of SPHERES
    sphere_from: float = 0.0  # the sphere's fraction of the way to the destination's when the phase begins

    def sphere_fraction(self, iteration: int) -> float:
        """How far from the start's variance sphere (0) to the destination's (1) iteration ``iteration`` projects."""
        if self.sphere == "start":
            return 0.0
        if self.sphere == "dest":
            return 1.0
        done = (iteration - self.first + 1) / (self.last - self.first + 1)
        return self.sphere_from + (1.0 - self.sphere_from) * done

    @property
    def sphere_to(self) -> float:
        """The fraction when the phase ends."""
        return 0.0 if self.sphere == "start" else 1.0


def resolve(phases: list[Phase], names: tuple[str, ...], exclude: set[str] = frozenset(),
            sphere: str = "start") -> list[ResolvedPhase]:
    """Resolve every phase's patterns (cumulative where ``keep_previous``), minus ``exclude``, and its sphere
    (``sphere``, the table's, where the phase names none)."""
    if sphere not in SPHERES:
        raise ConfigError(f"sphere must be one of {', '.join(SPHERES)}, got {sphere!r}")
    out, prev, it, at = [], [], 0, 0.0
    for i, ph in enumerate(phases):
        moved = set(select(ph.layers, names))
        if ph.keep_previous:
            moved |= set(prev)
        moved -= set(exclude)
        ordered = tuple(n for n in names if n in moved)
        if not ordered:
            raise ConfigError(f"phase {i + 1} moves no layer (its patterns select only excluded layers)")
        rp = ResolvedPhase(i, ph, ordered, it + 1, it + ph.iterations, ph.sphere or sphere, at)
        out.append(rp)
        prev, it, at = ordered, it + ph.iterations, rp.sphere_to
    return out


def phase_at(schedule: list[ResolvedPhase], iteration: int) -> ResolvedPhase:
    """The phase that iteration (1-based) belongs to."""
    for rp in schedule:
        if iteration <= rp.last:
            return rp
    return schedule[-1]
