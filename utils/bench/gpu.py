"""The GPU mode (``make bench DEVICE=cuda``): :mod:`utils.bench.gpu_worker` under the
``deepspeed`` launcher, one rank, at the llava-1.5-7b + SAM ViT-H shape (``tiny`` in quick mode
and in its CPU test)."""
from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("bench.gpu")

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launcher_command(shape: str, out: Path, tiny_dir: Path, data_dir: Path, repeats: int,
                     eval_repeats: int, batch_sizes: list[int], eval_samples: int,
                     max_new_tokens: int) -> list[str]:
    """``deepspeed --num_gpus 1 --module utils.bench.gpu_worker …`` (the launcher's module, so
    that it is the one of this interpreter)."""
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1",
            "--master_port", str(free_port()), "--module", "utils.bench.gpu_worker",
            "--shape", shape, "--out", str(out), "--tiny_dir", str(Path(tiny_dir).resolve()),
            "--data_dir", str(Path(data_dir).resolve()), "--repeats", str(repeats),
            "--eval_repeats", str(eval_repeats),
            "--batch_sizes", *(str(size) for size in batch_sizes),
            "--eval_samples", str(eval_samples), "--max_new_tokens", str(max_new_tokens)]


def gpu_case(shape: str, tiny_dir: Path, data_dir: Path, repeats: int, eval_repeats: int,
             batch_sizes: list[int], eval_samples: int, max_new_tokens: int,
             timeout_seconds: float) -> dict[str, Any]:
    """The worker's record, with the launcher's wall time added.

    Raises:
      RuntimeError: the launch failed or ran past ``timeout_seconds`` (the message holds the
        end of its output).
    """
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "gpu.json"
        command = launcher_command(shape, out, tiny_dir, data_dir, repeats, eval_repeats,
                                   batch_sizes, eval_samples, max_new_tokens)
        logger.info("GPU mode: %s", " ".join(command))
        started = time.perf_counter()
        try:
            result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                    timeout=timeout_seconds)
        except subprocess.TimeoutExpired as error:
            output = b"".join(part or b"" for part in (error.stdout, error.stderr))
            raise RuntimeError(f"the GPU mode ran past {timeout_seconds:.0f} s; its output "
                               f"ended with:\n{output.decode(errors='replace')[-3000:]}"
                               ) from None
        if result.returncode != 0 or not out.is_file():
            raise RuntimeError(f"the GPU mode failed (exit status {result.returncode}); its "
                               f"output ended with:\n{(result.stdout + result.stderr)[-6000:]}")
        record = json.loads(out.read_text())
    return {**record, "wall_seconds": time.perf_counter() - started}
