"""``llpf reproduce`` (the paper's experiments), ``llpf m2o-baselines`` (M2O against fair baselines) and ``llpf bench``."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import at_least, device_arg, fast_args, fast_overrides, force_arg, number, quiet_arg, require


def add(sub) -> None:
    _reproduce(sub)
    _m2o_baselines(sub)
    p = sub.add_parser("bench", help="what llpf costs beyond its training steps, as ratios measured side by side")
    p.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when present)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the figures to FILE")
    p.add_argument("--threads", type=at_least(1), default=1, help="CPU threads (default 1)")
    p.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(handler=bench)


def _reproduce(sub) -> None:
    p = sub.add_parser("reproduce", help="run one of the paper's experiments with repetitions, aggregate figure and table")
    p.add_argument("name", nargs="?", help="experiment name (see --list) or a TOML file")
    p.add_argument("--list", action="store_true", help="list the paper's experiments")
    p.add_argument("--reps", type=at_least(1), default=1,
                   help="repetitions (default 1); under torchrun dealt to the ranks")
    p.add_argument("--method", choices=("m2m", "m2o"), default=None,
                   help="the path method, for a config that has both tables (such as demo)")
    p.add_argument("--out", default=None, help="output directory; re-running the same command continues it")
    p.add_argument("--data-dir", default=None, help="dataset folder (sets data.root)")
    p.add_argument("--start", "--start-model", dest="start", default=None,
                   help="start model weights instead of training endpoints (--start-model under torchrun)")
    p.add_argument("--dest", "--dest-model", dest="dest", default=None,
                   help="M2M: destination model weights instead of training")
    p.add_argument("--dry-run", action="store_true",
                   help="check the config on random tensors, time two iterations, print the plan; train nothing")
    p.add_argument("--dry-run-batch", type=at_least(1), default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch-paths", type=at_least(1), default=None, metavar="N",
                   help="repetitions that run together as one batched computation, each in its own run directory "
                        "(default: all --reps on CUDA when the experiment allows it; 1 on CPU, where vmap runs at "
                        "0.5-0.8x the speed of the same steps one by one); 1 turns batching off")
    device_arg(p)
    fast_args(p)
    quiet_arg(p)
    p.set_defaults(handler=reproduce, check_args=_check_reproduce)


def _check_reproduce(args) -> None:
    require(args.list or args.name, "name an experiment (llpf reproduce --list shows them)")
    require(args.list or args.dry_run or args.out,
            "--out is required (the directory that holds the endpoints, repetitions and aggregate)")


def _m2o_baselines(sub) -> None:
    p = sub.add_parser("m2o-baselines", help="M2O beside move-only and fine-tuning with weight decay, "
                                             "same start and gradient steps, best point on validation; "
                                             "under torchrun the runs are dealt to the ranks")
    p.add_argument("config", help="TOML file or shipped config name (with an [m2o] table)")
    p.add_argument("--start", "--start-model", required=True, help="start model weights (--start-model under torchrun)")
    p.add_argument("--out", required=True, help="folder for the runs, m2o-baselines.csv/.json/.png")
    p.add_argument("--decays", type=number(0), nargs="+", default=None,
                   help="fine-tuning weight decays (default: 0 and 1, 1/4, 4 x the decay that shrinks as Move does)")
    p.add_argument("--decay-all", action="store_true",
                   help="decay every parameter while fine-tuning (default: only those M2O moves, as the matched "
                        "decay assumes: normalisation layers are not decayed)")
    p.add_argument("--validation-fraction", type=number(0, 1, open_low=True), default=0.1,
                   help="share of the training set held out for choosing points, when the config sets none "
                        "(default 0.1; the start model should not have trained on it)")
    force_arg(p, "use a non-empty --out: its finished runs of the same settings are kept, an interrupted one resumed")
    device_arg(p)
    quiet_arg(p)
    p.set_defaults(handler=m2o_baselines)


def reproduce(args) -> int:
    from ..config import load_config
    from ..reproduce import dry_run, experiments, reproduce

    if args.list:
        for name in experiments():
            print(f"{name:28s} {load_config(name).description}")
        return 0
    if args.dry_run:  # checks what the real run checks, then times two iterations
        dry_run(args.name, data_dir=args.data_dir, device=args.device, batch_size=args.dry_run_batch,
                method=args.method, reps=args.reps, start=args.start, dest=args.dest, batch_paths=args.batch_paths,
                fast=fast_overrides(args))
        return 0
    result = reproduce(args.name, args.reps, args.out, data_dir=args.data_dir, device=args.device,
                       start=args.start, dest=args.dest, progress=not args.quiet, method=args.method,
                       batch_paths=args.batch_paths, fast=fast_overrides(args))
    if not result:  # a rank other than 0: its share is done, rank 0 reports
        return 0
    print(Path(args.out, "summary.md").read_text(), end="")
    if (Path(args.out) / "figure.png").is_file():
        print(f"figure: {Path(args.out, 'figure.png')}")
    return 0 if result["aggregate"]["repetitions"] and not result["unfinished"] else 1


def m2o_baselines(args) -> int:
    from ..baselines.m2o_baselines import COLUMNS, m2o_baselines
    from ..config import load_config

    r = m2o_baselines(load_config(args.config), args.start, args.out, decays=args.decays,
                      decay_on="all" if args.decay_all else "moved", validation_fraction=args.validation_fraction,
                      device=args.device, force=args.force, progress=not args.quiet)
    if not r:  # a rank other than 0 under torchrun: rank 0 prints the table
        return 0
    fmt = lambda v: "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    shown = [c for c in COLUMNS if c not in ("status", "iterations")]
    print("  ".join(shown))
    for row in r["rows"]:
        print("  ".join(fmt(row[c]) for c in shown))
    print(f"best on validation ({r['select_by']}): {r['chosen_on_validation']}; "
          f"wrote {Path(args.out) / 'm2o-baselines.csv'}")
    return 0


def bench(args) -> int:
    from ..bench import bench
    from ..files import check_creatable, write_json
    from ..runtime import pick_device

    pick_device(args.device)
    if args.json:
        require(not Path(args.json).is_dir(), f"--json {args.json} is a folder; name a file")
        check_creatable(args.json)
    result = bench(args.device, threads=args.threads, quick=args.quick)
    if args.json:
        write_json(Path(args.json), result)
        print(f"wrote {args.json}")
    return 0
