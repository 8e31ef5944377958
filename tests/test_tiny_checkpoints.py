"""The tiny-checkpoint CLI: random backbones on request, clear errors without the pretraining
set."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from model.sam_encoder import SAM_TINY_CONFIG, build_sam, load_sam_checkpoint
from utils.synthcxr.pretrain import PRETRAIN_DIR
from utils.tiny_checkpoints import REPORT_NAME, main


def test_zero_steps_write_the_seeded_random_backbones(synth_dir, tmp_path):
    report = main(["--data", str(synth_dir), "--out", str(tmp_path), "--lm_steps", "0",
                   "--sam_steps", "0"])
    assert "lm" not in report and "sam" not in report
    assert json.loads((tmp_path / REPORT_NAME).read_text()) == report
    sam, _ = load_sam_checkpoint(tmp_path / "sam_tiny.pth")
    torch.manual_seed(0)
    for key, value in build_sam(SAM_TINY_CONFIG).state_dict().items():
        assert torch.equal(sam.state_dict()[key], value), key
    assert (tmp_path / "llava" / "config.json").is_file()
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize("bad, message", [
    (["--lm_steps", "-1"], "expected an integer >= 0"),
    (["--sam_steps", "x"], "invalid positive_or_zero value"),
])
def test_bad_step_counts_are_refused(synth_dir, tmp_path, capsys, bad, message):
    with pytest.raises(SystemExit):
        main(["--data", str(synth_dir), "--out", str(tmp_path), *bad])
    assert message in capsys.readouterr().err


def test_a_missing_pretraining_set_names_the_fix(synth_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data, ignore=shutil.ignore_patterns(PRETRAIN_DIR, "images"))
    with pytest.raises(SystemExit):
        main(["--data", str(data), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "pretrain.jsonl does not exist" in err and "--n_pretrain" in err
