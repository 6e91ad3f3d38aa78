"""The rank sweeps (digits, MNIST-1D) and the ``lottalora`` command, in short versions."""

import os
import subprocess
import sys

import pytest
import torch

import lottalora
from lottalora.cli import build_parser, main
from lottalora.cli.demo import TASKS, SweepResult, load_mnist1d_split, run_sweep, saturation_rank


def test_short_sweep_learns_far_above_chance():
    full, sweep = run_sweep([4], task="digits", epochs=10, hidden=(32, 32), show_progress=False)
    assert full.test_accuracy > 0.6
    (row,) = sweep
    assert row.rank == 4 and row.test_accuracy > 0.5  # chance is 0.1
    assert len(row.betas) == 2 and all(b > 0 for b in row.betas)
    assert row.trainable_params < full.trainable_params


def test_mnist1d_is_generated_offline_with_the_package_defaults_and_leaves_global_seeds_alone():
    import random

    import numpy as np

    np.random.seed(5)
    random.seed(5)
    want = (np.random.rand(), random.random())
    np.random.seed(5)
    random.seed(5)
    x_train, y_train, x_test, y_test = load_mnist1d_split(0, torch.device("cpu"))
    assert (np.random.rand(), random.random()) == want
    assert x_train.shape == (4000, 40) and x_test.shape == (1000, 40) and x_train.dtype == torch.float32
    assert set(y_train.tolist()) == set(range(10)) and y_test.dtype == torch.int64
    assert TASKS["mnist1d"].in_features == 40 and TASKS["mnist1d"].hidden == (256, 256)


def test_one_epoch_mnist1d_sweep_runs_with_the_task_recipe():
    full, (row,) = run_sweep([2], task="mnist1d", epochs=1, hidden=(32, 32), show_progress=False)
    assert full.test_accuracy > 0.15 and row.test_accuracy > 0.12  # chance is 0.1
    assert row.rank == 2 and len(row.betas) == 2


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match="task"):
        run_sweep([1], task="cifar")


def test_saturation_rank_is_the_smallest_within_tolerance():
    full = SweepResult(None, 100, 0.90)
    sweep = [SweepResult(r, r, acc) for r, acc in [(1, 0.80), (2, 0.885), (4, 0.89), (8, 0.95)]]
    assert saturation_rank(full, sweep, 0.02) == 2
    assert saturation_rank(full, sweep, 0.001) == 8  # needs >= 0.8991
    assert saturation_rank(full, sweep[:1], 0.02) is None


