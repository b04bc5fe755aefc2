"""``llpf.align(model_a, model_b, example)``: B's hidden units reordered to match A's, computing B's function.

Two independently trained networks differ partly by a permutation of their
hidden units (Entezari et al. 2022); undoing it before connecting them removes
much of the straight line's barrier (Ainsworth et al. 2023). The permutation
groups come from the model's graph (``graph.permutation_spec``), the
permutations from weight matching (``matching.weight_matching``), and the
aligned model is checked to compute what B computes.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import AlignmentError, ModelMismatchError
from .graph import permutation_spec
from .layout import PermutationSpec, permute_state
from .matching import weight_matching

# Outputs may differ by float rounding (sums in another order): this much of the largest output.
OUTPUT_TOLERANCE = 1e-4


@dataclass
class Alignment:
    """B aligned to A: the model, the groups and permutations found, and what alignment changed."""

    model: nn.Module
    spec: PermutationSpec
    permutations: dict[int, Tensor]
    sweeps: int
    distance_before: float
    distance_after: float
    max_output_difference: float  # between B and the aligned model, on the example batch

    @property
    def moved(self) -> list[int]:
        """The groups whose units were reordered (not the identity)."""
        return [g for g, p in self.permutations.items() if not torch.equal(p, torch.arange(len(p)))]

    def record(self) -> dict:
        """What a summary records of the alignment (JSON)."""
        return {"method": "weight matching (Ainsworth et al. 2023, Algorithm 1)",
                "groups": len(self.permutations), "groups_reordered": len(self.moved),
                "units": sum(self.spec.units.values()), "sweeps": self.sweeps,
                "distance_before": self.distance_before, "distance_after": self.distance_after,
                "left_in_place": dict(self.spec.fixed)}


def check_same_architecture(model_a: nn.Module, model_b: nn.Module) -> None:
    """Both models must be one architecture: same class, same state-dict names and shapes (ModelMismatchError)."""
    if type(model_a) is not type(model_b):
        raise ModelMismatchError(f"models A and B are different architectures ({type(model_a).__name__}, "
                                 f"{type(model_b).__name__}); alignment permutes one architecture's units")
    sa, sb = model_a.state_dict(), model_b.state_dict()
    if list(sa) != list(sb):
        odd = next((k for k in [*sa, *sb] if (k in sa) != (k in sb)), None) or "their order"
        raise ModelMismatchError(f"models A and B have different layers ({odd}); alignment needs one architecture")
    bad = next((k for k in sa if sa[k].shape != sb[k].shape), None)
    if bad:
        raise ModelMismatchError(f"models A and B differ in {bad} ({list(sa[bad].shape)} against "
                                 f"{list(sb[bad].shape)}); alignment needs one architecture")


def parameter_distance(state_a: dict[str, Tensor], state_b: dict[str, Tensor], names) -> float:
    """L2 distance between two models over the named tensors (their parameters)."""
    return sum(float((state_a[k].double() - state_b[k].double()).pow(2).sum()) for k in names) ** 0.5


@torch.no_grad()
def output_difference(model_b: nn.Module, aligned: nn.Module, inputs: Tensor, batch_size: int = 1024
                      ) -> tuple[float, float]:
    """The largest absolute difference between the two models' outputs on ``inputs`` (eval mode), and the largest
    absolute output (its scale). ``batch_size`` 0 (a config's "measured") evaluates in batches of 1024."""
    batch_size = batch_size or 1024
    modes = model_b.training, aligned.training
    model_b.eval(), aligned.eval()
    device = next(model_b.parameters()).device
    diff = scale = 0.0
    try:
        for i in range(0, len(inputs), batch_size):
            x = inputs[i:i + batch_size].to(device)
            ob, oa = model_b(x), aligned(x)
            diff = max(diff, float((ob - oa).abs().max()))
            scale = max(scale, float(ob.abs().max()))
    finally:
        model_b.train(modes[0]), aligned.train(modes[1])
    return diff, scale


def check_function(diff: float, scale: float, where: str) -> None:
    """Refuse an aligned model whose outputs differ from B's beyond float rounding (AlignmentError)."""
    if not diff <= OUTPUT_TOLERANCE * scale:
        raise AlignmentError(f"the aligned model's outputs differ from B's by {diff:.3g} on {where} (outputs up to "
                             f"{scale:.3g}): the permutation groups misread an operation of this model; "
                             f"nothing was written")


def align(model_a: nn.Module, model_b: nn.Module, example: Tensor, *, max_sweeps: int = 100,
          seed: int = 0) -> Alignment:
    """Reorder ``model_b``'s hidden units to match ``model_a``'s by weight matching; B's function is kept.

    ``example`` is a small batch of inputs such as the model takes (two
    samples do): the model is traced with torch.fx and run on it once to learn
    its shapes, and the aligned model's outputs on it are checked against B's.
    The network's inputs and outputs keep their order; units reaching an
    operation the graph walk does not understand stay in place and are named
    in ``spec.fixed``. Models of different architectures raise
    ModelMismatchError, a model torch.fx cannot trace AlignmentError.
    """
    check_same_architecture(model_a, model_b)
    spec = permutation_spec(model_a, example)
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    perms, sweeps = weight_matching(spec, state_a, state_b, max_sweeps=max_sweeps, seed=seed)
    aligned_state = permute_state(state_b, spec, perms)
    model = copy.deepcopy(model_b)
    model.load_state_dict(aligned_state)
    names = [k for k, _ in model_a.named_parameters()]
    diff, scale = output_difference(model_b, model, example)
    check_function(diff, scale, "the example batch")
    return Alignment(model, spec, perms, sweeps, parameter_distance(state_a, state_b, names),
                     parameter_distance(state_a, aligned_state, names), diff)
