"""End-to-end training: deepspeed with 2 ranks, kill and resume, export, test.py on the export."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
DEEPSPEED = str(Path(PYTHON).with_name("deepspeed"))


def train_command(tiny_dir: Path, synth_dir: Path, run_root: Path, name: str, *extra: str) -> list[str]:
    return ["train.py", "--version", str(tiny_dir / "llava"),
            "--vision_pretrained", str(tiny_dir / "sam_tiny.pth"), "--dataset_dir", str(synth_dir),
            "--exp_name", name, "--log_base_dir", str(run_root), "--batch_size", "2",
            "--grad_accumulation_steps", "1", "--train_vision_encoder", "--workers", "0",
            "--lora_r", "4", "--lr", "1e-3", "--warmup_steps", "2", *extra]


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def logged_steps(run_dir: Path) -> dict[int, list[str]]:
    """The sample ids of each training step; a step logged twice keeps its last entry."""
    steps: dict[int, list[str]] = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry["kind"] == "train":
            steps[entry["step"]] = entry["sample_ids"]
    return steps


def test_two_rank_deepspeed_run(tiny_dir, synth_dir, tmp_path):
    run([DEEPSPEED, "--num_gpus", "2", "--master_port", "29731",
         *train_command(tiny_dir, synth_dir, tmp_path, "two_ranks", "--epochs", "1",
                        "--steps_per_epoch", "2", "--no_validate", "--grounding_lr", "3e-3")])
    logged = [json.loads(line) for line in (tmp_path / "two_ranks" / "log.jsonl").read_text().splitlines()]
    rates = [(entry["lr"], entry["grounding_lr"]) for entry in logged if entry["kind"] == "train"]
    assert len(rates) == 2 and rates[-1][0] > 0  # the first step is at the warmup's lr 0
    assert all(grounding == pytest.approx(3 * lm) for lm, grounding in rates)
    ckpt = tmp_path / "two_ranks" / "ckpt"
    tag = (ckpt / "latest").read_text().strip()
    assert tag == "step_000002"
    assert sorted(p.name for p in (ckpt / tag).glob("zero_pp_rank_*")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]


def test_killed_run_resumes_without_repeating_or_skipping(tiny_dir, synth_dir, tmp_path):
    args = ["--epochs", "2", "--steps_per_epoch", "8", "--save_every", "3", "--no_validate"]
    run([PYTHON, *train_command(tiny_dir, synth_dir, tmp_path, "reference", *args)])
    reference = logged_steps(tmp_path / "reference")
    assert sorted(reference) == list(range(1, 17))

    command = [PYTHON, *train_command(tiny_dir, synth_dir, tmp_path, "killed", *args)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    latest = tmp_path / "killed" / "ckpt" / "latest"
    deadline = time.time() + 600
    while not latest.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert latest.read_text().strip() == "step_000003"

    logged_before = len((tmp_path / "killed" / "log.jsonl").read_text().splitlines())
    run([PYTHON, *train_command(tiny_dir, synth_dir, tmp_path, "killed", *args, "--auto_resume")])
    assert logged_steps(tmp_path / "killed") == reference
    lines = (tmp_path / "killed" / "log.jsonl").read_text().splitlines()[logged_before:]
    # the step counter continues after the checkpoint: steps 4..16, each once
    assert [json.loads(line)["step"] for line in lines] == list(range(4, 17))


def test_export_reproduces_the_trained_model_and_runs_through_test_py(tiny_dir, synth_dir, tmp_path):
    from model.build import load_trained
    from model.grounding_model import UMedGround
    from utils.annotations import load_annotations
    from utils.dataset import GroundingCollator, GroundingDataset

    run([PYTHON, *train_command(tiny_dir, synth_dir, tmp_path, "export", "--epochs", "1",
                                "--steps_per_epoch", "3", "--val_max_samples", "4",
                                "--max_new_tokens", "16")])
    run_dir = tmp_path / "export"
    assert (run_dir / "ckpt" / "best").is_file()
    tag = (run_dir / "ckpt" / "best").read_text().strip()
    run([PYTHON, str(run_dir / "ckpt" / "zero_to_fp32.py"), str(run_dir / "ckpt"),
         str(run_dir / "fp32"), "--tag", tag, "--safe_serialization"])
    run([PYTHON, "merge_lora_weights_and_save_hf_model.py", "--version", str(tiny_dir / "llava"),
         "--weight", str(run_dir / "fp32"), "--save_path", str(run_dir / "hf")])

    trained, processor = load_trained(tiny_dir / "llava", run_dir / "fp32")
    trained.eval()
    exported, _ = UMedGround.from_pretrained(run_dir / "hf")
    samples = [s for s in load_annotations(synth_dir / "report_test.jsonl") if s.findings][:3]
    dataset = GroundingDataset(samples, processor, trained.sam_encoder.img_size)
    batch = GroundingCollator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(len(samples))])
    inputs = {k: batch[k] for k in ("sam_images", "pixel_values", "input_ids", "attention_mask", "labels")}
    with torch.no_grad():
        before, after = trained(**inputs), exported(**inputs)
    assert (before.prediction.hypotheses - after.prediction.hypotheses).abs().max() < 1e-4
    assert abs(float(before.losses["ce"]) - float(after.losses["ce"])) < 1e-4

    out = tmp_path / "eval"
    run([PYTHON, "test.py", "--version", str(run_dir / "hf"), "--dataset_dir", str(synth_dir),
         "--split", "test", "--out", str(out), "--max_new_tokens", "16", "--vis", "1"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_samples"] == 6 and metrics["split"] == "test"
    for key in ("grounding", "grounding_given_phrase"):
        assert set(metrics[key]) == {"acc@0.1", "acc@0.3", "acc@0.5", "miou"}
    records = (out / "predictions.jsonl").read_text().splitlines()
    assert len(records) == metrics["n_findings"]
    assert (out / "risk_coverage.png").is_file() and list((out / "vis").glob("*.png"))
