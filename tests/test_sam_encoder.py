"""SAM / MedSAM / tiny checkpoints: one load path, shapes inferred, errors named."""
from __future__ import annotations

import pytest
import torch
from segment_anything import sam_model_registry

from model.box_decoder import build_box_decoder
from model.sam_encoder import (OFFICIAL_CONFIGS, SAM_TINY_CONFIG, build_sam, infer_sam_config,
                               load_sam_checkpoint, save_sam_checkpoint)


def assert_sane(module: torch.nn.Module) -> None:
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        assert torch.isfinite(tensor).all(), name
        assert tensor.abs().max() < 1e4, name


@pytest.mark.parametrize("name", ["vit_h", "vit_l", "vit_b"])
def test_official_sizes_are_recognised_on_the_meta_device(name):
    with torch.device("meta"):
        sam = sam_model_registry[name](checkpoint=None)
    assert infer_sam_config(sam.state_dict()) == OFFICIAL_CONFIGS[name]


def test_real_size_vit_b_state_dict_loads(tmp_path):
    """A randomly initialised vit_b in the official layout, as medsam_vit_b.pth is stored."""
    torch.manual_seed(0)
    path = tmp_path / "medsam_vit_b.pth"
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), path)
    sam, config = load_sam_checkpoint(path, "auto")
    assert config.name == "vit_b" and sam.image_encoder.img_size == 1024
    assert_sane(sam)
    decoder, report = build_box_decoder(config, 3, sam.state_dict())
    assert torch.equal(decoder.transformer.layers[1].mlp.lin2.weight,
                       sam.mask_decoder.transformer.layers[1].mlp.lin2.weight)
    assert not report.skipped
    with pytest.raises(ValueError, match="--vision_model vit_h was requested but the state dict is a vit_b"):
        load_sam_checkpoint(path, "vit_h")


def test_tiny_round_trip_with_sidecar(tmp_path):
    torch.manual_seed(0)
    sam = build_sam(SAM_TINY_CONFIG)
    path = tmp_path / "sam_tiny.pth"
    save_sam_checkpoint(sam, SAM_TINY_CONFIG, path)
    loaded, config = load_sam_checkpoint(path, "tiny")
    assert config == SAM_TINY_CONFIG
    for (name, a), (_, b) in zip(sam.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert_sane(loaded)
    features = loaded.image_encoder(torch.zeros(2, 3, 256, 256))
    assert features.shape == (2, 64, 32, 32)
    path.with_name(path.name + ".json").unlink()
    with pytest.raises(ValueError, match="sidecar"):
        load_sam_checkpoint(path)


def test_wrapped_state_dict_and_bad_files(tmp_path):
    sam = build_sam(SAM_TINY_CONFIG)
    wrapped = tmp_path / "wrapped.pth"
    save_sam_checkpoint(sam, SAM_TINY_CONFIG, wrapped)
    torch.save({"model": torch.load(wrapped, weights_only=True)}, wrapped)
    assert load_sam_checkpoint(wrapped)[1] == SAM_TINY_CONFIG
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth: cannot be read"):
        load_sam_checkpoint(garbage)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a segment-anything state dict"):
        load_sam_checkpoint(other)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sam_checkpoint(tmp_path / "missing.pth")
