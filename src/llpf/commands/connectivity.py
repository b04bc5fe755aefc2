"""``llpf layerwise``: layer-wise linear connectivity between two models, or along a path (llpf.analysis.layerwise).

``llpf layerwise CONFIG A B --out DIR`` interpolates each layer group alone,
the groups cumulatively from either side and every pair, with the rest held at
A and at B; ``llpf layerwise RUN`` does the same between an M2M or M2O path's
first and last saved points, and single groups on each segment between
consecutive saved points (into ``RUN/layerwise`` unless ``--out``).
"""
from __future__ import annotations

import argparse
import sys

from .common import at_least, device_arg, force_arg, quiet_arg, recompute, recompute_bn_arg, require


def add(sub) -> None:
    p = sub.add_parser("layerwise", help="layer-wise linear connectivity: which layers, alone or together, make the "
                                         "barrier on the straight line (Adilova et al. 2024)",
                       usage="llpf layerwise (CONFIG A B --out DIR | RUN) [options]")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="a config (model and data) and two weight files, or an M2M/M2O run directory")
    p.add_argument("--out", default=None,
                   help="folder for layerwise.csv, layerwise.json and the figures (default for RUN: RUN/layerwise)")
    p.add_argument("--groups", choices=("modules", "blocks", "tensors"), default="modules",
                   help="a group is a module's parameters together (default), a block (the first two levels of the "
                        "module tree: a ResNet's layer1.0) or one tensor")
    p.add_argument("--points", type=odd_at_least_3, default=11,
                   help="grid points on each line including both ends, odd so that λ = 0.5 is one (default 11)")
    p.add_argument("--train-samples", type=at_least(0), default=0,
                   help="evaluate the training loss on this many fixed random training samples (default 0: all)")
    p.add_argument("--test-samples", type=at_least(0), default=0,
                   help="evaluate the test loss on this many fixed random test samples (default 0: all)")
    p.add_argument("--carrier-fraction", type=fraction, default=0.25,
                   help="a group or pair carries the barrier when its barrier or coupling reaches this fraction of "
                        "the whole model's (default 0.25)")
    recompute_bn_arg(p)
    p.add_argument("--align", action="store_true",
                   help="with CONFIG A B: reorder B's hidden units to match A's first (weight matching, llpf align); "
                        "layerwise.json records the alignment and the straight line's barrier before and after")
    force_arg(p)
    device_arg(p)
    quiet_arg(p)
    p.set_defaults(handler=layerwise, check_args=_check)


def odd_at_least_3(text: str) -> int:
    value = at_least(3)(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be odd, so that the grid holds λ = 0.5; got {value}")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _check(args) -> None:
    require(len(args.inputs) in (1, 3), f"give CONFIG A B or one RUN directory, not {len(args.inputs)} arguments")
    require(len(args.inputs) == 1 or args.out, "--out is required with CONFIG A B")
    require(len(args.inputs) == 3 or not args.align, "--align takes CONFIG A B (a run's path ends where it ends)")


def _models(cfg, a: str, b: str, data, device, args) -> tuple:
    """The two models as loaded, on the device, B aligned to A with ``--align``; and the alignment's record."""
    from ..runner import load_model

    a, b = load_model(cfg, a, "model A").to(device), load_model(cfg, b, "model B").to(device)
    if not args.align:
        return a, b, None
    from ..alignment.pair import align_endpoints, line_change
    from .summaries import print_alignment

    aligned, record = align_endpoints(a, b, data, cfg.data.eval_batch_size)
    *_, record["straight_line"] = line_change(a, b, aligned, data, cfg.data.eval_batch_size, args.points,
                                              recompute(args.recompute_bn), device)
    print_alignment(record)
    return a, aligned, record


def layerwise(args) -> int:
    from pathlib import Path

    from ..analysis.layerwise import layerwise as analyse, path_layerwise
    from ..analysis.layerwise_output import write_layerwise
    from ..files import check_output_folder

    settings = dict(groups=args.groups, points=args.points, train_samples=args.train_samples,
                    test_samples=args.test_samples,
                    recompute_bn=recompute(args.recompute_bn), progress=not args.quiet,
                    carrier_fraction=args.carrier_fraction)
    if len(args.inputs) == 1:
        run = Path(args.inputs[0])
        out = check_output_folder(args.out or run / "layerwise", args.force)
        result = path_layerwise(run, device=args.device, **settings)
        inputs = {"run": str(run)}
    else:
        from ..config import load_config
        from ..data import prepare_data
        from ..runtime import pick_device

        out = check_output_folder(args.out, args.force)
        cfg = load_config(args.inputs[0])
        device = pick_device(args.device)
        data = prepare_data(cfg, device)
        a, b, record = _models(cfg, args.inputs[1], args.inputs[2], data, device, args)
        result = analyse(a, b, data, batch_size=cfg.data.eval_batch_size, device=device, **settings)
        inputs = {"config": cfg.name, "a": args.inputs[1], "b": args.inputs[2],
                  **({"aligned": True, "alignment": record} if record else {})}
    files = write_layerwise(result, out, inputs)
    print_layerwise(result)
    print(f"wrote {files['csv']}, {files['json']} and figures in {out}")
    return 0


def print_layerwise(r: dict, out=None) -> None:
    """The whole-model barrier, each group's alone, where the cumulative one appears, the largest couplings."""
    out = out or sys.stdout
    st = r["settings"]
    print(f"{len(r['groups'])} groups ({st['groups']}), {st['points']} points per line, {st['evaluations']} "
          f"evaluations; {st['batchnorm']}", file=out)
    print(f"whole-model barrier ({r['measure']} at λ=0.5 minus the endpoints' mean): {r['whole_model_barrier']:.4f} "
          f"(largest above the chord {r['whole_model']['max']:.4f} at λ={r['whole_model']['t_at_max']:.2f})", file=out)
    print(f"{'group':24s} {'rest at A':>10s} {'rest at B':>10s}", file=out)
    for n in r["groups"]:
        print(f"{n:24s} {r['single'][n]['rest_at_a']:10.4f} {r['single'][n]['rest_at_b']:10.4f}", file=out)
    for side, steps in r["cumulative"].items():
        print(f"cumulative {side.replace('_', ' ')} side (rest at A): "
              + ", ".join(f"+{s['added']} {s['rest_at_a']:.3g}" for s in steps), file=out)
    G = len(r["groups"])
    pairs = sorted(((max(r["coupling"][b][i][j] for b in r["coupling"]), i, j) for i in range(G)
                    for j in range(i + 1, G)), reverse=True)[:5]
    print("largest couplings: " + ", ".join(f"{r['groups'][i]}+{r['groups'][j]} {v:.3g}" for v, i, j in pairs),
          file=out)
    c = r["carriers"]
    print(f"carried by (at least {c['fraction']} of the whole-model barrier): groups {', '.join(c['groups']) or 'none'}; "
          f"pairs {', '.join('+'.join(p) for p in c['pairs']) or 'none'}", file=out)
    if r.get("segments"):
        top = max(r["segments"], key=lambda s: s["largest_single"]["value"])
        print(f"segments between saved points: largest single-group barrier {top['largest_single']['value']:.4f} "
              f"({top['largest_single']['group']}, {top['from']}-{top['to']}); whole segments up to "
              f"{max(s['whole_model_barrier'] for s in r['segments']):.4f}", file=out)
