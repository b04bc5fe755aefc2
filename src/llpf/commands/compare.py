"""``llpf compare``: LLPF beside the straight line, AutoNEB and Bezier curves on the same pairs."""
from __future__ import annotations

import sys

from .common import at_least, config_arg, device_arg, quiet_arg, recompute, recompute_bn_arg


def add(sub) -> None:
    p = sub.add_parser("compare", help="LLPF beside the straight line, AutoNEB and Bezier curves on the same pairs; "
                                       "under torchrun the pairs are dealt to the ranks")
    config_arg(p, "TOML file or shipped config name (model, data, [m2m] and the baselines' tables)")
    p.add_argument("--start", "--start-model", default=None,
                   help="start model weights (with --dest; --start-model under torchrun)")
    p.add_argument("--dest", "--dest-model", default=None, help="destination model weights")
    p.add_argument("--pairs", type=at_least(1), default=None,
                   help="instead: train N pairs of endpoints from seeds 0..2N-1")
    p.add_argument("--methods", default="line,llpf,autoneb,bezier",
                   help="comma-separated: line, llpf, autoneb, bezier, polychain (default line,llpf,autoneb,bezier)")
    p.add_argument("--out", required=True, help="output directory; re-running the same command continues it")
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
    device_arg(p)
    quiet_arg(p)
    p.set_defaults(handler=compare)


def compare(args) -> int:
    from ..comparison import compare

    result = compare(args.config, args.out, start=args.start, dest=args.dest, pairs=args.pairs, methods=args.methods,
                     points=args.points, points_per_segment=args.points_per_segment,
                     train_samples=args.train_samples, recompute_bn=recompute(args.recompute_bn),
                     data_dir=args.data_dir, device=args.device, progress=not args.quiet, align=args.align)
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
    print(f"wrote {result['files']['csv']}, {result['files']['figure']}")
    return 0 if all(r["failed"] == 0 for r in result["methods"]) else 1


def print_comparison(rows: list[dict], out=None) -> None:
    cols = ("max_train_loss", "mean_train_loss", "max_test_loss", "min_test_accuracy", "path_length",
            "gradient_steps", "wall_seconds")
    print(f"{'method':10s}" + "".join(f"{c:>18s}" for c in cols), file=out or sys.stdout)
    for r in rows:
        cells = []
        for c in cols:
            v, sd = r.get(c), r.get(f"{c}_std")
            cells.append("-" if v is None else f"{v:.4g}" + (f" ±{sd:.2g}" if sd is not None else ""))
        note = f"  ({r['failed']} failed)" if r.get("failed") else ""
        print(f"{r['method']:10s}" + "".join(f"{c:>18s}" for c in cells) + note, file=out or sys.stdout)
