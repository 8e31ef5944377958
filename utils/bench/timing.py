"""Interleaved timing, summaries, fitted exponents and peak memory."""
from __future__ import annotations

import math
import resource
import statistics
import time
from typing import Callable

import numpy as np
import torch


def summary(seconds: list[float]) -> dict[str, float | list[float]]:
    """Median, spread (min, max, interquartile range) and the samples themselves."""
    ordered = sorted(seconds)
    quartiles = np.percentile(ordered, [25, 75]) if len(ordered) > 1 else [ordered[0]] * 2
    return {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1],
            "iqr": float(quartiles[1] - quartiles[0]), "samples": ordered}


def interleaved(variants: dict[str, Callable[[], None]], repeats: int, warmup: int = 1,
                sync: Callable[[], None] = lambda: None) -> dict[str, dict]:
    """Time each variant ``repeats`` times, taking them in turn (A B C A B C …) so that a
    slow spell of a shared machine hits every variant alike; the first ``warmup`` rounds are
    run and dropped."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(warmup + repeats):
        for name, run in variants.items():
            sync()
            started = time.perf_counter()
            run()
            sync()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - started)
    return {name: summary(values) for name, values in times.items()}


def device_sync(device: torch.device) -> Callable[[], None]:
    """Waits for the work queued on ``device`` (CUDA kernels run asynchronously, so a timer
    must wait for them); a no-op on a CPU."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def ratio(numerator: dict, denominator: dict) -> float:
    """The ratio of two medians."""
    return numerator["median"] / denominator["median"]


def fit_exponent(x: list[float], y: list[float]) -> float:
    """The slope of log y against log x (y ∝ x^slope), least squares."""
    slope, _ = np.polyfit(np.log(x), np.log(y), 1)
    return float(slope)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
