"""``llpf compare``: every path method on the same pairs of models and the same data, evaluated the same way.

::

    DIR/compare.json                  the command that made it (re-running it continues), wall times
    DIR/endpoints/seedS.safetensors   with --pairs N: endpoints trained from seeds 0 .. 2N-1 (Table 3 recipe;
                                      the odd seeds with [train.dest] when the config has it, as seedS-dest),
                                      seedS.json their metrics and training time (or --endpoints FOLDER's)
    DIR/METHOD/                       one run directory per method (DIR/pair-XX/METHOD/ with --pairs;
                                      .../budget-B/METHOD/ with --budgets, the line once per pair)
    DIR/.../METHOD/profile.json       the dense evaluation of its path (llpf.comparison.profile)
    DIR/[pair-XX/]dest-aligned.safetensors, alignment.json
                                      with --align: the destination aligned to the start, and what that did
    DIR/comparison.csv                one row per method (and budget): the numbers; mean and spread over pairs
    DIR/comparison_pairs.csv          with --pairs: one row per pair and method
    DIR/comparison.json               both tables and the evaluation settings
    DIR/comparison.png                loss and accuracy profiles over path position; each method's maximum
    DIR/frontier.csv, frontier.png    with --budgets: maximum training loss against gradient evaluations
    DIR/ranks/rank-R.json             how each pair went on the rank that ran it (``llpf.shards``)

Methods: ``line`` (the ``[line]`` table), ``llpf`` (M2M with the config's
``[m2m]``), ``llpf-until`` (the same, Train_r until the batch loss is below a
bound), ``autoneb`` (``[autoneb]``), ``bezier`` and ``polychain`` (the
``[bezier]`` table as a Bezier curve or a polygonal chain). A missing baseline
table means its defaults. Pair k runs from the endpoint of seed 2k to that of
seed 2k+1, each method with its table's seed + k (as ``llpf reproduce`` does).
Running the same command again skips what is finished, resumes an interrupted
run from its checkpoint and rewrites the tables and the figure; a different
command on a non-empty DIR is refused. Under torchrun the pairs are dealt to
the ranks as ``llpf reproduce`` deals repetitions, and rank 0 writes the
tables; a pair that fails costs only itself, and is named in one line.

With ``align`` every method runs from the start to the destination with its
units reordered to match the start's (weight matching, ``llpf.alignment``),
aligned once per pair; comparison.json records each pair's alignment with the
straight line's barrier before and after.

Cost is counted in gradient evaluations (one forward and backward pass on one
batch): Train_r steps for LLPF, interior pivots per band step for AutoNEB, one
per step for a curve, none for the line. Each method runs at its config's
budget, at one budget for all (``budget``; "matched": LLPF's), or at several
(``budgets``, the loss-budget frontier); :mod:`llpf.comparison.budget` says how
each schedule is scaled. LLPF's points are saved densely enough that the
polygon through them is the path it walked (``llpf_knots`` segments). Wall
seconds are each run's own (including the evaluations it makes while running,
but not its profile).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

from .. import config as C
from .. import distributed as D
from .. import shards
from ..errors import RunDirError
from ..files import write_csv, write_json
from ..runtime import pick_device
from ..store import RunDir, gradient_steps
from .options import COMPARED, DEFAULT_METHODS, MATCHED, Options, parse_methods
from .profile import profile_run, read_path, stats
from .run import (CompareLedger, Evaluation, aligned_end, alignments, method_config, method_result, planned_tables,
                  run_method, with_tables)
from .table import PAIR_COLUMNS, comparison_figure, frontier_figure, frontier_rows, method_rows, table_columns

__all__ = ["COMPARED", "DEFAULT_METHODS", "Options", "compare", "parse_methods", "profile_run", "read_path", "stats"]


def compare(config: C.Config | str | Path, out: str | Path, *, start: str | Path | None = None,
            dest: str | Path | None = None, data_dir: str | None = None, device=None, progress: bool = False,
            log: Callable[[str], Any] = print, dry_run: bool = False, batch_size: int | None = None,
            **options) -> dict:
    """Run the methods on the pair ``start`` -> ``dest`` (or on ``pairs`` pairs) into ``out`` and compare.

    ``options`` are :class:`~llpf.comparison.options.Options`' fields: ``methods``,
    ``pairs``, ``endpoints``, ``points``, ``points_per_segment``,
    ``train_samples``, ``recompute_bn``, ``budget``, ``budgets``, ``until_loss``,
    ``until_max_rounds``, ``llpf_knots``, ``align``. Every path is evaluated at least
    ``points`` points along it (a polygon at least ``points_per_segment``
    inside each segment), on the training split (a fixed random
    ``train_samples`` of it; 0: all) and the test split, with BatchNorm
    statistics recomputed at every point when the model has BatchNorm
    (``recompute_bn`` None) or as ``recompute_bn`` says. Returns ``methods``
    (one row per method and budget), ``pairs`` (one row per pair, budget and
    method), ``frontier`` (with ``budgets``), ``files`` and, with ``align``,
    ``alignment`` (pair -> what alignment did). With ``dry_run``,
    checks every method end to end on random tensors (batches of
    ``batch_size``, default the tables') and returns the plan; nothing is
    trained or written.
    """
    opts = Options(**options)
    cfg = copy.deepcopy(config) if isinstance(config, C.Config) else C.load_config(config)
    opts.check(start, dest, dry_run, cfg.train)
    if data_dir:
        cfg.data.root = str(data_dir)
    cfg = with_tables(cfg, opts.methods)
    planned_tables(cfg, opts)  # every table at every budget checked before anything runs
    if dry_run:
        from .plan import plan

        return plan(cfg, opts, pick_device(device), batch_size, log)
    world = D.world_size()
    device = D.init(device) if world > 1 else pick_device(device)
    ends = None
    if opts.pairs is None:
        from ..runner import load_model

        ends = (Path(start), Path(dest))
        for end, what in zip(ends, ("start", "destination")):
            load_model(cfg, end, what)  # both must load before DIR is touched
    if opts.endpoints is not None:
        opts.endpoints = str(Path(opts.endpoints).resolve())
    out = Path(out)
    command = {"config": C.to_dict(cfg), **opts.record(),
               **({"start": str(ends[0].resolve()), "dest": str(ends[1].resolve())} if ends else {})}
    ledger = D.on_main(lambda: CompareLedger(out, command))
    D.on_main(lambda: ledger.set("device", str(device)))
    return _run(cfg, opts, out, ledger, ends, device, progress, log)


class Layout:
    """Where each run of a comparison lives: DIR[/pair-XX][/budget-B]/METHOD (the line outside the budgets)."""

    def __init__(self, out: Path, opts: Options, single_pair: bool):
        self.out, self.opts, self.single = out, opts, single_pair

    def run(self, k: int, slot, name: str) -> Path:
        base = self.out if self.single else self.out / f"pair-{k:02d}"
        if self.opts.budgets is not None and name != "line":
            base = base / f"budget-{slot}"
        return base / name


def _run(cfg, opts: Options, out: Path, ledger: CompareLedger, ends, device, progress, log) -> dict:
    """Each rank runs its share of the pairs (all of them in one process); rank 0 writes the tables.

    Pairs are dealt to torchrun's ranks as ``llpf reproduce`` deals repetitions
    (:mod:`llpf.shards`); the other ranks return ``{}``.
    """
    from ..data import prepare_data
    from ..reproduce import Experiment

    world, rank, count = D.world_size(), D.rank(), opts.pairs or 1
    run_id = D.shared_run_id()
    D.cleanup()  # the ranks work apart from here: a pair may outlast any collective's timeout
    say = log if world == 1 else (lambda line: log(f"rank {rank}: {line}"))
    data = prepare_data(cfg, device)
    ev = Evaluation(cfg, data, opts.train_samples, opts.recompute_bn, device)
    exp = Experiment(cfg, "m2m", out, device, progress, say, cache={"data": data})
    layout = Layout(out, opts, ends is not None)
    known: dict[tuple, dict] = {}  # the results this rank computed; the others' are read from disk

    def result(k: int, slot, name: str, summary: dict) -> dict:
        run = layout.run(k, slot, name)
        return {"pair": k, **method_result(name, slot, run, summary, ev, ledger, opts, progress)}

    def results(upto: int) -> list[dict]:
        """The finished runs of pairs below ``upto``, profiled (each profile is kept in its run directory)."""
        return [known.get((k, slot, name)) or result(k, slot, name, RunDir(run).summary())
                for k in range(upto) for slot, name in opts.units()
                if (run := layout.run(k, slot, name)).joinpath("summary.json").is_file()]

    def endpoint(seed: int, end: str = "start") -> Path:
        return Path(opts.endpoints) / cfg.train.endpoint_file(seed, end) if opts.endpoints else exp.endpoint(seed, end)

    def run_pair(k: int) -> None:
        a, b = ends if ends else (endpoint(2 * k), endpoint(2 * k + 1, "dest"))
        if opts.align:
            b = aligned_end(cfg, a, b, out if ends else out / f"pair-{k:02d}", data, device, say)
        for slot, name in opts.units():
            budget = _budget(slot, name, layout.run(k, slot, "llpf"))
            summary = run_method(name, method_config(cfg, name, k, budget, opts), a, b, layout.run(k, slot, name),
                                 ledger, device, progress, data, say)
            known[(k, slot, name)] = result(k, slot, name, summary)
        if world == 1:  # one process: the tables so far are readable while the next pair runs
            write_results(out, cfg, opts, results(k + 1), ev)

    shards.run_shard(out, count, world, rank, run_id, run_pair, lambda k: False, say, noun="pair")
    if rank != 0:
        return {}
    tally = shards.wait_for_ranks(out, count, world, run_id)
    done = results(count)
    files = write_results(out, cfg, opts, done, ev)
    _check_finished(tally, count)
    out_rows = {"methods": method_rows(done, opts, count),
                "pairs": [{k: v for k, v in r.items() if k != "profile"} for r in done],
                "files": files, "settings": settings(cfg, opts, done, ev), **alignments(out, opts.pairs)}
    if opts.budgets is not None:
        out_rows["frontier"] = frontier_rows(done, opts)
    return out_rows


def _check_finished(tally, count: int) -> None:
    """One error naming every pair that did not finish, after the tables of those that did are written."""
    if tally.failed or tally.missing:
        raise RunDirError(f"{len(tally.failed) + len(tally.missing)} of {count} pair(s) did not finish: "
                          + "; ".join(f"pair {k} ({tally.reasons.get(k, tally.statuses[k])})"
                                      for k in tally.failed + tally.missing)
                          + "; run the same command again to complete them")


def _budget(slot, name: str, llpf_run: Path) -> int | None:
    """The gradient evaluations method ``name`` gets at budget ``slot``: the config's (None), the number asked, or
    with "matched" what LLPF took on this pair (it ran first; LLPF itself runs its config)."""
    if slot != MATCHED:
        return slot
    if COMPARED[name] == "m2m":
        return None
    rd = RunDir(llpf_run)
    if rd.info().get("status") != "complete":
        raise RunDirError(f"LLPF did not complete on this pair ({rd.info().get('reason') or rd.info().get('status')})"
                          f", and --budget matched gives the others its gradient evaluations")
    return gradient_steps(llpf_run)


def settings(cfg: C.Config, opts: Options, results: list[dict], ev: Evaluation) -> dict:
    """How the paths were evaluated and budgeted, for the reader of the tables."""
    return {"config": cfg.name, "methods": list(opts.methods), "pairs": len({r["pair"] for r in results}),
            "budget": opts.budget, "budgets": opts.budgets, "llpf_knots": opts.llpf_knots,
            "until_loss": opts.until_loss, "until_max_rounds": opts.until_max_rounds,
            "batchnorm": ev.batchnorm, "train_samples": len(ev.train), "test_samples": len(ev.data.test)}


def write_results(out: Path, cfg: C.Config, opts: Options, results: list[dict], ev: Evaluation) -> dict[str, Path]:
    """comparison.csv, comparison_pairs.csv (with pairs), comparison.json and comparison.png from ``results``;
    frontier.csv and frontier.png with budgets."""
    rows = method_rows(results, opts, opts.pairs or 1)
    files = {"csv": write_csv(out / "comparison.csv", rows, table_columns(rows))}
    flat = [{k: v for k, v in r.items() if k != "profile"} for r in results]
    if opts.pairs is not None:
        files["pairs_csv"] = write_csv(out / "comparison_pairs.csv", flat, PAIR_COLUMNS)
    st = settings(cfg, opts, results, ev)
    report = {"settings": st, "methods": rows, "pairs": flat, **alignments(out, opts.pairs)}
    title = (f"{cfg.name}: {st['pairs']} pair(s)\ntraining loss on {st['train_samples']} samples, test on "
             f"{st['test_samples']}; {st['batchnorm']}")
    shown = results
    if opts.budgets is not None:
        frontier = frontier_rows(results, opts)
        report["frontier"] = frontier
        files["frontier_csv"] = write_csv(out / "frontier.csv", frontier, list(frontier[0]) if frontier else ["method"])
        files["frontier"] = frontier_figure(frontier, opts, out / "frontier.png", title)
        top = opts.budgets[-1]  # the profiles at the largest budget (and the line)
        shown = [r for r in results if r["budget"] in (top, "config")]
        title += f"; at {top} gradient evaluations"
    write_json(out / "comparison.json", report)
    files["json"] = out / "comparison.json"
    files["figure"] = comparison_figure(shown, opts.methods, out / "comparison.png", title)
    return files
