"""llpf: explore the low-loss space of neural networks.

Low-loss paths between two trained models (M2M, paper Algorithm 1) and from a
model toward the origin (M2O, Algorithm 2), with the geometry of variance
spheres, analysis and figures.
"""
from .config import Config, PathConfig, Phase, load_config
from .data import BatchStream, Bundle, Split, load_data
from .models import build_model
from .paths import Path, PathEngine, m2m, m2o

__version__ = "0.1.0"

__all__ = ["Config", "PathConfig", "Phase", "load_config", "BatchStream", "Bundle", "Split", "load_data",
           "build_model", "Path", "PathEngine", "m2m", "m2o", "__version__"]
