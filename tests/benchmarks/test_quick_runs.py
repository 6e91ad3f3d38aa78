"""The benchmark scripts' quick modes run end to end, as a user runs them (``python -m
benchmarks.NAME``, in a process of their own), so they cannot rot. The tests read what the
scripts wrote; they import nothing from benchmarks/."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.support.processes import ROOT, run_uninterpreted

pytest.importorskip("transformers")


def run_script(*argv: str, env: dict | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    """``python -m benchmarks.<argv>`` from the repository root, in this process's environment
    (the interpreter on a CPU machine) plus ``env``."""
    out = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, env={**os.environ, **(env or {})},
                         capture_output=True, text=True)
    if ok:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_memory_quick_run_writes_results(tmp_path):
    run_script("benchmarks.memory", "--quick", "--out", str(tmp_path), "--device", "cpu")
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


def test_speed_quick_run_writes_results(tmp_path):
    run_script("benchmarks.speed", "--quick", "--out", str(tmp_path), env={"LOTTALORA_BACKEND": "torch"})
    data = json.loads((tmp_path / "speed_cpu_quick.json").read_text())
    methods = {r["method"] for r in data["rows"]["rows"]}
    assert methods == {"seeded", "cublas+lora", "cublas"}  # the forced regimes and one-pass run on a GPU only
    assert all(r["forward_s"] > 0 and r["fwd_bwd_s"] > 0 for r in data["rows"]["rows"])
    seeded = [r for r in data["rows"]["rows"] if r["method"] == "seeded"]
    assert all(r["forward_vs_cublas_ratio"] > 0 and r["fwd_bwd_ratio"] > 0 for r in seeded)
    assert data["rows"]["generation_values_per_s"]["torch_backend_generator"] > 0


def test_checkpoint_size_quick_run_writes_what_it_measured(tmp_path):
    run_script("benchmarks.checkpoint_size", "--quick", "--out", str(tmp_path))
    data = json.loads((tmp_path / "checkpoint_size.json").read_text())
    (row,) = data["rows"]
    assert row["config"] == "tiny" and row["dense_params"] > 0
    assert row["dense_fp16_bytes"] == 2 * row["dense_params"]
    assert row["ratio"] == pytest.approx(row["dense_fp16_bytes"] / row["checkpoint_bytes"])
    assert row["peak_rss_bytes"] > 0
    table = (tmp_path / "checkpoint_size.md").read_text()
    assert table.startswith("# checkpoint_size") and data["environment"]["date"] in table
    assert f"| tiny | {row['checkpoint_bytes'] / 2**20:,.1f} |" in table and f"| {row['ratio']:.1f}x |" in table


def test_kernel_report_quick_run_counts_the_shipped_kernels():
    """Compiles for sm_90 in a subprocess without TRITON_INTERPRET (the test process has it)."""
    out = run_uninterpreted("-m", "benchmarks.kernel_report", "--quick")
    assert "seeded_decode fwd (Gluon, shipped)" in out.stdout and "seeded_decode dx (Gluon, shipped)" in out.stdout
    assert "backbone_gen v2" in out.stdout


def test_host_time_quick_run_times_both_launch_paths(tmp_path):
    run_uninterpreted("-m", "benchmarks.host_time", "--quick", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "host_time.json").read_text())["rows"]
    launches = {r["case"]: r["triton_launches"] for r in rows}
    assert launches["one epilogue launch"] == 1
    assert [n for case, n in launches.items() if "decode" in case] == [2, 2, 4]  # inference, forward, + backward
    assert all(r["triton_launch_us"] > 0 and r["direct_launch_us"] > 0 for r in rows)


def test_stream_science_quick_run(tmp_path):
    run_script("benchmarks.stream_science", "--quick")


def test_fsdp_bytes_quick_run_counts_only_parameter_collectives(tmp_path):
    run_script("benchmarks.fsdp_bytes", "--quick", "--out", str(tmp_path))
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
    run_script("benchmarks.tp_memory", "--quick", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "tp_memory.json").read_text())["rows"]
    assert {(r["variant"], r["phase"]) for r in rows} == {(v, p) for v in ("stored", "lottalora")
                                                          for p in ("forward", "train")}
    params = {r["variant"]: r["param_bytes_per_rank"] for r in rows}
    assert params["lottalora"] < params["stored"] == 3 * 64 * 160 * 2 * 4 // 2  # fp32 shards: half each
    assert all(len(r["per_rank"]) == 2 for r in rows)


@pytest.mark.parametrize("script", [["benchmarks.profile", "--m", "1", "--nk", "64"], ["benchmarks.decode_tuning"]])
def test_gpu_only_scripts_refuse_without_a_gpu(script):
    if torch.cuda.is_available():
        pytest.skip("has a GPU: the script would time")
    out = run_script(*script, ok=False)
    assert out.returncode != 0 and "needs a CUDA GPU" in out.stderr


def test_launch_count_counts_what_an_eager_step_launches(tmp_path):
    """The host-side budget of a layer call, counted without a GPU: the decode forward is its two
    kernels (x @ A^T rides in the first), and a two-phase backward launches no more than the
    stored-weight baseline's eleven plus one. A change that adds a launch fails here."""
    run_script("benchmarks.launch_count", "--out", str(tmp_path))
    rows = {(r["M"], r["method"]): r for r in json.loads((tmp_path / "launch_count.json").read_text())["rows"]}
    decode, two_phase = rows[(1, "seeded")], rows[(64, "seeded")]
    assert (decode["regime"], two_phase["regime"]) == ("decode", "two_phase")
    assert (decode["forward_triton"], decode["forward_aten"]) == (2, 0)
    assert decode["backward_launches"] <= 7
    assert two_phase["forward_triton"] == 4 and two_phase["forward_aten"] == 3  # 2 chunks: generate + epilogue each
    baseline = rows[(64, "stored+lora")]
    assert baseline["backward_aten_ops"]["mm"] == 5 and baseline["forward_launches"] == 7
    assert two_phase["backward_launches"] <= baseline["backward_launches"] + 1
    # The one-pass regime (issue 19's one launch per op): the forward is one launch at every M, the
    # input gradient one launch plus cuBLAS for dy @ B, dA and dB (and the gradient sums).
    for m in (1, 64):
        one = rows[(m, "seeded, one_pass on")]
        assert one["regime"] == "one_pass" and (one["forward_triton"], one["forward_aten"]) == (1, 0)
        assert one["backward_triton"] == 1 and one["backward_aten_ops"].get("cat", 0) == 0


