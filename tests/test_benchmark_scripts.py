"""The benchmark scripts' quick modes run end to end (CI runs them so they cannot rot)."""

import json

import pytest

pytest.importorskip("transformers")


def test_memory_quick_run_writes_results(tmp_path):
    from benchmarks.memory import main

    assert main(["--quick", "--out", str(tmp_path), "--device", "cpu"]) == 0
    data = json.loads((tmp_path / "memory_cpu.json").read_text())
    runs = data["rows"]["runs"]
    assert {(r["variant"], r["phase"]) for r in runs} == {(v, p) for v in ("full", "lora", "lottalora")
                                                            for p in ("forward", "train", "decode")}
    seeded = [r for r in runs if r["variant"] == "lottalora"]
    full = [r for r in runs if r["variant"] == "full"]
    assert all(r["stored_params"] < f["stored_params"] for r, f in zip(seeded, full, strict=True))
    assert all(r["peak_bytes"] > 0 for r in runs)
    assert data["environment"]["device"].startswith("CPU")
    assert (tmp_path / "memory_cpu.md").read_text().startswith("# memory_cpu")
    assert (tmp_path / "memory_cpu.png").read_bytes()[:4] == b"\x89PNG"


def test_speed_quick_run_writes_results(tmp_path, monkeypatch):
    from benchmarks.speed import main

    monkeypatch.setenv("LOTTALORA_BACKEND", "torch")
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "speed_cpu_quick.json").read_text())
    methods = {r["method"] for r in data["rows"]["rows"]}
    assert methods == {"seeded", "cublas+lora"}  # the forced regimes run on a GPU only
    assert all(r["forward_s"] > 0 and r["fwd_bwd_s"] > 0 for r in data["rows"]["rows"])
    assert data["rows"]["generation_values_per_s"]["torch_backend_generator"] > 0


def test_checkpoint_size_quick_run_writes_what_it_measured(tmp_path):
    import torch

    import lottalora
    from benchmarks.checkpoint_size import main
    from benchmarks.llama import build, parameter_count

    assert main(["--quick", "--out", str(tmp_path / "results")]) == 0
    data = json.loads((tmp_path / "results" / "checkpoint_size.json").read_text())
    (row,) = data["rows"]
    assert row["config"] == "tiny" and row["dense_params"] == parameter_count("tiny")
    assert row["dense_fp16_bytes"] == 2 * row["dense_params"]
    assert row["ratio"] == pytest.approx(row["dense_fp16_bytes"] / row["checkpoint_bytes"])
    assert row["peak_rss_bytes"] > 0
    # The bytes it reports are what lottalora.save writes for the same model (sizes depend only on shapes).
    lottalora.save(build("tiny", "lottalora", dtype=torch.bfloat16), tmp_path / "saved")
    assert row["checkpoint_bytes"] == sum(p.stat().st_size for p in (tmp_path / "saved").iterdir())
    table = (tmp_path / "results" / "checkpoint_size.md").read_text()
    assert table.startswith("# checkpoint_size") and data["environment"]["date"] in table
    assert f"| tiny | {row['checkpoint_bytes'] / 2**20:,.1f} |" in table and f"| {row['ratio']:.1f}x |" in table


def test_kernel_report_quick_run_counts_the_shipped_kernels(tmp_path):
    """Compiles for sm_90 in a subprocess without TRITON_INTERPRET (the test process has it)."""
    from .helpers import run_uninterpreted

    out = run_uninterpreted("-m", "benchmarks.kernel_report", "--quick")
    assert "seeded_decode fwd (Gluon, shipped)" in out.stdout and "seeded_decode dx (Gluon, shipped)" in out.stdout
    assert "backbone_gen v2" in out.stdout


def test_stream_science_quick_run(tmp_path):
    from benchmarks.stream_science import main

    assert main(["--quick"]) == 0


def test_stream_science_defaults_are_what_the_committed_results_ran():
    from benchmarks.results import RESULTS_DIR
    from benchmarks.stream_science import RANKS, SEEDS, TASKS

    runs = json.loads((RESULTS_DIR / "stream_science.json").read_text())["rows"]["runs"]
    assert sorted({r["seed"] for r in runs}) == SEEDS
    assert sorted({r["rank"] for r in runs}) == RANKS and sorted({r["task"] for r in runs}) == sorted(TASKS)


