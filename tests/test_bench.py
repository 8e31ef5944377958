"""`make bench` in its quick mode writes a complete bench.json, table and plots."""
from __future__ import annotations

import json
import math

import pytest

from utils.bench.__main__ import main as bench_main
from utils.bench.timing import fit_exponent, interleaved, summary

pytestmark = pytest.mark.slow


def test_quick_bench_writes_every_record(tiny_dir, synth_dir, tmp_path):
    assert bench_main(["--quick", "--out", str(tmp_path), "--tiny_dir", str(tiny_dir),
                       "--data_dir", str(synth_dir)]) == 0
    bench = json.loads((tmp_path / "bench.json").read_text())
    for key in ("train_step_ratio_vs_bare_lora", "eval_speedup_vs_reference",
                "cache_epoch_speedup_vit_b"):
        assert isinstance(bench[key], float) and math.isfinite(bench[key]) and bench[key] > 0
    records = bench["records"]
    assert set(records) >= {"train_steps", "evaluation", "encoder", "step_scaling",
                            "eval_scaling", "flops_7b_vit_h"}
    assert set(records["train_steps"]["tiny"]["steps"]) == {
        "bare_llava_lora", "umedground_cached", "umedground_uncached",
        "umedground_train_vision_encoder"}
    assert all(records[case]["peak_rss_mb"] > 0 for case in ("train_steps", "evaluation",
                                                             "encoder"))
    assert 0 < records["flops_7b_vit_h"]["head_share_cached"] < 0.01
    for name in ("step_vs_batch.png", "step_vs_tokens.png", "eval_vs_samples.png", "bench.md"):
        assert (tmp_path / name).is_file()


def test_interleaving_drops_warm_up_and_keeps_every_repeat():
    calls = []
    timed = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                        repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert len(timed["a"]["samples"]) == 3 and timed["a"]["min"] <= timed["a"]["median"]
    assert summary([3.0, 1.0, 2.0])["median"] == 2.0
    assert fit_exponent([1, 2, 4, 8], [3, 6, 12, 24]) == pytest.approx(1.0)
