"""The digits rank sweep and the ``lottalora`` command, in short versions."""

import subprocess
import sys

import pytest

from lottalora.cli import main
from lottalora.demo import SweepResult, run_sweep, saturation_rank


def test_short_sweep_learns_far_above_chance():
    full, sweep = run_sweep([4], epochs=10, hidden=(32, 32), show_progress=False)
    assert full.test_accuracy > 0.6
    (row,) = sweep
    assert row.rank == 4 and row.test_accuracy > 0.5  # chance is 0.1
    assert len(row.betas) == 2 and all(b > 0 for b in row.betas)
    assert row.trainable_params < full.trainable_params


def test_saturation_rank_is_the_smallest_within_tolerance():
    full = SweepResult(None, 100, 0.90)
    sweep = [SweepResult(r, r, acc) for r, acc in [(1, 0.80), (2, 0.885), (4, 0.89), (8, 0.95)]]
    assert saturation_rank(full, sweep, 0.02) == 2
    assert saturation_rank(full, sweep, 0.001) == 8  # needs >= 0.8991
    assert saturation_rank(full, sweep[:1], 0.02) is None


def test_demo_command_prints_the_table_and_writes_the_plot(tmp_path, capsys):
    png = tmp_path / "sweep.png"
    assert main(["demo", "--ranks", "0,2", "--epochs", "2", "--no-progress", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| rank | trainable params | test accuracy | ratio to full | betas |" in out
    assert "| full |" in out and "| 0 |" in out and "| 2 |" in out
    assert "saturation rank" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv,message", [
    (["demo", "--ranks", "1,x"], "--ranks"), (["demo", "--ranks", "-1"], "--ranks"),
    (["demo", "--epochs", "0"], "--epochs"), (["demo", "--init", "normal"], "--init"),
    (["demo", "--hidden", "0"], "--hidden"), (["demo", "--device", "tpu"], "--device"),
])
def test_bad_demo_options_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "lottalora", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "demo" in result.stdout
