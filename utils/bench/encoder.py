"""Case c: a real-size frozen SAM encoder (ViT-B at 1024 px, random weights in the official
layout) over a few images for two epochs, with and without the embedding cache."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from model.embedding_cache import EmbeddingCache, encoder_fingerprint
from model.sam_encoder import OFFICIAL_CONFIGS, SAM_TINY_CONFIG, build_sam
from utils.annotations import load_annotations
from utils.bench.timing import device_sync
from utils.image_io import read_image
from utils.sam_transforms import preprocess_for_sam

BATCH = 2


def encoder_case(data_dir: Path, device: torch.device, n_images: int,
                 sam_type: str = "vit_b") -> dict[str, Any]:
    """Seconds per epoch of encoding ``n_images`` (batches of 2): uncached (every epoch is
    the same work, so one is timed), and cached on disk (epoch 1 fills, epoch 2 reads)."""
    config = SAM_TINY_CONFIG if sam_type == "tiny" else OFFICIAL_CONFIGS[sam_type]
    torch.manual_seed(0)
    encoder = build_sam(config).image_encoder.to(device).eval().requires_grad_(False)
    samples = load_annotations(data_dir / "report_test.jsonl")[:n_images]
    images = torch.stack([preprocess_for_sam(read_image(s.image_path), config.image_size)[0]
                          for s in samples]).to(device)
    batches = [images[i:i + BATCH] for i in range(0, len(images), BATCH)]

    sync = device_sync(device)

    def epoch(encode) -> float:
        sync()
        started = time.perf_counter()
        with torch.no_grad():
            for batch in batches:
                encode(batch)
        sync()
        return time.perf_counter() - started

    with tempfile.TemporaryDirectory() as folder:
        cache = EmbeddingCache(encoder_fingerprint(encoder), folder)
        cached = [epoch(lambda batch: cache.encode(batch, encoder)) for _ in range(2)]
    uncached = epoch(encoder)
    return {"sam": sam_type, "image_size": config.image_size, "n_images": len(images),
            "epoch_seconds": {"uncached": uncached, "cached_epoch_1": cached[0],
                              "cached_epoch_2": cached[1]},
            "cache_epoch_speedup": uncached / cached[1]}
