"""``python -m llpf`` is the llpf command (the form ``torchrun -m llpf`` launches)."""
import subprocess
import sys


def test_python_dash_m_runs_the_cli_and_returns_its_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "llpf", "train", str(tmp_path / "missing.toml"),
                        "--out", str(tmp_path / "w.safetensors")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"llpf: error: config file not found: {tmp_path / 'missing.toml'}"]
