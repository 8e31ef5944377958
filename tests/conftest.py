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
        pytest.fail(f"no radiographs found in {NIH_FIXTURES}; shared/ must sit beside the checkout")
    return images
