"""Phase schedules (paper Appendix A.4, Tables 1 and 2): which layers move, and when.

Layers are selected by glob patterns over parameter names (``layer1.*``,
``classifier.blocks.0.*``, ``*`` for all). A pattern that matches no parameter
is an error listing the valid names. Normalisation layers are found by module
type, not by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from torch import nn

from .config import Phase
from .errors import ConfigError

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
            raise ConfigError(f"layer pattern {pat!r} matches no parameter; valid names: {shown}")
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


def resolve(phases: list[Phase], names: tuple[str, ...], exclude: set[str] = frozenset()) -> list[ResolvedPhase]:
    """Resolve every phase's patterns (cumulative where ``keep_previous``), minus ``exclude``."""
    out, prev, it = [], [], 0
    for i, ph in enumerate(phases):
        moved = set(select(ph.layers, names))
        if ph.keep_previous:
            moved |= set(prev)
        moved -= set(exclude)
        ordered = tuple(n for n in names if n in moved)
        if not ordered:
            raise ConfigError(f"phase {i + 1} moves no layer (its patterns select only excluded layers)")
        out.append(ResolvedPhase(i, ph, ordered, it + 1, it + ph.iterations))
        prev, it = ordered, it + ph.iterations
    return out


def phase_at(schedule: list[ResolvedPhase], iteration: int) -> ResolvedPhase:
    """The phase that iteration (1-based) belongs to."""
    for rp in schedule:
        if iteration <= rp.last:
            return rp
    return schedule[-1]
