"""Figures are drawn without pyplot: importing llpf keeps the caller's matplotlib backend."""
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import importlib
    import pkgutil
    import sys
    from pathlib import Path

    import matplotlib
    matplotlib.use("svg")

    import llpf
    import llpf.analysis
    import llpf.plots
    for m in pkgutil.iter_modules(llpf.analysis.__path__):
        importlib.import_module(f"llpf.analysis.{m.name}")
    assert matplotlib.get_backend() == "svg", f"backend after import: {matplotlib.get_backend()}"

    from llpf.analysis.barriers import write_barrier
    from llpf.plots import paths_figure

    out = Path(sys.argv[1])
    rows = [{"iteration": i, "batch_loss": 1.0 / (i + 1), "train_loss": 1.0 / (i + 1), "dist/w": 2.0 - i / 10,
             "test_loss": 0.5, "test_accuracy": 0.9} for i in range(12)]
    paths_figure([rows, rows], out / "path.png", "two runs")
    line = [{"t": t / 4, "train_loss": 0.1 + t * (4 - t) / 8, "train_accuracy": 0.9} for t in range(5)]
    write_barrier(line, out, name="line")
    assert matplotlib.get_backend() == "svg", f"backend after drawing: {matplotlib.get_backend()}"
    print("pyplot imported:", "matplotlib.pyplot" in sys.modules)
""")


def test_importing_llpf_keeps_the_backend_and_figures_are_still_written(tmp_path):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "pyplot imported: False" in r.stdout
    for name in ("path.png", "line.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000, name
