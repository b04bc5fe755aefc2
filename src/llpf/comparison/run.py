"""Running every method of a comparison on every pair, and continuing a comparison that was interrupted."""
from __future__ import annotations

import copy
import dataclasses
import fcntl
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch.nn.functional as F

from .. import config as C
from ..analysis.barriers import PointEvaluator
from ..data import Bundle, Split
from ..errors import ConfigError, DataError, RunDirError
from ..files import check_creatable, load_weights, save_weights, write_json
from ..flat import layout_of
from ..models import build_model
from ..store import RunDir, gradient_steps
from ..train import DEFAULT_METRICS
from . import budget as B
from .options import COMPARED, DEFAULTS, MATCHED, Options, budget_label
from .profile import profile_run

def with_tables(cfg: C.Config, names: Sequence[str]) -> C.Config:
    """``cfg`` with every table the methods need: the baselines' defaults where a table is missing."""
    cfg = copy.deepcopy(cfg)
    for name in names:
        kind = COMPARED[name]
        if getattr(cfg, kind) is None:
            if kind == "m2m":
                raise ConfigError(f"{name} runs M2M with the config's [m2m] table, which {cfg.name!r} does not have")
            setattr(cfg, kind, C.BASELINE_TABLES[kind]())
    return cfg


def method_table(cfg: C.Config, name: str, pair: int, budget: int | None, opts: Options):
    """The table method ``name`` runs under on pair ``pair``, at ``budget`` gradient evaluations (None: as the
    config sets it), with seed + pair (as ``reproduce`` does).

    LLPF's points are saved densely (``opts.llpf_knots``); ``llpf-until`` is the
    [m2m] table training until the batch loss is below ``opts.until_loss``,
    over the iterations LLPF runs at that budget.
    """
    kind = COMPARED[name]
    table = copy.deepcopy(getattr(cfg, kind))
    if budget is not None:
        table = B.scaled(kind, table, budget)
    if name == "llpf-until":
        table = B.until(table, opts.until_loss, opts.until_max_rounds)
    if kind == "m2m":
        table = B.dense(table, opts.llpf_knots)
    if kind == "bezier":
        table.kind = name  # "bezier" or "polychain"
    table.seed += pair
    return table


def planned_tables(cfg: C.Config, opts: Options) -> list[tuple]:
    """``(slot, name, budget, table)`` of every method at every budget on the first pair, each table checked as
    a TOML one is (a one-line ConfigError naming the method and budget). A matched budget is LLPF's planned
    cost here (nominal when its Train_r trains until a loss): the run measures it."""
    out = []
    for slot, name in opts.units():
        kind = COMPARED[name]
        budget = slot
        if slot == MATCHED:
            budget = None if kind == "m2m" else B.path_evaluations(cfg.m2m)[0]
        table = method_table(cfg, name, 0, budget, opts)
        C.method_config(type(table), table, f"{name} at budget {budget_label(slot)}: {kind}.")
        out.append((slot, name, budget, table))
    return out


def method_config(cfg: C.Config, name: str, pair: int, budget: int | None, opts: Options) -> C.Config:
    """``cfg`` with method ``name``'s table as it runs (:func:`method_table`)."""
    return dataclasses.replace(cfg, **{COMPARED[name]: method_table(cfg, name, pair, budget, opts)})


