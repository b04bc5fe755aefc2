"""``llpf compare``: every path method on the same pairs of models and the same data, evaluated the same way.

::

    DIR/compare.json                  the command that made it (re-running it continues), wall times
    DIR/endpoints/seedS.safetensors   with --pairs N: endpoints trained from seeds 0 .. 2N-1 (Table 3 recipe;
                                      the odd seeds with [train.dest] when the config has it, as seedS-dest),
                                      seedS.json their metrics and training time
    DIR/METHOD/                       one run directory per method (DIR/pair-XX/METHOD/ with --pairs)
    DIR/.../METHOD/profile.json       the dense evaluation of its path (llpf.comparison.profile)
    DIR/[pair-XX/]dest-aligned.safetensors, alignment.json
                                      with --align: the destination aligned to the start, and what that did
    DIR/comparison.csv                one row per method: the numbers; mean and spread over pairs
    DIR/comparison_pairs.csv          with --pairs: one row per pair and method
    DIR/comparison.json               both tables and the evaluation settings
    DIR/comparison.png                loss and accuracy profiles over path position; each method's maximum
    DIR/ranks/rank-R.json             how each pair went on the rank that ran it (``llpf.shards``)

Methods: ``line`` (the ``[line]`` table), ``llpf`` (M2M with the config's
``[m2m]``), ``autoneb`` (``[autoneb]``), ``bezier`` and ``polychain`` (the
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
per step for a curve, none for the line. Wall seconds are each run's own
(including the evaluations it makes while running, but not its profile).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import config as C
from .. import distributed as D
from .. import shards
from ..errors import ConfigError, RunDirError
from ..files import write_csv, write_json
from ..runtime import pick_device
from ..store import RunDir
from .profile import profile_run, read_path, stats
from .run import (COMPARED, DEFAULT_METHODS, CompareLedger, Evaluation, aligned_end, alignments, method_config,
                  method_result, parse_methods, run_method, with_tables)
from .table import PAIR_COLUMNS, comparison_figure, method_rows, table_columns

__all__ = ["COMPARED", "DEFAULT_METHODS", "compare", "parse_methods", "profile_run", "read_path", "stats"]


def _check_settings(start, dest, pairs: int | None, points: int, points_per_segment: int, train_samples: int) -> None:
    if pairs is None and (start is None or dest is None):
        raise ConfigError("compare needs --start and --dest, or --pairs N to train N pairs of endpoints")
    if pairs is not None and (start is not None or dest is not None):
        raise ConfigError("--pairs trains its own endpoints; give either --pairs or --start and --dest")
    if pairs is not None and pairs < 1:
        raise ConfigError(f"--pairs must be at least 1, got {pairs}")
    for flag, value, least in (("--points", points, 2), ("--points-per-segment", points_per_segment, 0),
                               ("--train-samples", train_samples, 0)):
        if value < least:
            raise ConfigError(f"{flag} must be at least {least}, got {value}")


def compare(config: C.Config | str | Path, out: str | Path, *, start: str | Path | None = None,
            dest: str | Path | None = None, pairs: int | None = None, methods: str | Sequence[str] = DEFAULT_METHODS,
            points: int = 41, points_per_segment: int = 4, train_samples: int = 0, recompute_bn: bool | None = None,
            data_dir: str | None = None, device=None, progress: bool = False,
            log: Callable[[str], Any] = print, align: bool = False) -> dict:
    """Run ``methods`` on the pair ``start`` -> ``dest`` (or on ``pairs`` trained pairs) into ``out`` and compare.

    Every path is evaluated at least ``points`` points along it (a polygon at
    least ``points_per_segment`` inside each segment), on the training split (a
    fixed random ``train_samples`` of it; 0: all) and the test split, with
    BatchNorm statistics recomputed at every point when the model has BatchNorm
    (``recompute_bn`` None) or as ``recompute_bn`` says; ``align``: to each
    destination aligned to its start. Returns ``methods`` (one row per method),
    ``pairs`` (one row per pair and method), ``files`` and, with ``align``,
    ``alignment`` (pair -> what alignment did).
    """
    names = parse_methods(methods)
    _check_settings(start, dest, pairs, points, points_per_segment, train_samples)
    cfg = copy.deepcopy(config) if isinstance(config, C.Config) else C.load_config(config)
    if data_dir:
        cfg.data.root = str(data_dir)
    cfg = with_tables(cfg, names)
    world = D.world_size()
    device = D.init(device) if world > 1 else pick_device(device)
    ends = None
    if pairs is None:
        from ..runner import load_model

        ends = (Path(start), Path(dest))
        for end, what in zip(ends, ("start", "destination")):
            load_model(cfg, end, what)  # both must load before DIR is touched
    out = Path(out)
    command = {"config": C.to_dict(cfg), "methods": names, "pairs": pairs, "points": points,
               "points_per_segment": points_per_segment, "train_samples": train_samples, "recompute_bn": recompute_bn,
               **({"start": str(ends[0].resolve()), "dest": str(ends[1].resolve())} if ends else {}),
               **({"align": True} if align else {})}
    ledger = D.on_main(lambda: CompareLedger(out, command))
    D.on_main(lambda: ledger.set("device", str(device)))
    return _run(cfg, names, out, ledger, ends, pairs, points, points_per_segment, train_samples, recompute_bn,
                device, progress, log, align)


def _run(cfg, names, out: Path, ledger: CompareLedger, ends, pairs, points, points_per_segment, train_samples,
         recompute_bn, device, progress, log, align: bool = False) -> dict:
    """Each rank runs its share of the pairs (all of them in one process); rank 0 writes the tables.

    Pairs are dealt to torchrun's ranks as ``llpf reproduce`` deals repetitions
    (:mod:`llpf.shards`); the other ranks return ``{}``.
    """
    from ..data import prepare_data
    from ..reproduce import Experiment

    world, rank, count = D.world_size(), D.rank(), pairs or 1
    run_id = D.shared_run_id()
    D.cleanup()  # the ranks work apart from here: a pair may outlast any collective's timeout
    say = log if world == 1 else (lambda line: log(f"rank {rank}: {line}"))
    data = prepare_data(cfg, device)
    ev = Evaluation(cfg, data, train_samples, recompute_bn, device)
    exp = Experiment(cfg, "m2m", out, device, progress, say, cache={"data": data})
    run_of = lambda k, name: out / name if ends else out / f"pair-{k:02d}" / name  # noqa: E731

    known: dict[tuple[int, str], dict] = {}  # the results this rank computed; the others' are read from disk

    def result(k: int, name: str, summary: dict) -> dict:
        return {"pair": k, **method_result(name, run_of(k, name), summary, ev, ledger, points, points_per_segment,
                                           progress)}

    def results(upto: int) -> list[dict]:
        """The finished runs of pairs below ``upto``, profiled (each profile is kept in its run directory)."""
        return [known.get((k, name)) or result(k, name, RunDir(run).summary())
                for k in range(upto) for name in names
                if (run := run_of(k, name)).joinpath("summary.json").is_file()]

    def run_pair(k: int) -> None:
        a, b = ends if ends else (exp.endpoint(2 * k), exp.endpoint(2 * k + 1, "dest"))
        if align:
            b = aligned_end(cfg, a, b, out if ends else out / f"pair-{k:02d}", data, device, say)
        for name in names:
            summary = run_method(name, method_config(cfg, name, k), a, b, run_of(k, name), ledger, device, progress,
                                 data, say)
            known[(k, name)] = result(k, name, summary)
        if world == 1:  # one process: the tables so far are readable while the next pair runs
            write_results(out, cfg, names, results(k + 1), pairs, ev)

    shards.run_shard(out, count, world, rank, run_id, run_pair, lambda k: False, say, noun="pair")
    if rank != 0:
        return {}
    tally = shards.wait_for_ranks(out, count, world, run_id)
    done = results(count)
    files = write_results(out, cfg, names, done, pairs, ev)
    if tally.failed or tally.missing:
        raise RunDirError(f"{len(tally.failed) + len(tally.missing)} of {count} pair(s) did not finish: "
                          + "; ".join(f"pair {k} ({tally.reasons.get(k, tally.statuses[k])})"
                                      for k in tally.failed + tally.missing)
                          + "; run the same command again to complete them")
    rows = method_rows(done, names, count)
    return {"methods": rows, "pairs": [{k: v for k, v in r.items() if k != "profile"} for r in done],
            "files": files, "settings": settings(cfg, names, done, ev), **alignments(out, pairs)}


def settings(cfg: C.Config, names: Sequence[str], results: list[dict], ev: Evaluation) -> dict:
    """How the paths were evaluated, for the reader of the tables."""
    return {"config": cfg.name, "methods": list(names), "pairs": len({r["pair"] for r in results}),
            "batchnorm": ev.batchnorm, "train_samples": len(ev.train), "test_samples": len(ev.data.test)}


def write_results(out: Path, cfg: C.Config, names: Sequence[str], results: list[dict], pairs: int | None,
                  ev: Evaluation) -> dict[str, Path]:
    """comparison.csv, comparison_pairs.csv (with pairs), comparison.json and comparison.png from ``results``."""
    rows = method_rows(results, names, pairs or 1)
    files = {"csv": write_csv(out / "comparison.csv", rows, table_columns(rows))}
    flat = [{k: v for k, v in r.items() if k != "profile"} for r in results]
    if pairs is not None:
        files["pairs_csv"] = write_csv(out / "comparison_pairs.csv", flat, PAIR_COLUMNS)
    st = settings(cfg, names, results, ev)
    write_json(out / "comparison.json", {"settings": st, "methods": rows, "pairs": flat, **alignments(out, pairs)})
    files["json"] = out / "comparison.json"
    title = (f"{cfg.name}: {st['pairs']} pair(s)\ntraining loss on {st['train_samples']} samples, test on "
             f"{st['test_samples']}; {st['batchnorm']}")
    files["figure"] = comparison_figure(results, names, out / "comparison.png", title)
    return files