def test_generate_quick_run_measures_every_variant(tmp_path):
    run_script("benchmarks.generate", "--quick", "--out", str(tmp_path))
    data = json.loads((tmp_path / "generate_cpu.json").read_text())
    rows = data["rows"]["rows"]
    assert {(r["variant"], r["batch"]) for r in rows} == {(v, b) for v in ("seeded", "bf16", "int4") for b in (1, 16)}
    assert all(r["tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0 and r["peak_bytes"] > 0 for r in rows)
    held = {r["variant"]: r["model_bytes"] for r in rows}
    assert held["seeded"] < held["bf16"] and held["int4"] < held["bf16"]  # no stored backbone; 4-bit weights
    assert {r["against"] for r in data["rows"]["ratios"]} == {"bf16", "int4"}
    assert data["environment"]["device"].startswith("CPU")
    assert (tmp_path / "generate_cpu.md").read_text().startswith("# generate_cpu")
    assert (tmp_path / "generate_cpu.png").read_bytes()[:4] == b"\x89PNG"


def test_train_quick_run_measures_a_step_of_every_variant(tmp_path):
    run_script("benchmarks.train", "--quick", "--out", str(tmp_path))
    data = json.loads((tmp_path / "train_cpu.json").read_text())
    rows = {r["variant"]: r for r in data["rows"]["rows"]}
    assert set(rows) == {"lottalora", "peft_lora", "full"}
    assert all(r["tokens_per_s"] > 0 and r["peak_bytes"] > 0 and r["mode"] == "eager" for r in rows.values())
    # The recipe trains adapters, embeddings, norms and head; PEFT the same modules; full everything.
    assert rows["lottalora"]["trainable_params"] < rows["full"]["trainable_params"]
    assert rows["peft_lora"]["trainable_params"] < rows["full"]["trainable_params"]
    assert rows["lottalora"]["model_bytes"] < rows["peft_lora"]["model_bytes"] < rows["full"]["model_bytes"]
    assert {r["against"] for r in data["rows"]["ratios"]} == {"peft_lora", "full"}
    assert (tmp_path / "train_cpu.md").read_text().startswith("# train_cpu")
