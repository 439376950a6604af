"""The benchmark harness's columns (p20-p80 spread, error vs float64, setting, commit) and the
flamingo bench's per-image SDPA anchor."""
import math

import pytest
import torch

import fmkit.bench as bench
from fmkit.bench.flamingo import LATENTS_PER_MEDIA, _image_runs, sdpa_per_image
from fmkit.reference.media_cross_attention import media_cross_attention_reference


def test_percentile_interpolates_and_spread_text_reports_p20_p80():
    times = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert bench.percentile(times, 0.5) == 3.5
    assert bench.percentile(times, 0.2) == pytest.approx(2.0)
    assert bench.percentile(times, 0.8) == pytest.approx(5.0)
    assert math.isnan(bench.percentile([], 0.5))
    assert bench.spread_text(times) == "-43/+43% (n=6)"
    assert bench.spread_text([1.0]) == "1 run"


def test_rel_err_and_accuracy_flag_a_wrong_contender():
    ref = torch.randn(100, dtype=torch.float64)
    good, bad = ref.float(), ref.float() + 0.1
    contenders = [("good", lambda: good, False), ("bad", lambda: bad, True),
                  ("missing", bench.unavailable("not installed"), True), ("broken", lambda: 1 / 0, True)]
    acc = bench.accuracy(contenders, lambda fn: fn(), ref)
    assert acc["good"] < 1e-7 and acc["bad"] > 1e-2
    assert "missing" not in acc and math.isnan(acc["broken"])
    assert bench.rel_err((good, bad), (ref, ref)) == acc["bad"]  # tuples: the worst pair


def test_run_writes_the_new_columns(tmp_path):
    ref = torch.ones(4, dtype=torch.float64)
    case = {"shape": "tiny", "flops": 1.0, "repeats": 3,
            "contenders": [("fmkit", lambda: ref.float(), False), ("anchor", lambda: ref.float() * 2, True)],
            "accuracy": {"fmkit": 0.0, "anchor": 1.0}, "settings": {"anchor": "its best setting"}}

    class Module:
        @staticmethod
        def cases(device, quick):
            return [case]

    bench.REGISTRY["_tiny"] = Module
    try:
        rows = bench.run(["_tiny"], True, torch.device("cpu"), json_path=str(tmp_path / "r.json"), progress=False)
    finally:
        del bench.REGISTRY["_tiny"]
    import json

    data = json.load(open(tmp_path / "r.json"))
    assert "commit" in data["meta"]
    row = {r["contender"]: r for r in data["rows"]}
    assert row["anchor"]["setting"] == "its best setting" and row["anchor"]["rel_err_fp64"] == 1.0
    assert len(row["fmkit"]["times_ms"]) == 3
    assert row["fmkit"]["p20_ms"] <= row["fmkit"]["median_ms"] <= row["fmkit"]["p80_ms"]
    table = "\n".join(bench.format_table(rows))
    assert "err vs fp64" in table and "its best setting" in table and "1.0e+00" in table


def test_per_image_sdpa_anchor_equals_the_reference():
    """Tokens before the first image get 0, image 2 has no tokens, runs of any length."""
    g = torch.Generator().manual_seed(0)
    B, H, T, D, images = 2, 3, 11, 8, 4
    q = torch.randn(B, H, T, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, H, images * LATENTS_PER_MEDIA, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, images * LATENTS_PER_MEDIA, D, generator=g, dtype=torch.float64)
    index = torch.tensor([0, 0, 1, 1, 1, 3, 3, 4, 4, 4, 4]).expand(B, T)
    runs = _image_runs(index)
    assert runs == [(0, 0, 2), (1, 2, 5), (3, 5, 7), (4, 7, 11)]
    out = sdpa_per_image(q, k, v, runs)
    ref = media_cross_attention_reference(q, k, v, index, LATENTS_PER_MEDIA, D**-0.5)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert (out[:, :, :2] == 0).all()
    with pytest.raises(ValueError, match="media_index"):
        _image_runs(torch.tensor([[0, 1], [1, 1]]))
