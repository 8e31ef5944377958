"""End-to-end training: deepspeed with 2 ranks, kill and resume, export, test.py on the export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
DEEPSPEED = str(Path(PYTHON).with_name("deepspeed"))


def train_command(
    tiny_dir: Path, synth_dir: Path, run_root: Path, name: str, *extra: str
) -> list[str]:
    return [
        "train.py",
        "--version",
        str(tiny_dir / "llava"),
        "--vision_pretrained",
        str(tiny_dir / "sam_tiny.pth"),
        "--dataset_dir",
        str(synth_dir),
        "--exp_name",
        name,
        "--log_base_dir",
        str(run_root),
        "--batch_size",
        "2",
        "--grad_accumulation_steps",
        "1",
        "--train_vision_encoder",
        "--workers",
        "0",
        "--lora_r",
        "4",
        "--lr",
        "1e-3",
        "--warmup_steps",
        "2",
        *extra,
    ]


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=900, **kwargs
    )
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
    run(
        [
            DEEPSPEED,
            "--num_gpus",
            "2",
            "--master_port",
            "29731",
            *train_command(
                tiny_dir,
                synth_dir,
                tmp_path,
                "two_ranks",
                "--epochs",
                "1",
                "--steps_per_epoch",
                "2",
                "--no_validate",
                "--grounding_lr",
                "3e-3",
            ),
        ]
    )
    logged = [
        json.loads(line) for line in (tmp_path / "two_ranks" / "log.jsonl").read_text().splitlines()
    ]
    rates = [(entry["lr"], entry["grounding_lr"]) for entry in logged if entry["kind"] == "train"]
    assert len(rates) == 2 and rates[-1][0] > 0  # the first step is at the warmup's lr 0
    assert all(grounding == pytest.approx(3 * lm) for lm, grounding in rates)
    ckpt = tmp_path / "two_ranks" / "ckpt"
    tag = (ckpt / "latest").read_text().strip()
    assert tag == "step_000002"
    assert sorted(p.name for p in (ckpt / tag).glob("zero_pp_rank_*")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]


RESUME_ARGS = (
    "--epochs",
    "2",
    "--steps_per_epoch",
    "4",
    "--save_every",
    "3",
    "--workers",
    "1",
    "--val_max_samples",
    "2",
    "--max_new_tokens",
    "4",
)
LOSS_KEYS = ("ce", "box_total", "total")


def logged_losses(run_dir: Path) -> dict[int, tuple[float, ...]]:
    """The loss parts of each training step; a step logged twice keeps its last entry."""
    steps: dict[int, tuple[float, ...]] = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry["kind"] == "train":
            steps[entry["step"]] = tuple(entry[key] for key in LOSS_KEYS)
    return steps


@pytest.fixture(scope="module")
def uninterrupted(tiny_dir, synth_dir, tmp_path_factory) -> Path:
    """8 steps in 2 epochs, checkpoints at steps 3, 4, 6 and 8, validation after 4 and 8, LoRA
    dropout on (0.05), one loader worker."""
    root = tmp_path_factory.mktemp("uninterrupted")
    run([PYTHON, *train_command(tiny_dir, synth_dir, root, "reference", *RESUME_ARGS)])
    assert sorted(logged_steps(root / "reference")) == list(range(1, 9))
    return root / "reference"


@pytest.mark.parametrize(
    "fault, latest_after_kill, redone",
    [
        # killed in step 7, after the checkpoint of step 6: step 7 is lost and redone
        ("forward:7", "step_000006", [7, 8]),
        # killed half-way through writing the checkpoint of step 4 (the epoch's end)
        ("save:2", "step_000003", [4, 5, 6, 7, 8]),
    ],
)
def test_killed_run_resumes_exactly(
    fault, latest_after_kill, redone, uninterrupted, tiny_dir, synth_dir, tmp_path
):
    command = train_command(tiny_dir, synth_dir, tmp_path, "killed", *RESUME_ARGS)
    killed = subprocess.run(
        [PYTHON, "tests/fault_injection.py", *command[1:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "FAULT": fault},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ckpt = tmp_path / "killed" / "ckpt"
    assert (ckpt / "latest").read_text().strip() == latest_after_kill

    logged_before = len((tmp_path / "killed" / "log.jsonl").read_text().splitlines())
    run([PYTHON, *command, "--auto_resume"])
    lines = (tmp_path / "killed" / "log.jsonl").read_text().splitlines()[logged_before:]
    assert [
        json.loads(line)["step"] for line in lines if json.loads(line)["kind"] == "train"
    ] == redone
    assert logged_steps(tmp_path / "killed") == logged_steps(uninterrupted)
    resumed, reference = logged_losses(tmp_path / "killed"), logged_losses(uninterrupted)
    for step in reference:
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step
    assert json.loads((ckpt / "best.json").read_text()) == json.loads(
        (uninterrupted / "ckpt" / "best.json").read_text()
    )


def test_two_rank_run_killed_mid_step_resumes_exactly(tiny_dir, synth_dir, tmp_path):
    launch = [DEEPSPEED, "--num_gpus", "2", "--master_port", "29733"]
    reference = train_command(tiny_dir, synth_dir, tmp_path, "reference", *RESUME_ARGS)
    run([*launch, *reference])
    command = train_command(tiny_dir, synth_dir, tmp_path, "killed", *RESUME_ARGS)
    killed = subprocess.run(
        [*launch, "tests/fault_injection.py", *command[1:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "FAULT": "forward:7"},
    )
    assert killed.returncode != 0
    assert (tmp_path / "killed" / "ckpt" / "latest").read_text().strip() == "step_000006"
    run([*launch, *command, "--auto_resume"])
    assert logged_steps(tmp_path / "killed") == logged_steps(tmp_path / "reference")
    resumed, expected = logged_losses(tmp_path / "killed"), logged_losses(tmp_path / "reference")
    for step in expected:
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step


def test_two_rank_run_shares_the_embedding_cache(tiny_dir, synth_dir, tmp_path):
    """A frozen SAM: epoch 1 encodes each of the 24 images once across both ranks; in epoch 2
    every image comes from the cache, from memory or from the other rank's files."""
    command = [
        arg
        for arg in train_command(
            tiny_dir,
            synth_dir,
            tmp_path,
            "cached",
            "--epochs",
            "2",
            "--steps_per_epoch",
            "6",
            "--no_validate",
        )
        if arg != "--train_vision_encoder"
    ]
    run([DEEPSPEED, "--num_gpus", "2", "--master_port", "29735", *command])
    entries = list((tmp_path / "cached" / "embedding_cache").rglob("*.safetensors"))
    assert len(entries) == 24
    logged = [
        json.loads(line) for line in (tmp_path / "cached" / "log.jsonl").read_text().splitlines()
    ]
    first, second = [entry for entry in logged if entry["kind"] == "cache"]
    assert first["misses"] == 12 and second["misses"] == 12  # rank 0's: none new in epoch 2
    assert second["hits"] == 12


