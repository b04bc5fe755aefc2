"""Per-layer PCA of low-loss paths (paper Figures 4 and 7), streamed from the saved points.

For each layer, one 2-D PCA is fitted over all saved points of all given
paths, and every point is projected onto its first two principal components.
The paper draws 2 x 100 LeNet5 paths of hundreds of points each; all their
points of all layers do not fit in memory at once, so the points are streamed
from their files and the PCA is a randomized SVD (Halko, Martinsson and Tropp
2011, Algorithms 4.3/4.4) that touches the data only through products:

1. pass: ``Y = X Omega`` for a Gaussian ``Omega`` (n_l x l, l = k + oversample)
   and the sum of the points; the mean mu then centres Y without a second
   look: ``(X - 1 mu^T) Omega = Y - 1 (mu^T Omega)``. ``Q = orth(Y)``.
2. pass: ``B^T = (X - 1 mu^T)^T Q`` (n_l x l) and the total sum of squares.
   Each power iteration re-orthonormalises ``B^T`` into Omega and repeats
   both passes, sharpening the subspace.
3. ``B = U S V^T``; the components are the first k rows of V^T and the
   projections ``Q U[:, :k] S[:k]``, so no pass is needed to project.

Memory per layer is O((points + n_l) * l); every pass reads each point file
once for all layers together. When the number of points is at most l the
sketch spans all the data and the result is exact PCA.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from ..errors import CheckpointError, ConfigError, ModelMismatchError, RunDirError
from .. import files
from ..files import check_output_folder, write_json
from ..schedule import select
from ..store import RunDir
from .runs import expand_runs, parameter_names


@dataclass
class PointSet:
    """The saved points of many paths, in order: which run and which iteration each one is."""

    files: list[Path]
    run: list[int]  # index into ``runs`` of each point
    iteration: list[int]
    runs: list[str]
    layers: list[str]
    shapes: dict[str, int] = field(default_factory=dict)  # numel per layer

    def __len__(self) -> int:
        return len(self.files)


def collect_points(runs: Iterable[str | Path], layers: list[str] | None = None) -> PointSet:
    """Every saved point of every run, checking that all runs share the same layers and shapes."""
    runs = expand_runs(runs)
    names = parameter_names(runs[0])
    chosen = select(layers or ["*"], names)
    files, run_idx, its = [], [], []
    shapes: dict[str, int] = {}
    for i, r in enumerate(runs):
        pts = RunDir(r).points()
        if not pts:
            raise RunDirError(f"{r} has no saved points (points/*.safetensors)")
        if parameter_names(r) != names:
            raise ModelMismatchError(f"{r} has a different architecture from {runs[0]}")
        for it, f in pts:
            files.append(f)
            run_idx.append(i)
            its.append(it)
    with safe_open(str(files[0]), "pt") as fh:
        for n in chosen:
            shapes[n] = math.prod(fh.get_slice(n).get_shape())
    return PointSet(files, run_idx, its, [str(r) for r in runs], chosen, shapes)


def _chunks(ps: PointSet, chunk: int) -> Iterator[tuple[int, dict[str, Tensor]]]:
    """(first index, {layer: chunk x n_l float64}) over all points, reading each file once."""
    for start in range(0, len(ps), chunk):
        rows: dict[str, list[Tensor]] = {n: [] for n in ps.layers}
        for f in ps.files[start:start + chunk]:
            try:
                with safe_open(str(f), "pt") as fh:
                    for n in ps.layers:
                        t = fh.get_tensor(n).reshape(-1)
                        if t.numel() != ps.shapes[n]:
                            raise ModelMismatchError(f"{f}: {n} has {t.numel()} elements, expected {ps.shapes[n]}")
                        rows[n].append(t.double())
            except ModelMismatchError:
                raise
            except (OSError, ValueError, RuntimeError, SafetensorError) as e:
                raise CheckpointError(f"cannot read point {f}: {str(e).splitlines()[0][:200]}") from None
        yield start, {n: torch.stack(v) for n, v in rows.items()}


def _orth(a: Tensor) -> Tensor:
    return torch.linalg.qr(a, mode="reduced").Q


@dataclass
class LayerPCA:
    components: Tensor  # k x n_l
    mean: Tensor  # n_l
    coords: Tensor  # points x k
    singular_values: Tensor  # the top l singular values of the centred data
    total_sum_squares: float

    @property
    def explained_variance_ratio(self) -> list[float]:
        s2 = self.singular_values[: self.coords.shape[1]] ** 2
        return (s2 / self.total_sum_squares).tolist() if self.total_sum_squares > 0 else [0.0] * len(s2)


def streamed_pca(ps: PointSet, k: int = 2, oversample: int = 10, power_iterations: int = 2, seed: int = 0,
                 chunk: int = 64) -> dict[str, LayerPCA]:
    """Randomized PCA of every layer of ``ps``, in ``2 + 2 * power_iterations`` passes over the files."""
    p = len(ps)
    gen = torch.Generator().manual_seed(seed)
    ell = {n: max(1, min(k + oversample, p, ps.shapes[n])) for n in ps.layers}
    omega = {n: torch.randn(ps.shapes[n], ell[n], generator=gen, dtype=torch.float64) for n in ps.layers}
    mean: dict[str, Tensor] = {}

    def sketch(first: bool) -> dict[str, Tensor]:
        y = {n: torch.empty(p, ell[n], dtype=torch.float64) for n in ps.layers}
        total = {n: torch.zeros(ps.shapes[n], dtype=torch.float64) for n in ps.layers} if first else None
        for i, xs in _chunks(ps, chunk):
            for n, x in xs.items():
                y[n][i:i + len(x)] = x @ omega[n]
                if first:
                    total[n] += x.sum(0)
        if first:
            mean.update({n: t / p for n, t in total.items()})
        return {n: _orth(y[n] - mean[n] @ omega[n]) for n in ps.layers}

    def project(q: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, float]]:
        bt = {n: torch.zeros(ps.shapes[n], ell[n], dtype=torch.float64) for n in ps.layers}
        ss = {n: 0.0 for n in ps.layers}
        for i, xs in _chunks(ps, chunk):
            for n, x in xs.items():
                xc = x - mean[n]
                bt[n] += xc.T @ q[n][i:i + len(x)]
                ss[n] += float((xc * xc).sum())
        return bt, ss

    q = sketch(True)
    bt, ss = project(q)
    for _ in range(power_iterations):
        omega = {n: _orth(b) for n, b in bt.items()}
        q = sketch(False)
        bt, ss = project(q)
    out = {}
    for n in ps.layers:
        u, s, vt = torch.linalg.svd(bt[n].T, full_matrices=False)
        kk = min(k, len(s))
        comps, coords = vt[:kk], q[n] @ u[:, :kk] * s[:kk]
        # a deterministic sign: the entry of largest magnitude of each component is positive
        sign = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True))).squeeze(1)
        sign[sign == 0] = 1
        out[n] = LayerPCA(comps * sign[:, None], mean[n], coords * sign, s, ss[n])
    return out


# ---------------------------------------------------------------- figure and files


def pca_figure(ps: PointSet, result: dict[str, LayerPCA], out: str | Path, max_lines: int = 400) -> Path:
    """One panel per layer: each path a line, its points coloured by iteration (paper Figure 4)."""
    from matplotlib.colors import Normalize

    from ..plots import new_figure, save_figure

    n = len(ps.layers)
    cols = min(5, n)
    rows = math.ceil(n / cols)
    fig = new_figure(figsize=(3.3 * cols, 3.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    its = torch.tensor(ps.iteration, dtype=torch.float64)
    run = torch.tensor(ps.run)
    norm = Normalize(float(its.min()), float(its.max()) if its.max() > its.min() else float(its.min()) + 1)
    sc = None
    for ax, name in zip(axes.flat, ps.layers):
        c = result[name].coords
        if c.shape[1] < 2:
            c = torch.cat([c, torch.zeros(len(c), 2 - c.shape[1], dtype=c.dtype)], 1)
        for r in range(min(len(ps.runs), max_lines)):
            m = run == r
            ax.plot(c[m, 0], c[m, 1], lw=0.5, color="0.6", alpha=0.6, zorder=1)
        sc = ax.scatter(c[:, 0], c[:, 1], c=its, cmap="viridis", norm=norm, s=4, zorder=2, rasterized=True)
        ev = result[name].explained_variance_ratio + [0.0, 0.0]
        ax.set_title(f"{name}\nPC1 {100 * ev[0]:.0f}%  PC2 {100 * ev[1]:.0f}%", fontsize=8)
        ax.tick_params(labelsize=6)
    if sc is not None:
        fig.colorbar(sc, ax=axes.ravel().tolist(), shrink=0.6, label="iteration")
    fig.suptitle(f"per-layer PCA of {len(ps.runs)} path(s), {len(ps)} points", fontsize=9)
    return save_figure(fig, out)


def write_pca(ps: PointSet, result: dict[str, LayerPCA], out_dir: str | Path, settings: dict | None = None) -> dict[str, Path]:
    """``pca.png``, ``pca.csv`` (run, iteration, layer, pc1, pc2) and ``pca.json`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "iteration", "layer", "pc1", "pc2"])
    for name in ps.layers:
        c = result[name].coords.tolist()
        for i, xy in enumerate(c):
            xy = list(xy) + [0.0] * (2 - len(xy))
            w.writerow([ps.runs[ps.run[i]], ps.iteration[i], name, repr(xy[0]), repr(xy[1])])
    files.atomic_write(out_dir / "pca.csv", buf.getvalue().encode())
    meta = {
        "runs": ps.runs,
        "points": len(ps),
        "method": "randomized streamed PCA (Halko et al. 2011); exact when points <= k + oversample",
        "settings": settings or {},
        "layers": {n: {"numel": ps.shapes[n], "explained_variance_ratio": result[n].explained_variance_ratio,
                       "singular_values": result[n].singular_values.tolist(),
                       "total_sum_squares": result[n].total_sum_squares} for n in ps.layers},
    }
    write_json(out_dir / "pca.json", meta)
    return {"figure": pca_figure(ps, result, out_dir / "pca.png"), "csv": out_dir / "pca.csv",
            "json": out_dir / "pca.json"}


def run_pca(runs: Iterable[str | Path], out_dir: str | Path, layers: list[str] | None = None, k: int = 2,
            oversample: int = 10, power_iterations: int = 2, seed: int = 0, force: bool = False) -> dict[str, Path]:
    """``llpf pca``: collect the points of ``runs``, fit per-layer PCA, write figure, CSV and JSON.

    A non-empty ``out_dir`` is refused unless ``force``.
    """
    for name, value, least in (("k", k, 1), ("oversample", oversample, 0), ("power iterations", power_iterations, 0)):
        if value < least:
            raise ConfigError(f"PCA's {name} must be at least {least}, got {value}")
    check_output_folder(out_dir, force)
    ps = collect_points(runs, layers)
    result = streamed_pca(ps, k, oversample, power_iterations, seed)
    settings = {"k": k, "oversample": oversample, "power_iterations": power_iterations, "seed": seed}
    return write_pca(ps, result, out_dir, settings)
