"""``llpf layers``: a config's model, its parameters grouped by module in order, to write phase patterns against."""
from __future__ import annotations

from .common import config_arg


def add(sub) -> None:
    p = sub.add_parser("layers", help="the config's model: parameters grouped by module, in order, with sizes and "
                                      "normalisation layers marked (to write [[m2m.phases]] layer patterns)")
    config_arg(p, "TOML file or shipped config name (its [model] table)")
    p.set_defaults(handler=layers)


def layers(args) -> int:
    from ..config import load_config
    from ..models import build_model
    from ..schedule import layer_groups

    cfg = load_config(args.config)
    groups = layer_groups(build_model(cfg.model))
    tensors = sum(len(g.parameters) for g in groups)
    print(f"{cfg.model.name}: {sum(g.size for g in groups):,} parameters in {tensors} tensors (layers) of "
          f"{len(groups)} modules")
    rows = [(g.module or "(model)", g.type + (" *" if g.normalisation else ""),
             ", ".join(f"{n} {'x'.join(map(str, shape)) or 'scalar'}" for n, shape in g.parameters), f"{g.size:,}")
            for g in groups]
    widths = [max(len(r[i]) for r in rows + [("module", "type", "parameters", "size")]) for i in range(4)]
    for r in [("module", "type", "parameters", "size")] + rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>{widths[3]}}")
    print("* normalisation layer (M2O neither moves nor rescales it). Phase patterns are globs over parameter "
          "names: \"conv1\" selects a module's parameters, \"layer1.*\" everything under layer1.")
    return 0
