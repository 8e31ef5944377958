"""Loading DeepSpeed checkpoints without unpickling arbitrary objects.

DeepSpeed reads its ``*.pt`` files with ``torch.load(weights_only=False)``, which runs whatever
code a crafted file carries. :func:`safe_loading` forces PyTorch's weights-only unpickler on
every ``torch.load`` (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``) and allow-lists the few plain DeepSpeed
data classes its optimizer files hold. :func:`check_checkpoint_files` reads each file's pickle
opcodes, without executing them, and refuses one that names anything else, naming the file.
"""
from __future__ import annotations

import contextlib
import os
import zipfile
from pathlib import Path
from typing import Iterator

import torch
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
DEEPSPEED_SAFE_GLOBALS = (ZeroStageEnum, fragment_address, LossScaler, DynamicLossScaler)
_ALLOWED_NAMES = {f"{cls.__module__}.{cls.__qualname__}" for cls in DEEPSPEED_SAFE_GLOBALS}


class UnsafeCheckpointError(ValueError):
    """A checkpoint file that is unreadable or would run code when unpickled."""


def unsafe_globals(path: Path) -> list[str]:
    """The globals a ``torch.save`` file names beyond what the weights-only unpickler and the
    DeepSpeed allow-list accept. Reads the pickle opcodes only; nothing is executed.

    Raises:
      UnsafeCheckpointError: the file is not a readable ``torch.save`` archive (truncated,
        empty, or another format).
    """
    if not zipfile.is_zipfile(path):
        raise UnsafeCheckpointError(f"{path}: not a complete torch.save archive (truncated, "
                                    "empty or another format)")
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (RuntimeError, ValueError, OSError, zipfile.BadZipFile) as error:
        raise UnsafeCheckpointError(f"{path}: cannot be read ({error})") from error
    return [name for name in names if name not in _ALLOWED_NAMES]


def check_checkpoint_files(folder: Path) -> None:
    """Refuse a checkpoint tag folder any of whose ``*.pt`` files is unreadable or names
    objects other than tensors, plain types and the allow-listed DeepSpeed classes."""
    for path in sorted(folder.glob("*.pt")):
        names = unsafe_globals(path)
        if names:
            raise UnsafeCheckpointError(
                f"{path}: refusing to load it: unpickling it would call {', '.join(names)}, "
                "which can run arbitrary code. A checkpoint written by train.py holds only "
                "tensors and plain types; get the checkpoint from its author again, or resume "
                "from another one")


@contextlib.contextmanager
def safe_loading() -> Iterator[None]:
    """Inside the block every ``torch.load`` is weights-only, whatever its caller asked."""
    torch.serialization.add_safe_globals(list(DEEPSPEED_SAFE_GLOBALS))
    previous = os.environ.get(FORCE_WEIGHTS_ONLY)
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[FORCE_WEIGHTS_ONLY] = previous
