"""Each benchmark case in a fresh process, so that its peak RSS is its own."""
from __future__ import annotations

import multiprocessing
import queue as queues
import time
from typing import Any, Callable

import torch

from utils.bench.timing import peak_rss_mb
from utils.logs import setup_logging


def _child(function: Callable[..., dict], kwargs: dict, results: Any) -> None:
    setup_logging()
    torch.set_num_threads(kwargs.pop("threads"))
    results.put({**function(**kwargs), "peak_rss_mb": peak_rss_mb()})


def in_own_process(function: Callable[..., dict], **kwargs: Any) -> dict:
    """``function(**kwargs)`` in a spawned process, with its peak RSS and wall time added.
    ``kwargs`` must hold ``threads`` (torch's thread count in the child)."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_child, args=(function, kwargs, results))
    started = time.perf_counter()
    process.start()
    while True:
        try:
            result = results.get(timeout=5)
            break
        except queues.Empty:
            if not process.is_alive():
                raise RuntimeError(f"benchmark case {function.__name__} died "
                                   f"(exit code {process.exitcode})")
    process.join()
    return {**result, "wall_seconds": time.perf_counter() - started}
