"""llpf: explore the low-loss space of neural networks.

Low-loss paths between two trained models (M2M, paper Algorithm 1) and from a
model toward the origin (M2O, Algorithm 2), with the geometry of variance
spheres, analysis and figures; ``compare`` runs them beside the straight line,
AutoNEB and Bezier curves on the same pairs.
"""
from .config import Config, PathConfig, Phase, load_config
from .data import BatchStream, Bundle, Split, load_data
from .models import build_model
from .api import find_path, find_paths, m2m, m2o
from .driver import Driver, PathResult
from .methods import METHODS, register
from .comparison import compare

__version__ = "0.1.0"

__all__ = ["Config", "PathConfig", "Phase", "load_config", "BatchStream", "Bundle", "Split", "load_data",
           "build_model", "Driver", "PathResult", "METHODS", "register", "find_path", "find_paths", "m2m", "m2o",
           "compare", "__version__"]
