"""``python -m llpf`` is the llpf command (the form ``torchrun -m llpf`` launches)."""
import subprocess
import sys


def test_python_dash_m_runs_the_cli_and_returns_its_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "llpf", "train", str(tmp_path / "missing.toml"),
                        "--out", str(tmp_path / "w.safetensors")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"llpf: error: config file not found: {tmp_path / 'missing.toml'}"]


def _modules_after(argv: list[str]) -> tuple[int, set[str], str]:
    """Run ``llpf ARGV`` in a fresh interpreter; its exit code, the modules it imported, and its stdout."""
    code = ("import sys\nfrom llpf.cli import main\nrc = main(sys.argv[1:])\n"
            "print('\\n'.join(sorted(sys.modules)), file=sys.stderr)\nsys.exit(rc)\n")
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    return r.returncode, set(r.stderr.split()), r.stdout


def test_help_lists_every_command_without_importing_torch():
    rc, modules, out = _modules_after(["--help"])
    assert rc == 0 and "m2m" in out and "compare" in out and "reproduce" in out
    assert "torch" not in modules and "torchvision" not in modules


def test_a_command_help_imports_no_torch_either():
    rc, modules, out = _modules_after(["m2m", "--help"])
    assert rc == 0 and "--dest" in out and "--segments" in out
    assert "torch" not in modules


def test_a_command_line_mistake_is_one_line_and_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "llpf", "reproduce", "demo", "--reps", "0", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "llpf reproduce: error: argument --reps: must be at least 1, got 0 (see llpf reproduce --help)"]


def test_torchvision_is_imported_only_when_a_model_or_dataset_needs_it():
    code = ("import sys, llpf\nfrom llpf.config import ModelConfig\ncfg = llpf.load_config('demo')\n"
            "llpf.build_model(cfg.model), llpf.load_data(cfg.data), llpf.m2m, llpf.compare\n"
            "import llpf.runner, llpf.reproduce, llpf.analysis.report, llpf.baselines.m2o_baselines\n"
            "print('torchvision' in sys.modules)\n"
            "llpf.build_model(ModelConfig(name='resnet18'))\nprint('torchvision' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True"]  # LeNet5 on digits never needs it; torchvision's ResNet18 does
