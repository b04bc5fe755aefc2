"""Streamed per-layer PCA against scikit-learn's exact PCA."""
import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from llpf.analysis.pca import PointSet, collect_points, run_pca, streamed_pca
from llpf.files import save_weights


def random_walk_points(tmp_path, paths=3, points=8, dims=None, seed=0):
    """Point files of a few random-walk 'paths' over two layers, and the matrices they hold."""
    dims = dims or {"w": 40, "b": 6}
    g = torch.Generator().manual_seed(seed)
    files, run, its, X = [], [], [], {n: [] for n in dims}
    for r in range(paths):
        cur = {n: torch.randn(d, generator=g) for n, d in dims.items()}
        drift = {n: torch.randn(d, generator=g) * 0.3 for n, d in dims.items()}
        for i in range(points):
            cur = {n: cur[n] + drift[n] + 0.05 * torch.randn(d, generator=g) for n, d in dims.items()}
            f = tmp_path / f"r{r}" / f"{i:07d}.safetensors"
            f.parent.mkdir(exist_ok=True)
            save_weights(f, {n: v.reshape(-1, 2) if n == "w" else v for n, v in cur.items()})
            files.append(f)
            run.append(r)
            its.append(i)
            for n in dims:
                X[n].append(cur[n].double().numpy())
    ps = PointSet(files, run, its, [f"r{r}" for r in range(paths)], list(dims), dict(dims))
    return ps, {n: np.stack(v) for n, v in X.items()}


def assert_same_up_to_sign(ours, ref, rtol):
    scale = np.abs(ref).max()
    for j in range(ref.shape[1]):
        err = min(np.abs(ours[:, j] - ref[:, j]).max(), np.abs(ours[:, j] + ref[:, j]).max())
        assert err <= rtol * scale, (j, err, scale)


def test_exact_when_the_sketch_spans_the_points(tmp_path):
    ps, X = random_walk_points(tmp_path, paths=2, points=5)  # 10 points <= k + oversample
    res = streamed_pca(ps, power_iterations=0, chunk=3)
    for n, x in X.items():
        ref = PCA(2, svd_solver="full").fit(x)
        assert_same_up_to_sign(res[n].coords.numpy(), ref.transform(x), 1e-10)
        np.testing.assert_allclose(res[n].explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-10)
        np.testing.assert_allclose(np.abs(res[n].components.numpy()), np.abs(ref.components_), atol=1e-10)


def test_matches_exact_pca_with_more_points_than_the_sketch(tmp_path):
    ps, X = random_walk_points(tmp_path, paths=4, points=10)  # 40 points, sketch of 12
    res = streamed_pca(ps, power_iterations=2, chunk=7)
    for n, x in X.items():
        ref = PCA(2, svd_solver="full").fit(x)
        assert_same_up_to_sign(res[n].coords.numpy(), ref.transform(x), 1e-6)
        np.testing.assert_allclose(res[n].explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-6)


def test_chunking_does_not_change_the_result(tmp_path):
    ps, _ = random_walk_points(tmp_path, paths=3, points=9)
    a = streamed_pca(ps, chunk=1)
    b = streamed_pca(ps, chunk=100)
    for n in ps.layers:
        torch.testing.assert_close(a[n].coords, b[n].coords, rtol=1e-9, atol=1e-9)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from analysis_runs import shared_runs

    return shared_runs(tmp_path_factory)


def test_pca_of_run_directories_writes_one_panel_per_layer(runs, tmp_path):
    files = run_pca([runs["m2m"], runs["m2o"]], tmp_path / "pca")
    ps = collect_points([runs["m2m"], runs["m2o"]])
    assert len(ps.layers) == 10 and len(ps) == 8  # LeNet5's ten tensors; points 0,2,4,6 of two runs
    assert files["figure"].stat().st_size > 10_000
    rows = files["csv"].read_text().splitlines()
    assert rows[0] == "run,iteration,layer,pc1,pc2" and len(rows) == 1 + 10 * 8
    from safetensors.torch import load_file

    x = np.stack([load_file(str(f))["fc3.weight"].reshape(-1).double().numpy() for f in ps.files])
    ours = np.array([[float(v) for v in r.split(",")[3:]] for r in rows[1:] if ",fc3.weight," in r])
    assert_same_up_to_sign(ours, PCA(2, svd_solver="full").fit_transform(x), 1e-8)


def test_a_folder_without_runs_is_refused(tmp_path):
    from llpf.errors import LLPFError

    with pytest.raises(LLPFError):
        collect_points([tmp_path])


def test_a_truncated_point_file_is_named(tmp_path):
    from llpf.errors import CheckpointError

    ps, _ = random_walk_points(tmp_path, paths=1, points=3)
    ps.files[1].write_bytes(ps.files[1].read_bytes()[:40])
    with pytest.raises(CheckpointError, match=ps.files[1].name):
        streamed_pca(ps)
