"""The random state of a training process, as tensors and plain types.

A checkpoint stores it so that a resumed run draws the same random numbers (LoRA dropout,
augmentation) as a run that never stopped. Nothing here needs pickling to be read back:
``torch.load(weights_only=True)`` restores it.
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator

import numpy as np
import torch


def capture_rng() -> dict[str, Any]:
    """Python's, NumPy's, torch's CPU and (when present) every CUDA device's generator state."""
    version, python_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    if kind != "MT19937":
        raise ValueError(f"unexpected NumPy generator {kind!r}")
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(python_state, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set every generator to a state returned by :func:`capture_rng`."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        if len(saved) != torch.cuda.device_count():
            raise ValueError(f"the checkpoint holds the RNG state of {len(saved)} CUDA devices; "
                             f"this process sees {torch.cuda.device_count()}")
        torch.cuda.set_rng_state_all(saved)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (validation) without moving any generator of the training stream."""
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)


def loader_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    """A DataLoader's own generator, so creating a loader never draws from the global stream
    (which LoRA dropout uses): a run resumed mid-epoch then draws what an unbroken one did."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, rank])
                                             .generate_state(1)[0]))
