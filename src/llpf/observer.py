"""What a path run hands to whoever records it (the run-directory store, or nothing).

The driver calls these as the run goes; ``llpf.store.RunDir`` implements them.
Living apart from both, this protocol lets the store know nothing of the engine.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import Tensor


class Observer:
    """Receives what the driver records for one path; every hook does nothing by default."""

    def on_rows(self, rows: list[dict]) -> None: ...
    def on_point(self, iteration: int, state: dict[str, Tensor]) -> None: ...
    def on_best(self, iteration: int, state: dict[str, Tensor]) -> None: ...
    def on_checkpoint(self, iteration: int, state: dict[str, Any]) -> None: ...
    def on_summary(self, summary: dict) -> None: ...
    def on_path(self, curve: str, states: list[dict[str, Tensor]]) -> None:
        """The path a method built, when it is not its saved points (``llpf.methods.base.Knots``)."""

    def point_loader(self, iteration: int) -> Callable[[], dict[str, Tensor]] | None:
        """A function that reads back the point saved at ``iteration`` (None: points are not stored)."""
        return None
