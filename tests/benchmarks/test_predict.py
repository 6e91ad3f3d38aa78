"""benchmarks.predict: the committed predictions cover the issue's table, and the model uses the
launcher's own tiling (no GPU, no compile: counts are given)."""

import json

from benchmarks import predict
from benchmarks.harness.results import RESULTS_DIR

FIELDS = {"direction", "M", "N", "K", "regime", "launches", "predicted_us", "baseline_us", "predicted_ratio",
          "plain_us"}
COUNTS = {(d, b): 600 for d in ("fwd", "dx") for b in (16, 32, 64)}


def test_committed_predictions_have_a_row_per_direction_and_shape():
    rows = json.loads((RESULTS_DIR / "predicted_sm90.json").read_text())["rows"]
    keys = {(r["direction"], r["M"], r["N"], r["K"]) for r in rows}
    assert keys == {(d, m, nk, nk) for d in ("forward", "forward+backward") for m in predict.MS for nk in predict.NKS}
    assert all(FIELDS <= set(r) and r["regime"] == "one_pass" for r in rows)
    assert all(abs(r["predicted_ratio"] - r["predicted_us"] / r["baseline_us"]) < 2e-3 for r in rows)


def test_the_model_launches_what_the_launcher_launches():
    """Small M splits the reduction to fill the SMs; large M fills them with tiles of 64 rows."""
    small = predict.one_pass_launch(1, 4096, 4096, False, COUNTS)
    large = predict.one_pass_launch(8192, 4096, 4096, False, COUNTS)
    assert small.block_m == 16 and small.splits > 1 and small.tiles == 16
    assert large.block_m == 64 and large.splits == 1 and large.tiles == 16 * 128
    assert predict.one_pass_launch(8192, 4096, 4096, True, COUNTS).block_m == 64  # sm_90's input gradient
    rows = predict.rows(COUNTS, ms=(1, 8192), nks=(4096,))
    assert [r["launches"] for r in rows] == [1, 7, 1, 7]


def test_whole_model_predictions_respect_the_floors():
    """The stored bf16 decode step is at least its weights' bytes over HBM; the seeded step reads
    no weight bytes, so it is below that and above the launches alone; training adds a dW GEMM
    per linear for full training only."""
    rows = {(r["case"], r["batch"], r["variant"]): r for r in predict.e2e_rows(COUNTS)}
    weight_bytes = 2 * 32 * (2 * 4096 * 4096 + 2 * 1024 * 4096 + 3 * 4096 * 14336) + 2 * 128256 * 4096
    for batch in (1, 16):
        bf16, seeded = rows[("decode 8B", batch, "bf16")], rows[("decode 8B", batch, "seeded")]
        assert bf16["step_us"] * 1e-6 >= weight_bytes / predict.HBM_BYTES_PER_S
        assert seeded["step_us"] < bf16["step_us"] and seeded["vs_bf16"] > 1
        assert seeded["step_us"] * 1e-6 > 32 * (7 + predict.DECODE_OTHER_KERNELS) * predict.LAUNCH_S
        assert abs(seeded["tokens_per_s"] - batch / (seeded["step_us"] * 1e-6)) / seeded["tokens_per_s"] < 1e-3
    train = {v: rows[("train 1.26B", predict.TRAIN_BATCH, v)]["step_us"] for v in ("lottalora", "peft_lora", "full")}
    assert train["full"] > train["peft_lora"]


def test_committed_whole_model_predictions_cover_decode_and_training():
    rows = json.loads((RESULTS_DIR / "predicted_e2e.json").read_text())["rows"]
    assert {(r["case"], r["batch"], r["variant"]) for r in rows} == (
        {("decode 8B", b, v) for b in (1, 16) for v in ("seeded", "bf16", "int4")}
        | {("train 1.26B", predict.TRAIN_BATCH, v) for v in ("lottalora", "peft_lora", "full")})