class CompareLedger:
    """DIR/compare.json: the command that made the comparison (re-running it continues), and the wall times."""

    def __init__(self, out: Path, command: dict):
        self.file = out / "compare.json"
        command = json.loads(json.dumps(command))  # as it reads back
        if out.exists() and not out.is_dir():
            raise RunDirError(f"{out} exists and is not a directory")
        if out.is_dir() and any(out.iterdir()):
            if not self.file.is_file():
                raise RunDirError(f"{out} is not empty and holds no comparison; choose another --out")
            old = json.loads(self.file.read_text())
            before = old.get("command", {})  # an option it does not name had its default then
            differ = sorted(k for k in set(command) | set(before) if before.get(k, DEFAULTS.get(k)) != command.get(k))
            if differ:
                raise RunDirError(f"{out} holds a comparison made by another command (it differs in "
                                  f"{', '.join(differ)}); re-run that command to continue it, or choose another --out")
            self.data = old
        else:
            self.data = {"command": command, "runs": {}}
            check_creatable(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(self.file, self.data)

    def update(self, change: Callable[[dict], Any]) -> None:
        """Apply ``change`` to compare.json as it is on disk, under a lock: the ranks of a launch share the file."""
        with open(self.file.with_name(".compare.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            self.data = json.loads(self.file.read_text())
            change(self.data)
            write_json(self.file, self.data)

    def set(self, key: str, value: Any) -> None:
        self.update(lambda data: data.__setitem__(key, value))

    def add_time(self, key: str, seconds: float) -> None:
        """Add ``seconds`` to run ``key``'s wall time (a resumed run adds each session's)."""
        def add(data: dict) -> None:
            entry = data["runs"].setdefault(key, {})
            entry["wall_s"] = entry.get("wall_s", 0.0) + seconds
        self.update(add)

    def wall_s(self, key: str) -> float | None:
        """Run ``key``'s wall time so far, whichever rank ran it."""
        return json.loads(self.file.read_text())["runs"].get(key, {}).get("wall_s")


@dataclass
class Evaluation:
    """How every path is evaluated: one model, the same splits, the same BatchNorm rule, ``at(state) -> row``."""

    cfg: C.Config
    data: Bundle
    train_samples: int
    recompute_bn: bool | None
    device: Any

    def __post_init__(self):
        if not isinstance(self.data.train, Split):
            raise DataError("compare evaluates the training loss along every path and needs a dataset held as "
                            "tensors (not a loader)")
        model = build_model(self.cfg.model)
        self.names = layout_of(model).names
        self.points = PointEvaluator(model, {"train": self.data.train, "test": self.data.test}, F.cross_entropy,
                                     self.recompute_bn, DEFAULT_METRICS, self.cfg.data.eval_batch_size, self.device,
                                     train_samples=self.train_samples)
        self.train = self.points.splits["train"]

    def at(self, state: dict) -> dict:
        return self.points.at(state)

    @property
    def batchnorm(self) -> str:
        return self.points.batchnorm


def run_method(name: str, cfg: C.Config, a: Path, b: Path, run: Path, ledger: CompareLedger, device,
               progress: bool, data: Bundle, log: Callable[[str], Any]) -> dict:
    """Run (or resume, or skip when finished) one method into ``run``; its summary."""
    from ..runner import resume, run_path

    rd = RunDir(run)
    status = rd.info().get("status")
    if status in ("complete", "failed") and (run / "summary.json").is_file():
        return rd.summary()
    key = str(run.relative_to(ledger.file.parent))
    t0 = time.perf_counter()
    if rd.exists:
        log(f"{key}: resuming the interrupted run")
        summary = resume(run, device=device, progress=progress, data=data)
    else:
        if run.exists():  # a folder left without a run by a kill before the run began
            for p in sorted(run.rglob("*"), reverse=True):
                p.rmdir() if p.is_dir() else p.unlink()
        log(f"{key}: {name} ({COMPARED[name]}) from {a.name} to {b.name}")
        summary = run_path(COMPARED[name], cfg, a, b, run, device=device, progress=progress, data=data)
    ledger.add_time(key, time.perf_counter() - t0)
    if not summary:
        raise KeyboardInterrupt
    return summary


def aligned_end(cfg: C.Config, a: Path, b: Path, folder: Path, data: Bundle, device,
                log: Callable[[str], Any]) -> Path:
    """The pair's destination aligned to its start, once: ``folder/dest-aligned.safetensors`` and what alignment
    did in ``folder/alignment.json`` (written last, so its presence means both are whole)."""
    from ..runner import align_dest

    f, record_file = folder / "dest-aligned.safetensors", folder / "alignment.json"
    if record_file.is_file():
        return f
    log(f"aligning {b.name} to {a.name}")
    (state, _), record = align_dest(cfg, (load_weights(a), a), (load_weights(b), b), data, device)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(f, state, {"config": cfg.name, "aligned_to": str(a), "source": str(b)})
    write_json(record_file, record)
    return f


def alignments(out: Path, pairs: int | None) -> dict:
    """``{"alignment": {pair: record}}`` for the pairs whose destination was aligned; ``{}`` when none was."""
    folders = {0: out} if pairs is None else {k: out / f"pair-{k:02d}" for k in range(pairs)}
    found = {k: json.loads((f / "alignment.json").read_text()) for k, f in folders.items()
             if (f / "alignment.json").is_file()}
    return {"alignment": found} if found else {}


def method_result(name: str, slot, run: Path, summary: dict, ev: Evaluation, ledger: CompareLedger,
                  opts: Options, progress: bool) -> dict:
    """One method's numbers on one pair at one budget ``slot``: its path profiled (once; kept in
    RUN/profile.json), the budget it was given, what it spent, and its time.

    ``walked_max_train_loss`` (LLPF only) is the largest training-split loss at
    the points LLPF evaluated itself on its way (every ``eval_every``
    iterations); ``max_train_loss`` is the largest along the path as compare
    evaluates every path (its polygon, densely).
    """
    key = str(run.relative_to(ledger.file.parent))
    kind = COMPARED[name]
    row = {"method": name, "budget": budget_label(slot), "run": key, "status": summary.get("status"),
           "wall_seconds": ledger.wall_s(key)}
    if summary.get("status") != "complete":
        return {**row, "reason": summary.get("reason")}
    f = run / "profile.json"
    if f.is_file():
        profile = json.loads(f.read_text())
    else:
        t0 = time.perf_counter()
        profile = profile_run(run, ev.at, ev.names, opts.points, opts.points_per_segment, ev.device, progress)
        profile.update(batchnorm=ev.batchnorm, train_samples=len(ev.train), eval_seconds=time.perf_counter() - t0)
        write_json(f, profile)
    table = getattr(C.load_config(run / "config.toml"), kind)
    return {**row, **profile["stats"], "walked_max_train_loss": summary.get("max_train_loss") if kind == "m2m" else None,
            "planned_gradient_steps": B.planned_evaluations(kind, table), "gradient_steps": gradient_steps(run),
            "profile": profile["rows"]}
