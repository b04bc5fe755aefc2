"""llpf: explore the low-loss space of neural networks.

Low-loss paths between two trained models (M2M, paper Algorithm 1) and from a
model toward the origin (M2O, Algorithm 2), with the geometry of variance
spheres, analysis and figures; ``compare`` runs them beside the straight line,
AutoNEB and Bezier curves on the same pairs.

The public names load on first use (PEP 562), so ``import llpf`` and the
command line's ``--help`` import no torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Each public name and the module that defines it.
_PUBLIC = {
    "Config": "config", "PathConfig": "config", "Phase": "config", "load_config": "config",
    "BatchStream": "data", "Bundle": "data", "Split": "data", "load_data": "data",
    "build_model": "models",
    "find_path": "api", "find_paths": "api", "m2m": "api", "m2o": "api",
    "Driver": "driver", "PathResult": "driver",
    "METHODS": "methods", "register": "methods",
    "compare": "comparison",
    "layerwise": "analysis.layerwise", "path_layerwise": "analysis.layerwise",
    "align": "alignment",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
