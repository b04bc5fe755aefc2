"""``llpf report``: one offline HTML page with every figure and table that applies.

Inputs are run directories (or folders holding them, such as a demo's
output) and the output folders of ``llpf dim``, ``llpf variance``, ``llpf
barrier``, ``llpf pca``, ``llpf m2o-baselines``, ``llpf compare`` and ``llpf layerwise``. The page shows, per run, its path figure, the
segment certificate and straight-line comparison where computed, its summary
and its resolved config; across runs, the per-layer PCA of the paths and the
M2O generalisation curve; and every analysis output given. Figures are
embedded as base64 data URIs, so ``index.html`` is one self-contained file:
no scripts, fonts or stylesheets are fetched from anywhere.
"""
from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import Any, Iterable

from ..errors import RunDirError
from .. import files
from ..files import check_output_folder
from ..store import RunDir
from .runs import is_run, run_kind

ANALYSIS_FILES = ("dimension.json", "variance.json", "barrier.json", "pca.json", "generalisation.json",
                  "m2o-baselines.json", "comparison.csv", "layerwise.json")

CSS = """
body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.25em;border-bottom:1px solid #ccc;margin-top:2em}h3{font-size:1.05em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}td.t{text-align:left;min-width:18em}
img{max-width:100%;border:1px solid #eee}pre{background:#f8f8f8;padding:.5em;font-size:.8em;overflow:auto}
.ok{color:#070}.bad{color:#b00}details{margin:.5em 0}
"""


# ---------------------------------------------------------------- html pieces


def esc(x: Any) -> str:
    return html.escape(str(x))


VERDICTS = {"valid", "loss_ok", "floor_reached", "continuous_below_threshold", "segments_below_threshold"}


