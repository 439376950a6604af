"""`fmkit bench --op factscore` at its quick size (tiny random Llama, 12 facts of 3 topics): the
summary after the cases reports the spread of both paths (per-fact s/fact and fmkit's s/fact per
prefix group, with the ratio of their medians), CPU seconds per fact, the load around each timed
call, and the interleaved rerun (both paths topic by topic in alternating order) with its pooled
ratio and decision agreement."""
import pytest
import torch

pytest.importorskip("transformers")


@pytest.mark.slow
def test_quick_bench_summary_has_spread_cpu_load_and_interleaved_rerun(monkeypatch, capsys):
    from fmkit import bench
    from fmkit.bench import factscore

    monkeypatch.setattr(bench, "measured_peak", lambda device, dtype=None: 100.0)
    rows = bench.run(["factscore"], True, torch.device("cpu"), progress=False)
    out = capsys.readouterr().out
    verify = [r for r in rows if "facts" in r["shape"]]
    assert {r["contender"] for r in verify} >= {"per-fact generate, 1 token (OpenFActScore's path)",
                                                 "fmkit batched, shared prefix"}
    assert all(r["exact"] for r in verify if not r["anchor"])
    r = factscore.summary()
    repeats = factscore.SIZES[True]["repeats"]
    assert r["agreement"] == 1.0 and r["facts"] == r["anchor_facts"] == 12 and r["groups"] == 3
    p10, p50, p90 = r["fmkit_group_s_per_fact_p10_p50_p90"]
    assert 0 < p10 <= p50 <= p90
    assert r["ratio_of_p50"] == pytest.approx(r["anchor_s_per_fact_p10_p50_p90"][1] / p50)
    assert r["anchor_cpu_s_per_fact"] > 0 and r["fmkit_cpu_s_per_fact"] > 0
    assert len(r["loadavg_1min_anchor_calls"]) == len(r["loadavg_1min_fmkit_calls"]) == repeats
    assert "spread: fmkit s/fact per prefix group" in out and "CPU s/fact" in out

    p = factscore.paired()  # a second interleaved rerun, as the printed summary ran one
    assert p["topics"] == 3 and p["fmkit_facts"] == p["anchor_facts"] == 12 and p["agreement"] == 1.0
    assert p["ratio"] == pytest.approx((p["fmkit_facts"] / p["fmkit_s"]) / (p["anchor_facts"] / p["anchor_s"]))
    lo, mid, hi = p["per_topic_ratio_p10_p50_p90"]
    assert 0 < lo <= mid <= hi
    assert "interleaved rerun (3 topics" in out
    # the rerun leaves fmkit's per-group timer in place for the framework's next calls
    assert "_packed_suffixes" in factscore.SUMMARY["shared"].__dict__
