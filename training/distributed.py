"""Process-group set-up for ``deepspeed train.py`` and for plain ``python train.py``."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch.distributed as dist


def ensure_single_process_env() -> None:
    """Fill in the rank variables when not started by a launcher (one process, rank 0).

    Without them DeepSpeed looks for MPI. A free local port is picked for the rendezvous.
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": os.environ.get("MASTER_PORT", str(port))})


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_gather(value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (``[value]`` in one process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def default_extensions_dir() -> None:
    """Keep DeepSpeed's compiled ops in the repository (``.torch_extensions``) unless
    ``TORCH_EXTENSIONS_DIR`` says otherwise, as the Makefile does."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR",
                          str(Path(__file__).resolve().parents[1] / ".torch_extensions"))
