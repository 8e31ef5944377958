"""DeepSpeed checkpoints: save, safe resume, best-checkpoint selection, pruning, atomic pointers.

Layout under ``<run>/ckpt/``: one folder per tag (``step_000120``) holding DeepSpeed's files,
``grounding_config.json``, ``train_args.json`` and, last, ``complete.json``; the pointer files
``latest`` and ``best`` (a tag name each) and ``best.json`` (the tag, metric, mode and value).
A tag counts only once ``complete.json`` is in it, and the pointers are replaced atomically
(write a temporary file, then ``os.replace``) after every rank has finished writing. A crash
mid-save therefore leaves ``latest`` on the previous, complete checkpoint. Tags other than the
latest and the best are deleted after each save.

Nothing is unpickled beyond tensors and plain types: every file is checked before DeepSpeed
reads it (:mod:`training.safe_load`), and the RNG and counters are stored as tensors and ints.
"""
from __future__ import annotations

import json
import logging
import math
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

from model.config import GroundingConfig
from training.distributed import all_gather, barrier, rank, world_size
from training.rng import capture_rng, restore_rng
from training.safe_load import UnsafeCheckpointError, check_checkpoint_files, safe_loading
from training.state import TrainState

logger = logging.getLogger(__name__)

TRAIN_ARGS_NAME = "train_args.json"
COMPLETE_NAME = "complete.json"
BEST_RECORD = "best.json"
LATEST, BEST = "latest", "best"
BEST_MODES = ("auto", "max", "min")
LOWER_IS_BETTER = ("aurc", "loss")  # metric names (dotted-key parts) where smaller wins
# What reading a damaged or unsafe file raises inside DeepSpeed's and torch's loaders.
LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, OSError, EOFError, AssertionError,
               KeyError, ValueError, zipfile.BadZipFile)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names the path and what to do."""


def default_best_mode(metric: str) -> str:
    """``min`` for metrics where lower is better (AURC, losses), else ``max``."""
    parts = metric.lower().split(".")
    return "min" if any(word in part for part in parts for word in LOWER_IS_BETTER) else "max"


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_pointer(root: Path, name: str) -> str | None:
    """The tag a pointer file names, ``None`` without the file, ``""`` when it is empty."""
    path = root / name
    return path.read_text(encoding="utf-8", errors="replace").strip() if path.is_file() else None


def complete_tags(root: Path) -> list[str]:
    """The tags under ``root`` whose save finished, oldest first."""
    return sorted(folder.name for folder in root.glob("step_*")
                  if (folder / COMPLETE_NAME).is_file())


def _advice(root: Path) -> str:
    tags = complete_tags(root)
    if not tags:
        return f"{root} holds no complete checkpoint; start without --resume"
    return f"use --resume {root / tags[-1]} (complete tags: {', '.join(tags)})"


def resolve_resume(path: Path, flag: str = "--resume") -> tuple[Path, str]:
    """(checkpoint root, tag) of ``--resume PATH``: a root (its ``latest``) or a tag folder,
    checked to be complete and safe to load.

    Raises:
      CheckpointError: the path, its ``latest`` or the tag is missing, empty, half-written,
        truncated or unsafe; the message says which and what to resume from instead.
    """
    if not path.exists():
        raise CheckpointError(f"{flag} {path}: no such folder")
    if (path / LATEST).is_file():
        root, tag = path, read_pointer(path, LATEST)
        if not tag:
            raise CheckpointError(f"{path / LATEST} is empty; {_advice(root)}")
        if not (root / tag).is_dir():
            raise CheckpointError(f"{path / LATEST} names {tag!r}, but {root / tag} does not "
                                  f"exist; {_advice(root)}")
    elif path.is_dir() and path.name.startswith("step_"):
        root, tag = path.parent, path.name
    elif path.is_dir() and any(path.glob("step_*")):
        raise CheckpointError(f"{flag} {path}: it has no '{LATEST}' file; {_advice(path)}")
    else:
        raise CheckpointError(f"{flag} {path}: neither a checkpoint folder with a '{LATEST}' "
                              "file nor a checkpoint tag folder (runs/<exp>/ckpt/step_XXXXXX)")
    folder = root / tag
    if not (folder / COMPLETE_NAME).is_file():
        raise CheckpointError(f"{folder} is half-written (no {COMPLETE_NAME}: its save was "
                              f"interrupted); {_advice(root)}")
    try:
        check_checkpoint_files(folder)
    except UnsafeCheckpointError as error:
        raise CheckpointError(f"{error}; {_advice(root)}") from error
    return root, tag


def read_best(root: Path, metric: str, mode: str) -> tuple[str | None, float | None]:
    """The best (tag, value) recorded in ``best.json`` for ``metric`` and ``mode``; (None, None)
    when there is none or it was chosen by another metric or mode (a warning says so)."""
    path = root / BEST_RECORD
    if not path.is_file():
        return None, None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        tag, value = str(record["tag"]), float(record["value"])
        recorded = (record["metric"], record.get("mode", default_best_mode(record["metric"])))
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: malformed ({error!r}); delete it to choose the best "
                              "checkpoint anew") from error
    if recorded != (metric, mode):
        logger.warning("%s was chosen by %s (%s); this run selects by %s (%s) and starts afresh",
                       path, *recorded, metric, mode)
        return None, None
    return tag, value


class Checkpointer:
    """Saves and resumes one run's checkpoints and keeps its best one.

    Arguments:
      engine: the DeepSpeed engine.
      root: ``<run>/ckpt``.
      config, train_args: written beside each tag.
      metric, mode: the validation metric (dotted key) that picks the best checkpoint, and
        whether higher (``max``) or lower (``min``) wins; ``auto`` picks by the metric's name.
    """

    def __init__(self, engine: Any, root: Path, config: GroundingConfig,
                 train_args: dict[str, Any], metric: str, mode: str = "auto"):
        if mode not in BEST_MODES:
            raise ValueError(f"best mode {mode!r} is not one of {BEST_MODES}")
        self.engine, self.root, self.config, self.train_args = engine, root, config, train_args
        self.metric = metric
        self.mode = default_best_mode(metric) if mode == "auto" else mode

    def save(self, state: TrainState) -> str:
        """Write ``state.tag`` on every rank, then (rank 0) its config files, the completion
        marker and ``latest``, and prune old tags. Returns the tag."""
        tag = state.tag
        folder = self.root / tag
        if rank() == 0 and folder.exists():  # a half-written leftover of a killed run
            shutil.rmtree(folder)
        barrier()
        state.rng = all_gather(capture_rng())
        self.engine.save_checkpoint(str(self.root), tag=tag, save_latest=False,
                                    client_state={"train_state": state.counters(),
                                                  "rng": state.rng})
        barrier()
        if rank() == 0:
            self.config.save(folder)
            (folder / TRAIN_ARGS_NAME).write_text(json.dumps(self.train_args, indent=2,
                                                             sort_keys=True))
            write_atomic(folder / COMPLETE_NAME, json.dumps({**state.counters(),
                                                             "world_size": world_size()}))
            write_atomic(self.root / LATEST, tag)
            self._prune(keep={tag, state.best_tag})
        barrier()
        return tag

    def _prune(self, keep: set[str | None]) -> None:
        for folder in self.root.glob("step_*"):
            if folder.is_dir() and folder.name not in keep:
                shutil.rmtree(folder)

    def resume(self, path: Path) -> TrainState:
        """Load a checkpoint into the engine and restore the counters, this rank's RNG and the
        best so far (from ``best.json``)."""
        root, tag = resolve_resume(path)
        folder = root / tag
        try:
            with safe_loading():
                _, client = self.engine.load_checkpoint(str(root), tag=tag)
        except LOAD_ERRORS as error:
            raise CheckpointError(f"cannot load {folder}: {type(error).__name__}: "
                                  f"{str(error).splitlines()[0] if str(error) else ''}; "
                                  f"{_advice(root)}") from error
        if not client or "train_state" not in client or "rng" not in client:
            raise CheckpointError(f"{folder} was not written by this train.py (no training "
                                  f"counters in its client state); {_advice(root)}")
        state = TrainState.from_counters(client["train_state"], str(folder))
        if len(client["rng"]) != world_size():
            raise CheckpointError(f"{folder} was written by {len(client['rng'])} rank(s); "
                                  f"resume it with the same number (now {world_size()})")
        state.rng = client["rng"]
        restore_rng(state.rng[rank()])
        state.best_tag, state.best_value = read_best(self.root, self.metric, self.mode)
        return state

    def is_better(self, value: float, best: float | None) -> bool:
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best if self.mode == "max" else value < best

    def record_validation(self, state: TrainState, tag: str, value: float) -> bool:
        """Make ``tag`` the best checkpoint when ``value`` beats the best so far."""
        if not self.is_better(value, state.best_value):
            return False
        state.best_value, state.best_tag = value, tag
        if rank() == 0:
            write_atomic(self.root / BEST_RECORD, json.dumps(
                {"tag": tag, "metric": self.metric, "mode": self.mode, "value": value}))
            write_atomic(self.root / BEST, tag)
        return True

