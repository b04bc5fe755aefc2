"""Permutation alignment of two models before a path is built between them (Ainsworth et al. 2023, weight matching).

- ``graph``: the permutation groups of a model, from its torch.fx graph;
- ``layout``: groups, the tensor axes they reorder, and applying permutations;
- ``matching``: weight matching (Algorithm 1), one linear assignment per group;
- ``aligned``: ``align(model_a, model_b, example)``, the aligned B checked to compute B's function;
- ``pair``: two endpoints of a config aligned, checked on the test set, with the straight line before and after.
"""
from .aligned import Alignment, align
from .graph import permutation_spec
from .layout import PermutationSpec

__all__ = ["Alignment", "PermutationSpec", "align", "permutation_spec"]
