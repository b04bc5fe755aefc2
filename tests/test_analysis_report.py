"""The analysis commands end to end on tiny runs, the M2O curve, and the offline HTML report in Chromium."""
import json
import re
import shutil
import subprocess

import pytest

from llpf.cli import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from analysis_runs import shared_runs

    return shared_runs(tmp_path_factory)


def test_generalisation_marks_the_selected_point(runs, tmp_path):
    from llpf.analysis.generalisation import analyse_generalisation, write_generalisation

    r = analyse_generalisation([runs["m2o"].parent])  # a folder of runs: only the M2O one is taken
    (run,) = r["runs"]
    s = json.loads((runs["m2o"] / "summary.json").read_text())
    assert run["best"]["iteration"] == s["best_iteration"] and run["best"]["selected_on"] == "test"
    i = run["curve"]["iteration"].index(s["best_iteration"])
    assert run["best"]["test_loss"] == min(run["curve"]["test_loss"]) == run["curve"]["test_loss"][i]
    assert run["curve"]["mean_variance_ratio"][0] == 1.0
    assert write_generalisation(r, tmp_path)["figure"].stat().st_size > 10_000


def test_cli_commands_write_their_outputs(runs, tmp_path, capsys):
    cfg, a, b = str(runs["config"]), str(runs["a"]), str(runs["b"])
    assert main(["barrier", cfg, a, b, "--out", str(tmp_path / "barrier"), "--points", "3"]) == 0
    assert json.loads((tmp_path / "barrier" / "barrier.json").read_text())["points"] == 3
    assert main(["variance", cfg, a, b, "--out", str(tmp_path / "variance")]) == 0
    assert main(["dim", a, cfg, "--moves", "4", "--rounds", "1", "--batch-size", "32", "--layers", "fc3.*",
                 "--out", str(tmp_path / "dim"), "--quiet"]) == 0
    d = json.loads((tmp_path / "dim" / "dimension.json").read_text())
    assert list(d["layers"]) == ["fc3.weight", "fc3.bias"] and d["layers"]["fc3.bias"]["structural_bound"] == 4
    assert main(["segments", str(runs["m2m"]), "--points-per-segment", "1", "--quiet"]) == 0
    assert "segment_max_train_loss" in json.loads((runs["m2m"] / "summary.json").read_text())
    assert main(["pca", str(runs["m2m"]), "--out", str(tmp_path / "pca")]) == 0
    assert main(["generalisation", str(runs["m2o"]), "--out", str(tmp_path / "gen")]) == 0
    out = capsys.readouterr().out
    assert "straight line: max training loss" in out and "dead units:" in out
    # a user mistake is one line and exit 2
    assert main(["pca", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "x")]) == 2
    assert "llpf: error:" in capsys.readouterr().err


