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
    assert methods == {"seeded", "cublas+lora", "regen+matmul"}
    assert all(r["forward_s"] > 0 and r["fwd_bwd_s"] > 0 for r in data["rows"]["rows"])


def test_checkpoint_size_run_writes_results(tmp_path):
    from benchmarks.checkpoint_size import main

    assert main(["--configs", "tiny", "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "checkpoint_size.json").read_text())["rows"]
    assert row["config"] == "tiny" and 0 < row["checkpoint_bytes"] and row["dense_fp16_bytes"] > 0
