"""Other ways to connect two models, run on the same pairs as LLPF: AutoNEB and Bezier curves.

The straight line is :func:`llpf.analysis.barriers.straight_line`.
"""
from .autoneb import AutoNEB, AutoNEBConfig, Cycle, PAPER_CYCLES, insert_pivot, neb_force, paper_cycles, tangent
from .functional import FlatModel

__all__ = ["AutoNEB", "AutoNEBConfig", "Cycle", "PAPER_CYCLES", "FlatModel", "insert_pivot", "neb_force",
           "paper_cycles", "tangent"]