def test_demo_command_prints_the_table_and_writes_the_plot(tmp_path, capsys):
    png = tmp_path / "sweep.png"
    assert main(["demo", "--task", "digits", "--ranks", "0,2", "--epochs", "2", "--seeds", "1", "--no-progress",
                 "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| rank | trainable params | test accuracy | ratio to full | betas |" in out
    assert "| full |" in out and "| 0 |" in out and "| 2 |" in out
    assert "saturation rank" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_averages_over_seeds(capsys):
    """The default table: mean +- sd over three seeds, the same rows and parameter counts."""
    assert main(["demo", "--task", "digits", "--ranks", "1", "--epochs", "1", "--hidden", "8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "seeds=0..2" in out and "test accuracy (mean +- sd, 3 seeds)" in out
    row = next(line for line in out.splitlines() if line.startswith("| 1 |"))
    mean, sd = (float(v) for v in row.split("|")[3].split("+-"))
    assert 0.0 < mean < 1.0 and sd >= 0.0


def test_mnist1d_demo_command_names_its_task_and_widths(tmp_path, capsys):
    png = tmp_path / "sweep.png"
    argv = ["demo", "--task", "mnist1d", "--ranks", "1", "--epochs", "1", "--hidden", "16", "--no-progress",
            "--plot", str(png)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("MNIST-1D") and "MLP 40-16-10" in out and "| 1 |" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv,message", [
    (["demo", "--ranks", "1,x"], "--ranks"), (["demo", "--ranks", "-1"], "--ranks"),
    (["demo", "--epochs", "0"], "--epochs"), (["demo", "--init", "normal"], "--init"),
    (["demo", "--hidden", "0"], "--hidden"), (["demo", "--device", "tpu"], "--device"),
    (["demo", "--task", "cifar"], "--task"),
    (["demo", "--rank", "4"], "unrecognized arguments: --rank"),  # no abbreviation of --ranks
    (["demo", "--epoch", "4"], "unrecognized arguments: --epoch"),
])
def test_bad_demo_options_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("option, value, message", [
    ("--tolerance", "nan", "--tolerance must be a finite fraction >= 0, got 'nan'"),
    ("--tolerance", "-0.1", "--tolerance must be a finite fraction >= 0, got '-0.1'"),
    ("--tolerance", "inf", "--tolerance must be a finite fraction >= 0"),
    ("--plot", "{tmp}/missing/x.png", "its directory '{tmp}/missing' does not exist"),
    ("--plot", "{tmp}", "is a directory: give the path of a PNG file"),
    ("--save", "{tmp}/file", "is a file: give a directory"),
    ("--save", "{tmp}/file/sub", "'{tmp}/file' is not a directory"),
    pytest.param("--save", "/proc/nope", "'/proc' is not writable",
                 marks=pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux's /proc")),
])
def test_demo_output_paths_and_tolerance_are_refused_as_the_arguments_are_read(option, value, message, tmp_path,
                                                                               capsys):
    # Parsed alone, so no run trains: a bad --save or --plot used to fail only after training.
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", option, value.format(tmp=tmp_path)])
    assert message.format(tmp=tmp_path) in capsys.readouterr().err


def test_demo_output_paths_that_can_be_written_are_taken(tmp_path):
    args = build_parser().parse_args(["demo", "--save", str(tmp_path / "new" / "ck"), "--plot",
                                      str(tmp_path / "sweep.png"), "--tolerance", "0"])
    assert (args.save, args.plot, args.tolerance) == (str(tmp_path / "new" / "ck"), str(tmp_path / "sweep.png"), 0.0)
    assert not (tmp_path / "new").exists()  # nothing is created before the run


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "lottalora", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "demo" in result.stdout


def test_help_shows_defaults_and_explains_epochs(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.02)" in out and "(default: mnist1d)" in out
    assert "default: the library's, stream v2's binary rademacher" in out
    assert "--epochs EPOCHS training epochs" in out and "digits: 40, mnist1d: 30" in out
    assert "digits: 0,1,2,4,8,16,32, mnist1d: 0,1,2,4,8,16,32,64" in out


def test_info_on_a_missing_directory_says_so(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope")]) == 2
    assert f"{tmp_path / 'nope'} does not exist" in capsys.readouterr().err


def test_the_demo_names_the_extra_it_needs_when_a_package_is_missing(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mnist1d" else real(name, *a))
    assert main(["demo", "--task", "mnist1d", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "mnist1d" in err and 'pip install "lottalora[demo]"' in err


def test_one_epoch_mnist1d_cnn_sweep_seeds_every_conv(monkeypatch):
    import dataclasses

    from lottalora.cli.demo import build_cnn

    # MNIST-1D's shapes without generating it (the loader has its own test): the sweep's plumbing only.
    gen = torch.Generator().manual_seed(0)
    data = (torch.randn(300, 40, generator=gen), torch.randint(0, 10, (300,), generator=gen),
            torch.randn(50, 40, generator=gen), torch.randint(0, 10, (50,), generator=gen))
    monkeypatch.setitem(TASKS, "mnist1d-cnn", dataclasses.replace(TASKS["mnist1d-cnn"], load=lambda s, d: data))
    full, (row,) = run_sweep([2], task="mnist1d-cnn", epochs=1, hidden=(8, 8), show_progress=False)
    assert row.rank == 2 and len(row.betas) == 2 and 0 <= row.test_accuracy <= 1
    assert row.trainable_params < full.trainable_params
    assert all(type(c) is lottalora.Conv1d and c.rank == 2 for c in row.model.convs)
    dense = build_cnn(40, (8, 8), 10, None, None, 0, torch.device("cpu"))
    assert all(type(c) is torch.nn.Conv1d for c in dense.convs) and dense(torch.randn(3, 40)).shape == (3, 10)


def test_one_epoch_mnist1d_cnn_sweep_with_dora_makes_the_adapted_convs_dora(monkeypatch, capsys):
    import dataclasses

    from lottalora.cli.demo import build_cnn

    gen = torch.Generator().manual_seed(0)
    data = (torch.randn(200, 40, generator=gen), torch.randint(0, 10, (200,), generator=gen),
            torch.randn(40, 40, generator=gen), torch.randint(0, 10, (40,), generator=gen))
    monkeypatch.setitem(TASKS, "mnist1d-cnn", dataclasses.replace(TASKS["mnist1d-cnn"], load=lambda s, d: data))
    _, (rank0, rank2) = run_sweep([0, 2], task="mnist1d-cnn", epochs=1, hidden=(4, 4), show_progress=False,
                                  use_dora=True)
    assert all(c.use_dora and c.lora_magnitude.requires_grad for c in rank2.model.convs)
    assert not any(c.use_dora for c in rank0.model.convs)  # rank 0 has no adapter to rescale
    plain = build_cnn(40, (4, 4), 10, 2, None, 0, torch.device("cpu"))
    assert rank2.trainable_params == sum(p.numel() for p in plain.parameters() if p.requires_grad) + 4 + 4
    assert main(["demo", "--task", "mnist1d-cnn", "--dora", "--ranks", "2", "--epochs", "1", "--hidden", "4",
                 "--seeds", "1", "--no-progress"]) == 0
    assert "DoRA" in capsys.readouterr().out
