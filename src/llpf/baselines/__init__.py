"""Other ways to connect two models, run on the same pairs as LLPF: AutoNEB and one-bend curves.

The algorithms live here; ``llpf.methods`` makes them (and the straight line)
path methods of the engine, so that ``llpf compare`` runs them as it runs M2M.
M2O's baselines (move-only, fine-tuning with weight decay, at M2O's budget of
gradient steps) are :func:`llpf.baselines.m2o_baselines.m2o_baselines`.
"""
from .elastic_band import (PAPER_CYCLES, AutoNEB, AutoNEBConfig, Band, Cycle, along, chain_points, insert_pivot, neb_force,
                      paper_cycles, redistribute, tangent)
from .bezier import Curve, CurveConfig, curve_point
from .functional import FlatModel

__all__ = ["AutoNEB", "AutoNEBConfig", "Band", "Curve", "CurveConfig", "Cycle", "FlatModel", "PAPER_CYCLES",
           "along", "chain_points", "curve_point", "insert_pivot", "neb_force", "paper_cycles", "redistribute",
           "tangent"]
