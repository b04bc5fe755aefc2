"""``llpf compare``: LLPF beside the straight line, AutoNEB and Bezier curves on the same pairs."""
from __future__ import annotations

import argparse
import sys

from .common import at_least, config_arg, device_arg, quiet_arg, recompute, recompute_bn_arg


def add(sub) -> None:
    p = sub.add_parser("compare", help="LLPF beside the straight line, AutoNEB and Bezier curves on the same pairs, "
                                       "at the configs' budgets, one budget, or several (the loss-budget frontier); "
                                       "under torchrun the pairs are dealt to the ranks")
    config_arg(p, "TOML file or shipped config name (model, data, [m2m] and the baselines' tables)")
    p.add_argument("--start", "--start-model", default=None,
                   help="start model weights (with --dest; --start-model under torchrun)")
    p.add_argument("--dest", "--dest-model", default=None, help="destination model weights")
    p.add_argument("--pairs", type=at_least(1), default=None,
                   help="instead: N pairs of endpoints from seeds 0..2N-1, trained unless --endpoints holds them")
    p.add_argument("--endpoints", default=None, help="with --pairs: a folder of seedS.safetensors to use "
                                                       "(seedS-dest for the destinations of a config with [train.dest])")
    p.add_argument("--methods", default="line,llpf,autoneb,bezier",
                   help="comma-separated: line, llpf, llpf-until, autoneb, bezier, polychain "
                        "(default line,llpf,autoneb,bezier)")
    p.add_argument("--budget", default=None,
                   help="every method's schedule scaled to this many gradient evaluations, or 'matched': to what "
                        "llpf takes on each pair (default: each config table's own)")
    p.add_argument("--budgets", default=None,
                   help="comma-separated budgets (e.g. 500,2000,8000): every method at each, and frontier.csv/.png")
    p.add_argument("--until-loss", type=float, default=0.01,
                   help="llpf-until: Train_r until the batch loss is below this (default 0.01)")
    p.add_argument("--until-max-rounds", type=at_least(1), default=20,
                   help="llpf-until: at most this many Train_r steps per iteration (default 20)")
    p.add_argument("--llpf-knots", type=at_least(1), default=100,
                   help="save LLPF's points so that its polygon has at least this many segments (default 100)")
    p.add_argument("--out", default=None, help="output directory; re-running the same command continues it")
    p.add_argument("--points", type=at_least(2), default=41,
                   help="points evaluated along every path, at least (default 41)")
    p.add_argument("--points-per-segment", type=at_least(0), default=4,
                   help="interior points on each straight segment of a polygonal path, at least (default 4)")
    p.add_argument("--train-samples", type=at_least(0), default=0,
                   help="evaluate the training loss on this many fixed random training samples (default 0: all)")
    recompute_bn_arg(p)
    p.add_argument("--align", action="store_true",
                   help="reorder each destination's hidden units to match its start's first (weight matching, "
                        "llpf align); comparison.json records the straight line's barrier before and after")
    p.add_argument("--data-dir", default=None, help="dataset folder (sets data.root)")
    p.add_argument("--dry-run", action="store_true",
                   help="check every method's table end to end on random tensors and print the plan; no --out")
    p.add_argument("--dry-run-batch", type=at_least(1), default=None, help=argparse.SUPPRESS)
    device_arg(p)
    quiet_arg(p)
    p.set_defaults(handler=compare)


def options(args) -> dict:
    """The command line's :class:`llpf.comparison.options.Options`, field by field."""
    return dict(methods=args.methods, pairs=args.pairs, endpoints=args.endpoints, points=args.points,
                points_per_segment=args.points_per_segment, train_samples=args.train_samples,
                recompute_bn=recompute(args.recompute_bn), budget=args.budget, budgets=args.budgets,
                until_loss=args.until_loss, until_max_rounds=args.until_max_rounds, llpf_knots=args.llpf_knots,
                align=args.align)


def compare(args) -> int:
    from ..comparison import compare
    from ..errors import ConfigError

    if args.dry_run:
        compare(args.config, None, data_dir=args.data_dir, device=args.device, dry_run=True,
                batch_size=args.dry_run_batch, **options(args))
        return 0
    if args.out is None:
        raise ConfigError("compare needs --out (or --dry-run)")
    result = compare(args.config, args.out, start=args.start, dest=args.dest, data_dir=args.data_dir,
                     device=args.device, progress=not args.quiet, **options(args))
    if not result:  # a rank other than 0 under torchrun: rank 0 prints the table
        return 0
    print_comparison(result["methods"])
    st = result["settings"]
    print(f"every path evaluated at {args.points} points or more: training loss on {st['train_samples']} samples, "
          f"test on {st['test_samples']}; {st['batchnorm']}")
    for k, r in result.get("alignment", {}).items():
        line = r["straight_line"]
        print(f"pair {k} aligned: {r['groups_reordered']} of {r['groups']} groups reordered; straight line max "
              f"training loss {line['before']['max_train_loss']:.4f} -> {line['after']['max_train_loss']:.4f}, "
              f"barrier {line['before']['barrier']:.4f} -> {line['after']['barrier']:.4f}")
    print(f"wrote {result['files']['csv']}, {result['files']['figure']}"
          + (f", {result['files']['frontier']}" if "frontier" in result["files"] else ""))
    return 0 if all(r["failed"] == 0 for r in result["methods"]) else 1


COLUMNS = ("max_train_loss", "walked_max_train_loss", "mean_train_loss", "min_test_accuracy", "path_length",
           "gradient_steps", "wall_seconds")


def print_comparison(rows: list[dict], out=None) -> None:
    print(f"{'method':11s}{'budget':>8s}" + "".join(f"{c:>22s}" for c in COLUMNS), file=out or sys.stdout)
    for r in rows:
        cells = []
        for c in COLUMNS:
            v, sd = r.get(c), r.get(f"{c}_std")
            cells.append("-" if v is None else f"{v:.4g}" + (f" ±{sd:.2g}" if sd is not None else ""))
        note = f"  ({r['failed']} failed)" if r.get("failed") else ""
        print(f"{r['method']:11s}{str(r['budget']):>8s}" + "".join(f"{c:>22s}" for c in cells) + note,
              file=out or sys.stdout)
