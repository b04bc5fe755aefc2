"""What ``llpf compare`` is asked, beside the config and the endpoints: one field per option, checked at once.

The options flow through one object: the command line fills it, :func:`llpf.compare`
checks it before anything runs, ``compare.json`` records it (re-running the same
command continues), and the runs read it. A new option is one more field.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .. import config as C
from ..errors import ConfigError

# compare's method names -> the path method (and config table) each runs
COMPARED = {"line": "line", "llpf": "m2m", "llpf-until": "m2m", "autoneb": "autoneb", "bezier": "bezier",
            "polychain": "bezier"}
DEFAULT_METHODS = ("line", "llpf", "autoneb", "bezier")
MATCHED = "matched"


def budget_label(slot) -> int | str:
    """A budget slot as the tables name it: "config" for none (the config's own budget)."""
    return "config" if slot is None else slot


def parse_methods(methods: str | Sequence[str]) -> list[str]:
    """``"line,llpf"`` or a list -> the method names, checked (a one-line ConfigError names the unknown ones)."""
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else [str(m) for m in methods]
    names = [m for m in names if m]
    bad = [m for m in names if m not in COMPARED]
    if bad or not names:
        raise ConfigError(f"unknown method{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad)) or '(none given)'}"
                          f" for compare; known: {', '.join(COMPARED)}")
    if len(set(names)) < len(names):
        raise ConfigError(f"--methods names a method twice: {','.join(names)}")
    return names


def parse_budget(text: str | int) -> int | str:
    """``--budget``'s value: a number of gradient evaluations (at least 1), or "matched"."""
    if text == MATCHED:
        return MATCHED
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ConfigError(f"--budget must be a number of gradient evaluations or 'matched', got {text!r}") from None
    if value < 1:
        raise ConfigError(f"--budget must be at least 1 gradient evaluation, got {value}")
    return value


@dataclass
class Options:
    """``llpf compare``'s options (see :func:`llpf.compare`).

    ``endpoints``: with ``pairs``, a folder holding ``seedS.safetensors`` for
    seeds 0 .. 2N-1 to use instead of training them.
    ``budget``: every method's schedule scaled to that many gradient
    evaluations, or "matched": to what LLPF took on the pair (it runs first).
    ``budgets``: the loss-budget frontier, every method at every budget (the
    line once). ``until_loss`` and ``until_max_rounds``: the ``llpf-until``
    method's Train_r rule. ``llpf_knots``: LLPF's points are saved often enough
    that its polygon has at least this many segments. ``align``: every method
    runs to the destination with its units reordered to match the start's.
    """

    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    pairs: int | None = None
    endpoints: str | None = None
    points: int = 41
    points_per_segment: int = 4
    train_samples: int = 0
    recompute_bn: bool | None = None
    budget: int | str | None = None
    budgets: list[int] | None = None
    until_loss: float = 0.01
    until_max_rounds: int = 20
    llpf_knots: int = 100
    align: bool = False

    def __post_init__(self):
        self.methods = parse_methods(self.methods)
        if self.budget is not None:
            self.budget = parse_budget(self.budget)
        if self.budgets is not None:
            given = self.budgets.split(",") if isinstance(self.budgets, str) else self.budgets
            parsed = [parse_budget(b.strip() if isinstance(b, str) else b) for b in given]
            if MATCHED in parsed:
                raise ConfigError("--budgets takes numbers of gradient evaluations; 'matched' goes with --budget")
            self.budgets = sorted(set(parsed))

    def check(self, start, dest, dry_run: bool = False, recipes: C.TrainConfig | None = None) -> None:
        """Every rule across options, before anything runs: a one-line ConfigError (a dry run needs no models).

        ``recipes`` (the config's ``[train]``) names the endpoint files ``--endpoints`` must hold.
        """
        if self.pairs is None and (start is None or dest is None) and not dry_run:
            raise ConfigError("compare needs --start and --dest, or --pairs N to train N pairs of endpoints")
        if self.pairs is not None and (start is not None or dest is not None):
            raise ConfigError("--pairs trains its own endpoints; give either --pairs or --start and --dest")
        if self.pairs is not None and self.pairs < 1:
            raise ConfigError(f"--pairs must be at least 1, got {self.pairs}")
        if self.endpoints is not None:
            if self.pairs is None:
                raise ConfigError("--endpoints gives the endpoints of --pairs N; with --start and --dest it is not used")
            recipes = recipes or C.TrainConfig()
            files = [recipes.endpoint_file(s, ("start", "dest")[s % 2]) for s in range(2 * self.pairs)]
            missing = [f for f in files if not (Path(self.endpoints) / f).is_file()]
            if missing:
                raise ConfigError(f"--endpoints {self.endpoints} lacks {', '.join(missing)}")
        for flag, value, least in (("--points", self.points, 2), ("--points-per-segment", self.points_per_segment, 0),
                                   ("--train-samples", self.train_samples, 0)):
            if value < least:
                raise ConfigError(f"{flag} must be at least {least}, got {value}")
        if self.budget is not None and self.budgets is not None:
            raise ConfigError("give --budget (one budget, or matched) or --budgets (the frontier), not both")
        if self.budgets is not None and not self.budgets:
            raise ConfigError("--budgets needs at least one budget")
        if self.budget == MATCHED and "llpf" not in self.methods:
            raise ConfigError("--budget matched gives every method LLPF's gradient evaluations: --methods must "
                              "include llpf")
        if not self.until_loss > 0 or self.until_max_rounds < 1 or self.llpf_knots < 1:
            raise ConfigError(f"--until-loss must be positive and --until-max-rounds, --llpf-knots at least 1 "
                              f"(got {self.until_loss}, {self.until_max_rounds}, {self.llpf_knots})")

    @property
    def slots(self) -> list[int | str | None]:
        """The budgets the methods run at: the configs' own (None), one budget, or the frontier's."""
        return list(self.budgets) if self.budgets is not None else [self.budget]

    @property
    def order(self) -> list[str]:
        """The methods in the order they run on a pair: with a matched budget, LLPF first."""
        if self.budget == MATCHED:
            return ["llpf"] + [m for m in self.methods if m != "llpf"]
        return list(self.methods)

    def units(self) -> list[tuple[int | str | None, str]]:
        """Every (budget slot, method) a pair runs, in order: the line once, at no budget (it costs nothing)."""
        line = [(None, "line")] if "line" in self.methods else []
        return line + [(slot, name) for slot in self.slots for name in self.order if name != "line"]

    def record(self) -> dict:
        """The options as compare.json records them."""
        return dataclasses.asdict(self)


DEFAULTS = Options().record()  # what an option absent from an older compare.json was
