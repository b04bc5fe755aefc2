"""Two endpoints aligned for a path (``llpf align``, ``--align``): checked on the test set, the line before and after.

The aligned destination must compute what the destination computes: its
outputs on every test input are compared with B's (the largest difference is
recorded, and beyond float rounding nothing is written), and both models'
test accuracy is recorded. The straight line from A to B and from A to the
aligned B says what alignment bought: the highest training loss on each and
its barrier (the loss above the endpoints' linear interpolation, as
``analysis.barriers.line_summary`` measures it).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..data import Bundle
from ..evaluation import eval_batch_for
from .aligned import align, check_function, output_difference

LINE_POINTS = 11  # points on each straight line recorded with an alignment (t = 0, 0.1, ..., 1)


def align_endpoints(a: nn.Module, b: nn.Module, data: Bundle, batch_size: int = 1024, seed: int = 0
                    ) -> tuple[nn.Module, dict]:
    """B aligned to A, its outputs checked against B's on the whole test split; the model and its record."""
    from ..train import DEFAULT_METRICS, evaluate

    result = align(a, b, data.test.x[:2], seed=seed)
    diff, scale = output_difference(b, result.model, data.test.x, batch_size)
    check_function(diff, scale, f"the {len(data.test)} test inputs")
    accuracy = {name: evaluate(m, data.test.batches(batch_size or eval_batch_for(m, data.test)), F.cross_entropy,
                               DEFAULT_METRICS)["accuracy"]
                for name, m in (("dest", b), ("aligned", result.model))}
    return result.model, {**result.record(), "max_output_difference": diff, "output_scale": scale,
                          "checked_on": f"{len(data.test)} test inputs", "test_accuracy": accuracy}


def line_change(a: nn.Module, b: nn.Module, aligned: nn.Module, data: Bundle, batch_size: int = 1024,
                points: int = LINE_POINTS, recompute_bn: bool | None = None, device=None
                ) -> tuple[list[dict], list[dict], dict]:
    """The straight line A -> B and A -> aligned B (training and test splits): both lines' rows, and a record of
    each line's highest training loss and barrier."""
    from ..analysis.barriers import line_summary, straight_line

    lines = [straight_line(a, end, data, points=points, recompute_bn=recompute_bn, batch_size=batch_size,
                           device=device) for end in (b, aligned)]
    before, after = (line_summary(rows) for rows in lines)
    return lines[0], lines[1], {"points": points, "before": before, "after": after}

