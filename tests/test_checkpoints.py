"""Checkpoints: damaged or unsafe ones are refused with one clear message; best selection;
the RNG state round-trips through a weights-only load."""
from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.checkpoints import (
    COMPLETE_NAME,
    Checkpointer,
    CheckpointError,
    default_best_mode,
    resolve_resume,
)
from training.consolidate import main as consolidate_main
from training.rng import capture_rng, restore_rng
from training.state import TrainState

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
MODEL_STATES = "mp_rank_00_model_states.pt"
OPTIM_STATES = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


def write_marker(path: str) -> None:
    Path(path).write_text("the payload ran")


class Payload:
    """Unpickling this calls ``write_marker``: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return write_marker, (str(self.marker),)


@pytest.fixture(scope="module")
def trained_ckpt(tiny_dir, synth_dir, tmp_path_factory) -> Path:
    """``ckpt/`` of a 2-step run: one complete tag, ``step_000002``."""
    root = tmp_path_factory.mktemp("ckpt_run")
    result = subprocess.run(
        [PYTHON, "train.py", "--version", str(tiny_dir / "llava"),
         "--vision_pretrained", str(tiny_dir / "sam_tiny.pth"), "--dataset_dir", str(synth_dir),
         "--exp_name", "run", "--log_base_dir", str(root), "--batch_size", "2",
         "--grad_accumulation_steps", "1", "--workers", "0", "--lora_r", "4", "--epochs", "1",
         "--steps_per_epoch", "2", "--warmup_steps", "1", "--no_validate"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return root / "run" / "ckpt"


def damage(ckpt: Path, case: str, tmp_path: Path) -> Path:
    """A copy of ``ckpt`` damaged as ``case`` says; returns the path to pass to --resume."""
    root = tmp_path / "ckpt"
    shutil.copytree(ckpt, root)
    tag = root / "step_000002"
    if case == "empty latest":
        (root / "latest").write_text("")
    elif case == "missing tag":
        (root / "latest").write_text("step_000099")
    elif case == "half-written tag":
        (tag / COMPLETE_NAME).unlink()
    elif case == "truncated shard":
        data = (tag / OPTIM_STATES).read_bytes()
        (tag / OPTIM_STATES).write_bytes(data[: len(data) // 2])
    elif case == "no latest":
        (root / "latest").unlink()
    elif case == "not a checkpoint":
        return tmp_path
    return root


@pytest.mark.parametrize("case, message", [
    ("empty latest", "latest is empty"),
    ("missing tag", "names 'step_000099', but"),
    ("half-written tag", "is half-written"),
    ("truncated shard", "not a complete torch.save archive"),
    ("no latest", "has no 'latest' file"),
    ("not a checkpoint", "neither a checkpoint folder"),
])
def test_damaged_checkpoint_gets_one_clear_message(case, message, trained_ckpt, tmp_path):
    path = damage(trained_ckpt, case, tmp_path)
    with pytest.raises(CheckpointError) as raised:
        resolve_resume(path)
    text = str(raised.value)
    assert message in text and str(path) in text
    if case not in ("half-written tag", "not a checkpoint", "truncated shard"):
        assert "use --resume" in text and "step_000002" in text


def test_payload_checkpoint_is_refused_and_runs_no_code(trained_ckpt, tmp_path):
    marker = tmp_path / "marker"
    root = damage(trained_ckpt, "intact", tmp_path)
    model_states = root / "step_000002" / MODEL_STATES
    torch.save({"module": Payload(marker)}, model_states)
    with pytest.raises(Exception):  # the weights-only unpickler refuses it on its own
        torch.load(model_states, weights_only=True)
    assert not marker.exists()

    resumed = subprocess.run([PYTHON, "train.py", "--version", "unused", "--vision_pretrained",
                              "unused", "--resume", str(root)],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 2
    assert f"{model_states}: refusing to load it" in resumed.stderr
    assert "write_marker" in resumed.stderr and "Traceback" not in resumed.stderr
    assert consolidate_main([str(root), str(tmp_path / "fp32"), "--tag", "latest"]) == 2
    assert not marker.exists()
    # the payload is real: plain unpickling would have run it
    torch.load(model_states, weights_only=False)
    assert marker.read_text() == "the payload ran"


def test_consolidate_writes_safetensors_and_the_config(trained_ckpt, tmp_path):
    assert consolidate_main([str(trained_ckpt), str(tmp_path / "fp32"), "--tag", "latest"]) == 0
    assert (tmp_path / "fp32" / "model.safetensors").is_file()
    assert (tmp_path / "fp32" / "grounding_config.json").is_file()


@pytest.mark.parametrize("metric, mode", [
    ("grounding.miou", "max"), ("grounding.acc@0.5", "max"), ("uncertainty.aurc", "min"),
    ("uncertainty.auroc", "max"), ("train.loss", "min"),
])
def test_default_best_mode(metric, mode):
    assert default_best_mode(metric) == mode


@pytest.mark.parametrize("mode, values, best", [
    ("max", [0.2, 0.5, 0.4], (0.5, "step_000002")),
    ("min", [0.2, 0.5, 0.1], (0.1, "step_000003")),
    ("max", [float("nan"), 0.3], (0.3, "step_000002")),
])
def test_record_validation_keeps_the_best(mode, values, best, tmp_path):
    checkpointer = Checkpointer(None, tmp_path, None, {}, "m", mode)
    state = TrainState()
    for step, value in enumerate(values, start=1):
        checkpointer.record_validation(state, f"step_{step:06d}", value)
    assert (state.best_value, state.best_tag) == best
    assert (tmp_path / "best").read_text() == best[1]


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # a cached Gaussian in NumPy's state
    torch.save(capture_rng(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.standard_normal(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (random.random(), np.random.standard_normal(), torch.rand(3))
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2])
