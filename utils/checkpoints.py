"""DeepSpeed checkpoints with atomic "latest"/"best" pointers and the config saved beside them.

Layout under ``<run>/ckpt/``: one folder per tag (``step_000120``), DeepSpeed's
``zero_to_fp32.py``, and the pointer files ``latest`` and ``best`` (a tag name each), each
replaced atomically (write to a temporary file, then ``os.replace``) only after every rank has
finished writing the tag. A crash mid-save therefore leaves ``latest`` on the previous,
complete checkpoint. Tags other than the latest and the best are deleted after each save.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from model.config import GroundingConfig
from utils.distributed import barrier, rank

TRAIN_ARGS_NAME = "train_args.json"


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_pointer(root: Path, name: str) -> str | None:
    path = root / name
    return path.read_text().strip() if path.is_file() else None


def save_checkpoint(engine: Any, root: Path, tag: str, client_state: dict[str, Any],
                    config: GroundingConfig, train_args: dict[str, Any],
                    best_tag: str | None) -> None:
    """Save on every rank, then (rank 0) write the config, move ``latest`` and prune old tags."""
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)
    barrier()
    if rank() == 0:
        config.save(root / tag)
        (root / tag / TRAIN_ARGS_NAME).write_text(json.dumps(train_args, indent=2, sort_keys=True))
        write_atomic(root / "latest", tag)
        keep = {tag, best_tag}
        for folder in root.glob("step_*"):
            if folder.is_dir() and folder.name not in keep:
                shutil.rmtree(folder)
    barrier()


def mark_best(root: Path, tag: str, metric: str, value: float) -> None:
    """Point ``best`` at ``tag`` (rank 0), recording the metric that chose it."""
    if rank() == 0:
        write_atomic(root / "best.json", json.dumps({"tag": tag, "metric": metric, "value": value}))
        write_atomic(root / "best", tag)


def resolve_resume(path: Path) -> tuple[Path, str]:
    """(checkpoint root, tag) of ``--resume PATH``: a root (its ``latest``) or a tag folder."""
    if (path / "latest").is_file():
        return path, read_pointer(path, "latest")
    if path.is_dir() and (path.parent / "zero_to_fp32.py").is_file():
        return path.parent, path.name
    raise SystemExit(f"--resume {path}: neither a checkpoint folder with a 'latest' file nor a "
                     "checkpoint tag folder")
