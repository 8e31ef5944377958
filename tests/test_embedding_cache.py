"""The frozen-SAM embedding cache: keys, damaged entries, and cached = uncached results."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from model.constants import MODEL_INPUTS
from model.embedding_cache import EmbeddingCache, encoder_fingerprint
from utils.annotations import load_annotations
from utils.dataset import GroundingCollator, GroundingDataset


class CountingEncoder(nn.Module):
    """A stand-in encoder (B,3,S,S) → (B,4,S/8,S/8) that counts the images it encodes."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 4, 8, stride=8)
        self.encoded = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.encoded += len(images)
        return self.conv(images)


def images(size: int = 32, count: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_entries_are_reused_across_epochs_and_processes(tmp_path):
    encoder = CountingEncoder()
    cache = EmbeddingCache(encoder_fingerprint(encoder), tmp_path)
    first = cache.encode(images(), encoder)
    again = cache.encode(images(), encoder)
    assert encoder.encoded == 3 and torch.equal(first, again)
    fresh = EmbeddingCache(encoder_fingerprint(encoder), tmp_path)  # another rank or run
    assert torch.equal(fresh.encode(images(), encoder), first) and encoder.encoded == 3
    assert not list(tmp_path.rglob("*.tmp"))  # every write was renamed into place


@pytest.mark.parametrize(
    "change", ["image content", "input size", "encoder weights", "encoder dtype"]
)
def test_a_changed_input_or_encoder_never_reuses_an_entry(change, tmp_path):
    encoder = CountingEncoder()
    cache = EmbeddingCache(encoder_fingerprint(encoder), tmp_path)
    cache.encode(images(), encoder)
    inputs, other = images(), encoder
    if change == "image content":
        inputs = inputs.clone()
        inputs[1, 0, 0, 0] += 1e-3
    elif change == "input size":
        inputs = images(size=40)
    elif change == "encoder weights":
        other = CountingEncoder(seed=1)
    else:
        other = CountingEncoder().double()
        inputs = inputs.double()
    recached = EmbeddingCache(encoder_fingerprint(other), tmp_path)
    result = recached.encode(inputs, other)
    assert torch.allclose(result, other(inputs).to(result.dtype))
    assert recached.misses == (1 if change == "image content" else 3)


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "wrong key"])
def test_a_damaged_entry_is_recomputed_with_a_warning(damage, tmp_path, caplog):
    encoder = CountingEncoder()
    cache = EmbeddingCache(encoder_fingerprint(encoder), tmp_path)
    expected = cache.encode(images(count=1), encoder)
    (entry,) = tmp_path.rglob("*.safetensors")
    data = entry.read_bytes()
    if damage == "wrong key":
        from safetensors.torch import save_file

        save_file({"other": torch.zeros(1)}, entry)
    else:
        entry.write_bytes(
            {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x00" * len(data)}[
                damage
            ]
        )
    fresh = EmbeddingCache(encoder_fingerprint(encoder), tmp_path)
    with caplog.at_level(logging.WARNING):
        result = fresh.encode(images(count=1), encoder)
    assert torch.allclose(result, expected) and fresh.recomputed == 1
    assert "unreadable" in caplog.text and str(entry) in caplog.text
    assert (
        EmbeddingCache(encoder_fingerprint(encoder), tmp_path).get(fresh.key(images(count=1)[0]))
        is not None
    )  # rewritten whole


def test_memory_only_cache_keeps_the_most_recent_entries():
    encoder = CountingEncoder()
    per_entry = 4 * 4 * 4 * 4  # (4, 4, 4) float32
    cache = EmbeddingCache(encoder_fingerprint(encoder), None, max_memory_bytes=2 * per_entry)
    cache.encode(images(count=3), encoder)
    assert len(cache.memory) == 2 and cache.memory_bytes == 2 * per_entry


@pytest.fixture(scope="module")
def frozen_model(tiny_dir):
    from model.build import build_umedground
    from model.config import GroundingConfig

    torch.manual_seed(0)
    config = GroundingConfig(
        version=str(tiny_dir / "llava"), vision_pretrained=str(tiny_dir / "sam_tiny.pth"), lora_r=4
    )
    model, processor, _ = build_umedground(config)
    return model.eval(), processor


@pytest.mark.parametrize("noise", [0.0, 20.0])
def test_cached_and_uncached_runs_give_the_same_losses_and_boxes(
    noise, frozen_model, synth_dir, tmp_path
):
    model, processor = frozen_model
    samples = [s for s in load_annotations(synth_dir / "report_val.jsonl") if s.findings][:3]
    dataset = GroundingDataset(
        samples, processor, model.sam_encoder.img_size, image_noise_std=noise
    )
    batch = GroundingCollator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(3)])
    inputs = {key: batch[key] for key in MODEL_INPUTS}
    with torch.no_grad():
        model.embedding_cache = None
        plain = model(**inputs)
        cache = model.enable_embedding_cache(tmp_path, 1 << 20)
        first, second = model(**inputs), model(**inputs)
    model.embedding_cache = None
    assert (cache.misses, cache.hits) == (3, 3)
    for output in (first, second):
        assert torch.allclose(output.prediction.hypotheses, plain.prediction.hypotheses, atol=1e-6)
        for key, value in plain.losses.items():
            assert float(output.losses[key]) == pytest.approx(float(value), rel=1e-6, abs=1e-7)


def test_noise_levels_get_their_own_entries(frozen_model, synth_dir):
    model, processor = frozen_model
    samples = load_annotations(synth_dir / "report_val.jsonl")[:1]
    cache = EmbeddingCache("fingerprint")
    keys = {
        cache.key(
            GroundingDataset(samples, processor, model.sam_encoder.img_size, image_noise_std=noise)[
                0
            ]["sam_image"]
        )
        for noise in (0.0, 10.0, 25.0)
    }
    assert len(keys) == 3
