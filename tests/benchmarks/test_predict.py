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
