"""The training loop's guards, and the flags train.py and test.py check before any work."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import train
from model.constants import MODEL_INPUTS
from training.engine import NonFiniteLossError, train_one_epoch
from training.state import TrainState
from utils.cli import grounding_config_from_args

_SPEC = importlib.util.spec_from_file_location(
    "umedground_test_cli", Path(__file__).resolve().parents[1] / "test.py")
test_py = importlib.util.module_from_spec(_SPEC)  # `import test` is the standard library's
_SPEC.loader.exec_module(test_py)


class NaNEngine:
    """A stand-in DeepSpeed engine whose second micro batch has a NaN loss."""

    def __init__(self):
        self.calls, self.steps = 0, 0

    def train(self):
        return self

    def __call__(self, **inputs):
        self.calls += 1
        value = torch.tensor(float("nan") if self.calls == 2 else 1.0)
        return type("Output", (), {"losses": {"total": value, "ce": value}})()

    def backward(self, loss):
        pass

    def step(self):
        self.steps += 1

    def get_lr(self):
        return [0.1, 0.1]


class NoLog:
    def write(self, *args):
        pass


def test_non_finite_loss_stops_training_naming_the_step_and_samples():
    batches = [{"ids": [f"s{i}a", f"s{i}b"], **{key: torch.zeros(1) for key in MODEL_INPUTS}}
               for i in range(3)]
    engine, state = NaNEngine(), TrainState(global_step=7)
    with pytest.raises(NonFiniteLossError) as raised:
        train_one_epoch(engine, batches, state, steps_per_epoch=3, grad_accumulation_steps=1,
                        device=torch.device("cpu"), log=NoLog(), checkpointer=None)
    message = str(raised.value)
    assert "step 9" in message and "s1a, s1b" in message and "total=nan" in message
    assert engine.steps == 1 and state.global_step == 8  # the NaN batch was never stepped


BASE = ["--version", "v", "--vision_pretrained", "s"]


@pytest.mark.parametrize("flags, message", [
    (["--save_every", "-1"], "--save_every: must be an integer >= 0, not -1"),
    (["--batch_size", "0"], "--batch_size: must be an integer >= 1, not 0"),
    (["--steps_per_epoch", "0"], "--steps_per_epoch: must be an integer >= 1"),
    (["--epochs", "-2"], "--epochs: must be an integer >= 1"),
    (["--workers", "-1"], "--workers: must be an integer >= 0"),
    (["--grad_accumulation_steps", "x"], "--grad_accumulation_steps: must be an integer >= 1"),
    (["--num_hypotheses", "0"], "--num_hypotheses: must be an integer >= 1"),
    (["--sample_rates", "1,2"], "--sample_rates has 2 values for 1 datasets"),
    (["--sample_rates", "nan"], "each must be finite and >= 0"),
    (["--sample_rates", "0"], "each must be finite and >= 0"),
    (["--warmup_steps", "50", "--epochs", "1", "--steps_per_epoch", "10"], "exceeds the run's 10"),
    (["--best_mode", "lowest"], "--best_mode: invalid choice"),
    (["--phrase_start_loss_weight", "0"], "--phrase_start_loss_weight: must be a finite number"),
    (["--phrase_start_loss_weight", "nan"], "must be a finite number > 0, not nan"),
    # the model flags, checked by the GroundingConfig they build before anything is loaded
    (["--num_hypotheses", "1"], "box_head 'umhp' needs --num_hypotheses >= 2"),
    (["--mhp_epsilon", "2"], "mhp_epsilon 2.0 must lie in [0, 1)"),
    (["--hinge_margin", "-1"], "hinge_margin -1.0 must not be negative"),
    (["--presence_loss_weight", "-1"], "presence_weight -1.0 must not be negative"),
    (["--iou_loss_weight", "-1"], "iou_weight -1.0 must not be negative"),
    (["--lora_dropout", "5"], "lora_dropout 5.0 must lie in [0, 1)"),
    (["--uncertainty", "combined"], "uncertainty 'combined' needs the IoU head (--iou_head)"),
])
def test_train_flags_are_checked_at_parse_time(flags, message, capsys):
    with pytest.raises(SystemExit) as raised:
        train.parse_args(BASE + flags)
    assert raised.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("flags, own_count_path", [
    ([], True),  # train.py's default with K = 4
    (["--no-own_count_path"], False),
    (["--max_boxes_per_phrase", "1"], False),  # one box: there is no count
])
def test_the_count_path_flag_reaches_the_config(flags, own_count_path):
    config = grounding_config_from_args(train.parse_args(BASE + flags))
    assert config.own_count_path is own_count_path


@pytest.mark.parametrize("flags, message", [
    (["--max_samples", "-1"], "--max_samples: must be an integer >= 1, not -1"),
    (["--max_samples", "0"], "--max_samples: must be an integer >= 1, not 0"),
    (["--batch_size", "0"], "--batch_size: must be an integer >= 1"),
    (["--image_noise_std", "5,x"], "give comma-separated numbers"),
    (["--image_noise_std", "-3"], "must be finite and >= 0"),
    (["--out", "/proc/forbidden/out"], "cannot be written to"),
    (["--match_threshold", "0"], "--match_threshold: must be a number in (0, 1], not 0.0"),
    (["--match_threshold", "1.5"], "--match_threshold: must be a number in (0, 1], not 1.5"),
    (["--match_threshold", "high"], "--match_threshold: must be a number in (0, 1], not 'high'"),
    (["--phrase_start_ratio", "0"], "--phrase_start_ratio: must be a number in (0, 1], not 0.0"),
    (["--phrase_start_ratio", "nan"], "--phrase_start_ratio: must be a number in (0, 1], not nan"),
    # the baseline refuses the flags that act on a model only (--version is the table's own)
    (["--baseline", "phrase_prior"], "--version applies to a model only"),
    (["--baseline", "phrase_prior", "--vis", "2"], "--version, --vis apply to a model only"),
    (["--baseline", "phrase_prior", "--image_noise_std", "10", "--decoding", "free"],
     "--version, --image_noise_std, --decoding apply to a model only"),
])
def test_test_py_flags_are_checked_at_parse_time(flags, message, capsys, tmp_path):
    out = [] if "--out" in flags else ["--out", str(tmp_path / "eval")]
    with pytest.raises(SystemExit) as raised:
        test_py.parse_args(["--version", "v", *out, *flags])
    assert raised.value.code == 2 and message in capsys.readouterr().err
