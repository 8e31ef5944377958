"""`make bench` in its quick mode writes a complete bench.json, table and plots; its GPU mode
runs under the deepspeed launcher (at the tiny shape on a CPU) and refuses without CUDA."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from model.config import GroundingConfig
from utils.bench.__main__ import main as bench_main
from utils.bench.gpu import gpu_case
from utils.bench.models import build_shaped_model, parameter_counts
from utils.bench.report import gpu_table
from utils.bench.timing import fit_exponent, interleaved, summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_VARIANTS = {"bare_llava_lora", "umedground_cached", "umedground_uncached"}
BATCHES = [1, 2, 4]


@pytest.mark.slow
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


@pytest.fixture(scope="module")
def gpu_block(tiny_dir, synth_dir) -> dict:
    """The GPU mode at the tiny shape, on this machine's device (the CPU in CI)."""
    return gpu_case("tiny", tiny_dir, synth_dir, repeats=1, eval_repeats=1, batch_sizes=BATCHES,
                    eval_samples=2, max_new_tokens=4, timeout_seconds=600)


@pytest.mark.slow
def test_gpu_mode_trains_under_zero_2_with_and_without_checkpointing(gpu_block):
    assert (gpu_block["launcher"], gpu_block["zero_stage"], gpu_block["world_size"]) == (
        "deepspeed", 2, 1)
    train = gpu_block["train"]
    assert {name: setting["activation_checkpointing"] for name, setting in train.items()} == {
        "no_gradient_checkpointing": False, "gradient_checkpointing": True}
    for setting in train.values():
        assert list(setting["batches"]) == [f"batch_{size}" for size in BATCHES]
        tokens = [result["tokens"] for result in setting["batches"].values()]
        assert tokens == sorted(tokens) and tokens[0] > 0
        for result in setting["batches"].values():
            assert set(result["steps"]) == STEP_VARIANTS
            assert result["ratio_vs_bare"]["bare_llava_lora"] == 1.0
            for name in STEP_VARIANTS:
                assert result["steps"][name]["median"] > 0
                assert result["tokens_per_second"][name] == pytest.approx(
                    result["tokens"] / result["steps"][name]["median"])


@pytest.mark.slow
def test_gpu_mode_evaluates_and_says_what_the_cpu_lacks(gpu_block):
    evaluation = gpu_block["eval"]
    assert list(evaluation["runs"]) == [f"batch_{size}" for size in BATCHES]
    assert evaluation["n_samples"] == 2 and evaluation["n_findings"] > 0
    assert all(rate > 0 for rate in evaluation["findings_per_second"].values())
    cuda = torch.cuda.is_available()
    assert gpu_block["precision"] == ("bf16" if cuda else "fp32")
    if not cuda:
        assert "no CUDA" in gpu_block["precision_note"] and "no CUDA" in gpu_block[
            "memory_measure"]
        assert all(peak is None for peak in evaluation["peak_memory_mb"].values())
    table = gpu_table(gpu_block)
    assert table.count("| umedground_cached |") == 2 * len(BATCHES)
    assert all(table.count(f"| batch {size} |") == 1 for size in BATCHES)


def test_7b_shape_is_llava_1_5_7b_and_sam_vit_h_on_the_meta_device(tiny_dir):
    grounding = GroundingConfig(version="random", vision_pretrained="random")
    model, processor = build_shaped_model("llava_1.5_7b_vit_h", tiny_dir / "llava", grounding,
                                          "meta", torch.bfloat16)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    counts = parameter_counts(model)
    lora = sum(p.numel() for name, p in model.llava.named_parameters() if "lora_" in name)
    assert lora == 32 * 2 * 2 * 8 * 4096  # r 8 on q and v of 32 layers
    assert counts["language_model"] - lora == 7_063_427_072  # llava-1.5-7b-hf's count
    assert counts["sam_encoder"] == 637_026_048  # sam_vit_h_4b8939's image encoder
    inputs = processor(images=Image.new("RGB", (64, 64)), text=processor.image_token,
                       return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape[-2:]) == (336, 336)
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    assert int((inputs["input_ids"] == image_token).sum()) == 576
    assert model.llava.config.image_token_index == image_token


def test_cuda_mode_refuses_without_a_cuda_device(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_main(["--device", "cuda", "--out", str(tmp_path / "bench")]) == 2
    assert "sees no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "bench").exists()


@pytest.mark.slow
def test_make_bench_device_cuda_refuses_before_building_anything(tmp_path):
    """``make bench DEVICE=cuda`` with the GPUs hidden: the device check fails first."""
    result = subprocess.run(
        ["make", "-o", "install", "-o", "tiny", "bench", "DEVICE=cuda", f"VPY={sys.executable}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode != 0
    assert "sees no CUDA device" in result.stderr and "bench-device" in result.stderr
    assert "utils.bench --out" not in result.stdout