def test_fsdp_bytes_quick_run_counts_only_parameter_collectives(tmp_path):
    from benchmarks.fsdp_bytes import main

    assert main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "fsdp_bytes.json").read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    assert set(rows) == {"full", "lora", "lottalora"}
    for r in rows.values():
        assert all(s["other_ops"] == [] and s["other_bytes"] == 0 for s in r["steps"])
        assert r["all_gather_bytes"] > 0 and r["reduce_scatter_bytes"] > 0
    # The stored backbones are gathered (twice per layer: forward and backward), seeds never are.
    gathered = {v: r["all_gather_bytes"] for v, r in rows.items()}
    assert gathered["lottalora"] < gathered["lora"] < 2 * gathered["full"]
    assert rows["lottalora"]["reduce_scatter_bytes"] < rows["full"]["reduce_scatter_bytes"]
    assert (tmp_path / "fsdp_bytes.md").read_text().startswith("# fsdp_bytes")


def test_tp_memory_quick_run_writes_results(tmp_path):
    from benchmarks.tp_memory import main

    assert main(["--quick", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "tp_memory.json").read_text())["rows"]
    assert {(r["variant"], r["phase"]) for r in rows} == {(v, p) for v in ("stored", "lottalora")
                                                          for p in ("forward", "train")}
    params = {r["variant"]: r["param_bytes_per_rank"] for r in rows}
    assert params["lottalora"] < params["stored"] == 3 * 64 * 160 * 2 * 4 // 2  # fp32 shards: half each
    assert all(len(r["per_rank"]) == 2 for r in rows)


def test_profile_script_refuses_without_a_gpu(capsys):
    import pytest
    import torch

    from benchmarks import profile

    if torch.cuda.is_available():
        pytest.skip("has a GPU: the script would profile")
    with pytest.raises(SystemExit):
        profile.main(["--m", "1", "--nk", "64"])
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_launch_count_counts_what_an_eager_step_launches(tmp_path):
    """The host-side budget of a layer call, counted without a GPU: the decode forward is its two
    kernels (x @ A^T rides in the first), and a two-phase backward launches no more than the
    stored-weight baseline's eleven plus one. A change that adds a launch fails here."""
    from benchmarks.launch_count import main

    assert main(["--out", str(tmp_path)]) == 0
    rows = {(r["M"], r["method"]): r for r in json.loads((tmp_path / "launch_count.json").read_text())["rows"]}
    decode, two_phase = rows[(1, "seeded")], rows[(64, "seeded")]
    assert (decode["regime"], two_phase["regime"]) == ("decode", "two_phase")
    assert (decode["forward_triton"], decode["forward_aten"]) == (2, 0)
    assert decode["backward_launches"] <= 7
    assert two_phase["forward_triton"] == 4 and two_phase["forward_aten"] == 3  # 2 chunks: generate + epilogue each
    baseline = rows[(64, "stored+lora")]
    assert baseline["backward_aten_ops"]["mm"] == 5 and baseline["forward_launches"] == 7
    assert two_phase["backward_launches"] <= baseline["backward_launches"] + 1


def test_decode_tuning_refuses_without_a_gpu_and_sweeps_what_a_launch_accepts(capsys):
    import torch

    from benchmarks import decode_tuning
    from lottalora_kernels import seeded_decode

    assert max(decode_tuning.SPLITS) <= seeded_decode.MAX_SPLITS
    if torch.cuda.is_available():
        pytest.skip("has a GPU: the script would time")
    with pytest.raises(SystemExit):
        decode_tuning.main([])
    assert "needs a CUDA GPU" in capsys.readouterr().err
    # The sweep's own logic, interpreted on a small shape with a stand-in timer that runs each
    # launch once (its output checked by the decode tests): every config it would time launches.
    calls = []
    rows = decode_tuning.tune_shape(3, 512, lambda fn: calls.append(fn()) or 1e-6 * len(calls), device="cpu")
    assert len(calls) == len(rows) and sum(r["default"] for r in rows) == 1 and sum(r["best"] for r in rows) == 1
    assert {(r["num_warps"], r["split_k"]) for r in rows} == {(4, 2), (2, 4), (4, 4)}  # four spans: no more splits
