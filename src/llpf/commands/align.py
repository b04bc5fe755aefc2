"""``llpf align``: reorder model B's hidden units to match model A's (weight matching), B's function kept."""
from __future__ import annotations

from pathlib import Path

from .common import at_least, config_arg, device_arg, require


def add(sub) -> None:
    p = sub.add_parser("align", help="reorder model B's hidden units to match model A's (weight matching, Ainsworth "
                                     "et al. 2023); B's function is kept, the straight line's barrier shrinks")
    config_arg(p, "TOML file or shipped config name (model and data)")
    p.add_argument("a", help="weights of model A (kept as they are)")
    p.add_argument("b", help="weights of model B (to align to A)")
    p.add_argument("--out", required=True,
                   help="weights file to write (.safetensors); what alignment did goes beside it (.json)")
    p.add_argument("--points", type=at_least(2), default=11,
                   help="points on each straight line, A -> B and A -> aligned B (default 11)")
    p.add_argument("--seed", type=int, default=0, help="the order in which weight matching visits the groups")
    device_arg(p)
    p.set_defaults(handler=align, check_args=_check)


def _check(args) -> None:
    from ..files import check_creatable

    out = Path(args.out)
    require(out.suffix == ".safetensors", f"--out must name a .safetensors file, got {args.out}")
    require(not out.exists() and not out.with_suffix(".json").exists(),
            f"{out} (or {out.with_suffix('.json').name} beside it) already exists; choose another --out")
    check_creatable(out)


def align(args) -> int:
    from ..alignment.pair import align_endpoints, line_change
    from ..config import load_config
    from ..data import prepare_data
    from ..files import save_weights, write_json
    from ..runner import load_model
    from ..runtime import pick_device
    from .summaries import print_alignment

    cfg = load_config(args.config)
    device = pick_device(args.device)
    a, b = load_model(cfg, args.a, "model A").to(device), load_model(cfg, args.b, "model B").to(device)
    data = prepare_data(cfg, device)
    aligned, record = align_endpoints(a, b, data, cfg.data.eval_batch_size, seed=args.seed)
    *_, record["straight_line"] = line_change(a, b, aligned, data, cfg.data.eval_batch_size, args.points,
                                              device=device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(out, aligned.state_dict(), {"config": cfg.name, "aligned_to": str(args.a), "source": str(args.b)})
    write_json(out.with_suffix(".json"), {"inputs": {"config": cfg.name, "a": str(args.a), "b": str(args.b),
                                                     "seed": args.seed}, **record})
    print_alignment(record)
    print(f"wrote {out}, {out.with_suffix('.json')}")
    return 0