def test_export_reproduces_the_trained_model_and_runs_through_test_py(
    tiny_dir, synth_dir, tmp_path
):
    from model.build import load_trained
    from model.grounding_model import UMedGround
    from utils.annotations import load_annotations
    from utils.dataset import GroundingCollator, GroundingDataset

    run(
        [
            PYTHON,
            *train_command(
                tiny_dir,
                synth_dir,
                tmp_path,
                "export",
                "--epochs",
                "1",
                "--steps_per_epoch",
                "3",
                "--val_max_samples",
                "4",
                "--max_new_tokens",
                "16",
            ),
        ]
    )
    run_dir = tmp_path / "export"
    assert (run_dir / "ckpt" / "best").is_file()
    tag = (run_dir / "ckpt" / "best").read_text().strip()
    run(
        [
            PYTHON,
            "-m",
            "training.consolidate",
            str(run_dir / "ckpt"),
            str(run_dir / "fp32"),
            "--tag",
            tag,
        ]
    )
    run(
        [
            PYTHON,
            "merge_lora_weights_and_save_hf_model.py",
            "--version",
            str(tiny_dir / "llava"),
            "--weight",
            str(run_dir / "fp32"),
            "--save_path",
            str(run_dir / "hf"),
        ]
    )

    trained, processor = load_trained(tiny_dir / "llava", run_dir / "fp32")
    trained.eval()
    exported, _ = UMedGround.from_pretrained(run_dir / "hf")
    samples = [s for s in load_annotations(synth_dir / "report_test.jsonl") if s.findings][:3]
    dataset = GroundingDataset(samples, processor, trained.sam_encoder.img_size)
    batch = GroundingCollator(processor.tokenizer.pad_token_id)(
        [dataset[i] for i in range(len(samples))]
    )
    inputs = {
        k: batch[k] for k in ("sam_images", "pixel_values", "input_ids", "attention_mask", "labels")
    }
    with torch.no_grad():
        before, after = trained(**inputs), exported(**inputs)
    assert (before.prediction.hypotheses - after.prediction.hypotheses).abs().max() < 1e-4
    assert abs(float(before.losses["ce"]) - float(after.losses["ce"])) < 1e-4

    out = tmp_path / "eval"
    run(
        [
            PYTHON,
            "test.py",
            "--version",
            str(run_dir / "hf"),
            "--dataset_dir",
            str(synth_dir),
            "--split",
            "test",
            "--out",
            str(out),
            "--max_new_tokens",
            "16",
            "--vis",
            "1",
        ]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_samples"] == 6 and metrics["split"] == "test"
    for key in ("grounding", "grounding_given_phrase"):
        assert set(metrics[key]) == {"acc@0.1", "acc@0.3", "acc@0.5", "miou"}
    records = (out / "predictions.jsonl").read_text().splitlines()
    assert len(records) == metrics["n_findings"]
    assert (out / "risk_coverage.png").is_file() and list((out / "vis").glob("*.png"))