def test_analysis_outputs_refuse_a_non_empty_folder_unless_forced(runs, tmp_path, capsys):
    cfg, a, b, m2o = str(runs["config"]), str(runs["a"]), str(runs["b"]), str(runs["m2o"])
    commands = {"pca": ["pca", m2o], "dim": ["dim", a, cfg, "--moves", "2", "--rounds", "1", "--quiet"],
                "variance": ["variance", cfg, a, b], "barrier": ["barrier", cfg, a, b, "--points", "2"],
                "generalisation": ["generalisation", m2o], "report": ["report", m2o, "--no-pca"]}
    for name, args in commands.items():
        out = tmp_path / name
        out.mkdir()
        (out / "earlier.txt").write_text("earlier")
        assert main(args + ["--out", str(out)]) == 2, name
        err = capsys.readouterr().err.splitlines()
        assert err == [f"llpf: error: output folder {out} is not empty; choose another --out or pass --force"], name
        assert [p.name for p in out.iterdir()] == ["earlier.txt"], name
    for name in ("variance", "generalisation", "report", "pca"):  # --force writes over an earlier output
        out = tmp_path / name
        assert main(commands[name] + ["--out", str(out), "--force"]) == 0, name
        assert (out / "earlier.txt").read_text() == "earlier" and len(list(out.iterdir())) > 1, name
    assert main(commands["report"] + ["--out", str(tmp_path / "report"), "--force"]) == 0  # and again
    # ... but never over a run directory, nor onto a file
    capsys.readouterr()
    assert main(commands["variance"] + ["--out", m2o, "--force"]) == 2
    assert capsys.readouterr().err.strip() == f"llpf: error: {m2o} holds an llpf run; choose another --out"
    assert main(commands["variance"] + ["--out", str(tmp_path / "variance" / "earlier.txt")]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err


def test_m2m_with_segments_and_the_demo_straight_line(runs, tmp_path, capsys):
    from llpf.config import load_config
    from llpf.demo import straight_line_summary
    from llpf.runner import prepare_data

    cfg, a, b = str(runs["config"]), str(runs["a"]), str(runs["b"])
    out = tmp_path / "m2m"
    assert main(["m2m", cfg, "--start", a, "--dest", b, "--out", str(out), "--segments",
                 "--segment-points", "1", "--quiet"]) == 0  # the run completes (exit 1 is a failed run)
    s = json.loads((out / "summary.json").read_text())
    # random endpoints: the path completes but is not a low-loss path (training loss ~2.3 > 0.1)
    assert s["status"] == "complete" and s["iterations"] == 6 and s["loss_ok"] is False and s["valid"] is False
    assert s["max_train_loss"] > 2.0
    assert "segment_max_train_loss" in s and (out / "segments.json").is_file()
    assert "straight segments between saved points peak at" in capsys.readouterr().out
    c = load_config(cfg)
    extra = straight_line_summary(c, runs["a"], runs["b"], out, prepare_data(c, "cpu"), "cpu")
    s2 = json.loads((out / "summary.json").read_text())
    assert s2["straight_line_max_train_loss"] == extra["straight_line_max_train_loss"] > 0
    assert s2["segment_max_train_loss"] == s["segment_max_train_loss"]
    assert (out / "straight_line.json").is_file() and (out / "figures" / "straight_line.png").is_file()


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_is_offline_and_every_image_loads(runs, tmp_path):
    from llpf.analysis.report import build_report

    dim = tmp_path / "dim"
    assert main(["dim", str(runs["a"]), str(runs["config"]), "--moves", "3", "--rounds", "1", "--batch-size", "32",
                 "--layers", "fc3.*", "--out", str(dim), "--quiet"]) == 0
    index = build_report([runs["m2m"].parent, dim], tmp_path / "report")
    page = index.read_text()
    for section in ("M2M run", "M2O run", "Per-layer PCA", "generalisation", "Dimensionality", "resolved config"):
        assert section in page, section
    # nothing external: no http(s) references, no scripts, no external stylesheets or fonts
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page.lower() and "@import" not in page and "<link" not in page.lower()
    srcs = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert len(srcs) >= 5 and all(s.startswith("data:image/png;base64,") for s in srcs)

    browser = chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): the page was checked statically only")
    probe = tmp_path / "report" / "probe.html"
    probe.write_text(page.replace("</body>", (
        "<script>window.addEventListener('load',()=>{const a=[...document.images];"
        "const ok=a.filter(i=>i.complete&&i.naturalWidth>0).length;const d=document.createElement('div');"
        "d.id='probe';d.textContent='images='+a.length+' loaded='+ok;document.body.appendChild(d);});"
        "</script></body>")))
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    found = re.search(r'id="probe">images=(\d+) loaded=(\d+)<', res.stdout)
    assert found, res.stderr[-2000:]
    assert found.group(1) == found.group(2) == str(len(srcs))
    assert "CONSOLE" not in res.stderr, res.stderr  # no console message: no error, no blocked request