def fmt(v: Any, verdict: bool = False) -> str:
    if isinstance(v, bool) and verdict:
        return f'<span class="{"ok" if v else "bad"}">{v}</span>'
    if isinstance(v, float):
        return esc(f"{v:.6g}")
    if isinstance(v, list):
        return esc(", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v))
    if v is None:
        return "-"
    return esc(v)


def img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<p><img alt="{esc(alt)}" src="data:image/png;base64,{data}"></p>'


def table(rows: list[list[Any]], header: list[str]) -> str:
    """An HTML table; a boolean is coloured as a verdict when its row or column is named as one."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    def cell(c, r, h):
        cls = ' class="t"' if isinstance(c, str) and len(c) > 24 else ""
        return f"<td{cls}>{fmt(c, r[0] in VERDICTS or h in VERDICTS)}</td>"

    body = "".join("<tr>" + "".join(cell(c, r, h) for c, h in zip(r, header)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def summary_tables(s: dict) -> str:
    """Scalars as one key/value table; per-layer dicts side by side as one layer table."""
    scalars = [[k, v] for k, v in s.items() if not isinstance(v, dict)]
    per_layer = {k: v for k, v in s.items() if isinstance(v, dict) and v and all(not isinstance(x, dict) for x in v.values())}
    other = {k: v for k, v in s.items() if isinstance(v, dict) and k not in per_layer}
    out = table(scalars, ["key", "value"]) if scalars else ""
    if per_layer:
        layers = list(dict.fromkeys(n for v in per_layer.values() for n in v))
        out += table([[n] + [per_layer[k].get(n) for k in per_layer] for n in layers], ["layer", *per_layer])
    for k, v in other.items():
        out += f"<details><summary>{esc(k)}</summary><pre>{esc(json.dumps(v, indent=1))}</pre></details>"
    return out


# ---------------------------------------------------------------- sections


def run_section(run: Path, work: Path) -> str:
    from ..plots import path_figure
    from .barriers import line_figure, segments_figure

    rd = RunDir(run)
    info = rd.info()
    kind = info.get("kind", "?")
    parts = [f"<h2>{esc(kind.upper())} run: {esc(run)}</h2>",
             f"<p>status: {fmt(info.get('status'))}; created {esc(info.get('created', '?'))}; "
             f"inputs: {esc(json.dumps(info.get('inputs', {})))}</p>"]
    fig = rd.path / "figures" / "path.png"
    if not fig.is_file() and (rd.path / "metrics.csv").is_file():
        fig = path_figure(run, work / f"{run.name}-path.png")
    if fig.is_file():
        parts.append(img(fig, f"{run.name} path"))
    seg = rd.path / "segments.json"
    if seg.is_file():
        res = json.loads(seg.read_text())
        f = rd.path / "figures" / "segments.png"
        if not f.is_file():
            f = segments_figure(res, work / f"{run.name}-segments.png")
        parts.append("<h3>Straight segments between saved points</h3>" + img(f, f"{run.name} segments"))
        parts.append(table([[k, res.get(k)] for k in ("points_per_segment", "segment_max_train_loss",
                                                      "point_max_train_loss", "loss_threshold",
                                                      "continuous_below_threshold", "recompute_bn")], ["key", "value"]))
    line = rd.path / "straight_line.json"
    if line.is_file():
        res = json.loads(line.read_text())
        f = rd.path / "figures" / "straight_line.png"
        f = f if f.is_file() else line_figure(res["rows"], work / f"{run.name}-straight-line.png",
                        f"straight line start -> destination: max train loss {res['summary'].get('max_train_loss', 0):.4f}")
        parts.append("<h3>Straight line between the endpoints</h3>" + img(f, f"{run.name} straight line"))
    if (rd.path / "layerwise" / "layerwise.json").is_file():
        parts.append(layerwise_section(rd.path / "layerwise"))
    if (rd.path / "summary.json").is_file():
        parts.append("<h3>Summary</h3>" + summary_tables(rd.summary()))
    if (rd.path / "config.toml").is_file():
        parts.append(f"<details><summary>resolved config</summary><pre>{esc((rd.path / 'config.toml').read_text())}</pre></details>")
    return "\n".join(parts)


def dimension_section(d: Path) -> str:
    r = json.loads((d / "dimension.json").read_text())
    s = r["settings"]
    parts = [f"<h2>Dimensionality of the low-loss space: {esc(d)}</h2>",
             f"<p>{esc(s['moves'])} one-iteration moves of {esc(s['rounds'])} SGD steps (batch {esc(s['batch_size'])}, "
             f"lr {esc(s['lr'])}, {esc(s['dtype'])}); {esc(r['precision'])}. Start training loss "
             f"{fmt(r['start_train'].get('loss'))}; last batch loss of the moves: mean "
             f"{fmt(r['move_last_batch_loss']['mean'])}, max {fmt(r['move_last_batch_loss']['max'])}.</p>"]
    if (d / "spectrum.png").is_file():
        parts.append(img(d / "spectrum.png", "singular value spectra"))
    tols = list(next(iter(r["layers"].values()))["rank"]) if r["layers"] else []
    rows = [[n, x["numel"], x["full_rank"], x["structural_bound"]] + [x["rank"][t] for t in tols]
            + [x["participation_ratio"], x["participation_ratio_centred"], x["entropy_rank"],
               "; ".join(x.get("structure", [])) or "-"] for n, x in r["layers"].items()]
    parts.append(table(rows, ["layer", "n", "min(N,n)", "structural bound", *[f"rank @ {t}" for t in tols],
                              "participation ratio", "PR centred", "entropy rank", "structure"]))
    parts.append(f"<p>Dead units ({len(r['dead_units'])}): {esc(', '.join(r['dead_units']) or 'none')}.</p>")
    rare = r.get("rarely_active_units") or {}
    if rare:
        parts.append(f"<p>Units active on at most 1% of the training samples ({len(rare)}; they add directions with "
                     f"tiny singular values): {esc(', '.join(f'{k} ({v})' for k, v in rare.items()))}.</p>")
    if r.get("bias_rank_deficits"):
        parts.append("<h3>Bias rank deficits and their causes</h3>" + table(
            [[n, v["structural_deficit"], v["dead_units"], v["softmax"]] + [v["rank_deficit"][t] for t in tols]
             for n, v in r["bias_rank_deficits"].items()],
            ["bias", "structural deficit", "dead units", "softmax constraint", *[f"deficit @ {t}" for t in tols]]))
    parts.append("<h3>Full dimensionality (rank = min(N, n)) by tolerance</h3>" + table(
        [[t, ", ".join(v["full"]) or "-", ", ".join(v["not_full"]) or "-"] for t, v in r["verdict"].items()],
        ["tolerance", "full", "not full"]))
    return "\n".join(parts)


def variance_section(d: Path) -> str:
    r = json.loads((d / "variance.json").read_text())
    parts = [f"<h2>Layer-variance consistency: {esc(d)}</h2>"]
    if (d / "variance.png").is_file():
        parts.append(img(d / "variance.png", "layer variances"))
    parts.append(table([[n, v["mean"], v["min"], v["max"], v["cv"], v["max_over_min"]] for n, v in r["spread"].items()],
                       ["layer", "mean", "min", "max", "cv", "max/min"]))
    return "\n".join(parts)


def barrier_section(d: Path) -> str:
    r = json.loads((d / "barrier.json").read_text())
    parts = [f"<h2>Straight line: {esc(d)}</h2>", f"<p>inputs: {esc(json.dumps(r.get('inputs', {})))}</p>"]
    if (d / "barrier.png").is_file():
        parts.append(img(d / "barrier.png", "straight line"))
    parts.append(table([[k, v] for k, v in r["summary"].items()], ["key", "value"]))
    return "\n".join(parts)


def layerwise_section(d: Path) -> str:
    """``llpf layerwise``: the whole-model barrier beside the single groups', cumulative sets, couplings, carriers."""
    r = json.loads((d / "layerwise.json").read_text())
    st, car = r["settings"], r["carriers"]
    parts = [f"<h2>Layer-wise linear connectivity: {esc(d)}</h2>",
             f"<p>inputs: {esc(json.dumps(r.get('inputs', {})))}; {len(r['groups'])} groups ({esc(st['groups'])}), "
             f"{esc(st['points'])} points per line, {esc(st['evaluations'])} evaluations; {esc(st['batchnorm'])}. "
             f"Barriers are {esc(r['measure'])} at λ = ½ minus the mean of the endpoints' "
             f"(Adilova et al. 2024); coupling is {esc(r['definitions']['coupling'])}.</p>",
             f"<p>Whole-model barrier {fmt(r['whole_model_barrier'])} (largest above the chord "
             f"{fmt(r['whole_model']['max'])} at λ = {fmt(r['whole_model']['t_at_max'])}). Carried by groups: "
             f"{esc(', '.join(car['groups']) or 'none')}; by pairs: "
             f"{esc(', '.join('+'.join(p) for p in car['pairs']) or 'none')} (at least {fmt(car['fraction'])} of it). "
             f"Half of it appears on adding: {esc(json.dumps(car['appears_at']))}.</p>"]
    for f in ("layerwise-single.png", "layerwise-cumulative.png", "layerwise-coupling.png", "layerwise-segments.png"):
        if (d / f).is_file():
            parts.append(img(d / f, f))
    parts.append(table([[n, *r["single"][n].values(), *r["single_max"][n].values()] for n in r["groups"]],
                       ["group", "rest at A", "rest at B", "max above chord, rest at A", "max above chord, rest at B"]))
    parts.append(table([[b, *v.values()] for b, v in r["decomposition"].items()],
                       ["base", *next(iter(r["decomposition"].values()))]))
    if r.get("segments"):
        parts.append("<h3>Segments between saved points</h3>" + table(
            [[s["from"], s["to"], s["whole_model_barrier"], s["largest_single"]["group"], s["largest_single"]["value"]]
             for s in r["segments"]], ["from", "to", "whole segment", "largest single group", "its barrier"]))
    return "\n".join(parts)


def comparison_section(d: Path) -> str:
    """``llpf compare``'s table (comparison.csv) and figures (the frontier's too), with how the paths were evaluated."""
    import csv

    with open(d / "comparison.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    parts = [f"<h2>Path methods compared: {esc(d)}</h2>"]
    info = d / "comparison.json"
    if info.is_file():
        st = json.loads(info.read_text()).get("settings", {})
        parts.append(f"<p>config {esc(st.get('config'))}, {esc(st.get('pairs'))} pair(s); every path evaluated the "
                     f"same way: training loss on {esc(st.get('train_samples'))} samples, test on "
                     f"{esc(st.get('test_samples'))}; {esc(st.get('batchnorm'))}.</p>")
    if (d / "comparison.png").is_file():
        parts.append(img(d / "comparison.png", "comparison"))
    if (d / "frontier.png").is_file():
        parts.append(img(d / "frontier.png", "loss-budget frontier"))
    if rows:
        parts.append(table([[_number(c) for c in r] for r in rows[1:]], rows[0]))
    return "\n".join(parts)


def _number(cell: str):
    try:
        return float(cell) if cell not in ("", "None") else None
    except ValueError:
        return cell


def pca_section(d: Path, title: str = "") -> str:
    r = json.loads((d / "pca.json").read_text())
    parts = [f"<h2>{esc(title or 'Per-layer PCA of the paths')}: {len(r['runs'])} path(s), {r['points']} points</h2>",
             f"<p>{esc(r['method'])}</p>"]
    if (d / "pca.png").is_file():
        parts.append(img(d / "pca.png", "per-layer PCA"))
    parts.append(table([[n, v["numel"], *v["explained_variance_ratio"][:2]] for n, v in r["layers"].items()],
                       ["layer", "n", "PC1 explained", "PC2 explained"]))
    return "\n".join(parts)


def generalisation_section(d: Path) -> str:
    r = json.loads((d / "generalisation.json").read_text())
    parts = ["<h2>M2O: generalisation against the variance ratio</h2>"]
    if (d / "generalisation.png").is_file():
        parts.append(img(d / "generalisation.png", "M2O generalisation"))
    rows = []
    for run in r["runs"]:
        b, s = run.get("best") or {}, run.get("start") or {}
        rows.append([Path(run["run"]).name, b.get("selected_on"), b.get("iteration"), b.get("mean_variance_ratio"),
                     s.get("test_loss"), b.get("test_loss"), s.get("test_accuracy"), b.get("test_accuracy")])
    parts.append(table(rows, ["run", "selected on", "best iteration", "variance ratio", "start test loss",
                              "best test loss", "start test accuracy", "best test accuracy"]))
    return "\n".join(parts)


def baselines_section(d: Path) -> str:
    from ..baselines.m2o_baselines import COLUMNS

    r = json.loads((d / "m2o-baselines.json").read_text())
    parts = [f"<h2>M2O against its baselines: {esc(d)}</h2>",
             f"<p>{esc(r['config'])} from {esc(r['start'])}: every method chose its point on validation by "
             f"{esc(r['select_by'])} (validation fraction {fmt(r['validation_fraction'])}), then was read on test; "
             f"budget {esc(r['budget_gradient_steps'])} gradient steps. Best on validation: "
             f"{esc(r['chosen_on_validation'])}.</p>"]
    if (d / "m2o-baselines.png").is_file():
        parts.append(img(d / "m2o-baselines.png", "M2O and its baselines"))
    parts.append(table([[row[c] for c in COLUMNS] for row in r["rows"]], COLUMNS))
    return "\n".join(parts)


# ---------------------------------------------------------------- the page


def classify(paths: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """Split the inputs into run directories and analysis output folders (expanding folders of runs)."""
    runs, outputs = [], []
    for p in map(Path, paths):
        if is_run(p):
            runs.append(p)
        elif p.is_dir() and any((p / f).is_file() for f in ANALYSIS_FILES):
            outputs.append(p)
        elif p.is_dir():
            kids = sorted(c for c in p.iterdir() if c.is_dir())
            found_runs = [c for c in kids if is_run(c)]
            found_out = [c for c in kids if any((c / f).is_file() for f in ANALYSIS_FILES)]
            if not found_runs and not found_out:
                raise RunDirError(f"{p} holds no llpf run and no analysis output")
            runs += found_runs
            outputs += found_out
        else:
            raise RunDirError(f"{p} is not a directory")
    return runs, outputs


def build_report(paths: Iterable[str | Path], out_dir: str | Path, pca: bool = True, force: bool = False) -> Path:
    """Write ``out_dir/index.html`` (and the figures it embeds, under ``out_dir``) and return its path.

    A non-empty ``out_dir`` is refused unless ``force``.
    """
    from .. import __version__
    from .generalisation import analyse_generalisation, write_generalisation
    from .pca import run_pca

    check_output_folder(out_dir, force)
    runs, outputs = classify(paths)
    out_dir = Path(out_dir)
    work = out_dir / "figures"
    work.mkdir(parents=True, exist_ok=True)
    sections = []
    for r in runs:
        sections.append(run_section(r, work))
    paths_for_pca = [r for r in runs if run_kind(r) == "m2m"] or runs
    if pca and paths_for_pca and sum(len(RunDir(r).points()) for r in paths_for_pca) >= 2:
        run_pca(paths_for_pca, out_dir / "pca", force=True)  # inside the folder claimed above
        sections.append(pca_section(out_dir / "pca"))
    if any(run_kind(r) == "m2o" for r in runs):
        write_generalisation(analyse_generalisation([r for r in runs if run_kind(r) == "m2o"]),
                             out_dir / "generalisation")
        sections.append(generalisation_section(out_dir / "generalisation"))
    for d in outputs:
        if (d / "dimension.json").is_file():
            sections.append(dimension_section(d))
        if (d / "variance.json").is_file():
            sections.append(variance_section(d))
        if (d / "barrier.json").is_file():
            sections.append(barrier_section(d))
        if (d / "pca.json").is_file():
            sections.append(pca_section(d, f"Per-layer PCA ({d})"))
        if (d / "generalisation.json").is_file():
            sections.append(generalisation_section(d))
        if (d / "m2o-baselines.json").is_file():
            sections.append(baselines_section(d))
        if (d / "comparison.csv").is_file():
            sections.append(comparison_section(d))
        if (d / "layerwise.json").is_file():
            sections.append(layerwise_section(d))
    if not sections:
        raise RunDirError("nothing to report")
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>llpf report</title>"
            f"<style>{CSS}</style></head><body>\n<h1>llpf report</h1>\n"
            f"<p>llpf {esc(__version__)}, {esc(time.strftime('%Y-%m-%d %H:%M:%S'))}; "
            f"{len(runs)} run(s), {len(outputs)} analysis output(s).</p>\n" + "\n".join(sections) + "\n</body></html>\n")
    index = out_dir / "index.html"
    files.atomic_write(index, page.encode())
    return index
