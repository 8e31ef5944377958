"""Shared pytest fixtures: paths to the repository, the shared fixtures and a tiny SynthCXR set."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("UMEDGROUND_SHARED", REPO_ROOT.parent / "shared"))
NIH_FIXTURES = SHARED_DIR / "fixtures" / "nih"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def nih_images() -> list[Path]:
    images = sorted(NIH_FIXTURES.glob("*.png"))
    if not images:
        pytest.skip(f"no radiographs in {NIH_FIXTURES}: the smoke tests on real images need the "
                    "project's shared/ folder beside the checkout (or UMEDGROUND_SHARED)")
    return images


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small SynthCXR set (24 train / 6 val / 6 test / 6 calibration images, 24 pretraining
    images), built once per session."""
    from utils.synthcxr.__main__ import main as synthcxr_main

    out = tmp_path_factory.mktemp("synthcxr")
    synthcxr_main(["--out", str(out), "--seed", "0", "--n_train", "24", "--n_val", "6",
                   "--n_test", "6", "--n_calibration", "6", "--n_pretrain", "24"])
    return out


@pytest.fixture(scope="session")
def tiny_dir(synth_dir, tmp_path_factory) -> Path:
    """Tiny llava-hf folder + tiny SAM checkpoint built from the small SynthCXR corpus, with a
    short pretraining of both."""
    from utils.tiny_checkpoints import main as tiny_main

    out = tmp_path_factory.mktemp("tiny")
    tiny_main(["--data", str(synth_dir), "--out", str(out), "--lm_steps", "6",
               "--sam_steps", "4"])
    return out
