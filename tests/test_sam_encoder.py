"""SAM / MedSAM / tiny checkpoints: one load path, shapes inferred, errors named."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT

from model.box_decoder import build_box_decoder
from model.sam_encoder import (
    OFFICIAL_CONFIGS,
    SAM_TINY_CONFIG,
    SamImageEncoder,
    build_sam,
    infer_sam_config,
    load_sam_checkpoint,
    save_sam_checkpoint,
)


def assert_sane(module: torch.nn.Module) -> None:
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        assert torch.isfinite(tensor).all(), name
        assert tensor.abs().max() < 1e4, name


def shapes(state_dict: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state_dict.items()}


@pytest.mark.parametrize("name", ["vit_h", "vit_l", "vit_b"])
def test_official_sizes_on_the_meta_device(name):
    """Recognised from the registry's state dict, and build_sam builds the same keys/shapes."""
    with torch.device("meta"):
        official = sam_model_registry[name](checkpoint=None)
        ours = build_sam(OFFICIAL_CONFIGS[name])
    assert infer_sam_config(official.state_dict()) == OFFICIAL_CONFIGS[name]
    assert shapes(ours.state_dict()) == shapes(official.state_dict())
    assert ours.image_encoder.grid_size == 64 and ours.image_encoder.embed_dim == 256


def test_real_size_vit_b_state_dict_loads(tmp_path):
    """A randomly initialised vit_b in the official layout, as medsam_vit_b.pth is stored."""
    torch.manual_seed(0)
    path = tmp_path / "medsam_vit_b.pth"
    official = sam_model_registry["vit_b"](checkpoint=None)
    torch.save(official.state_dict(), path)
    sam, config = load_sam_checkpoint(path, "auto")
    assert config == OFFICIAL_CONFIGS["vit_b"] and sam.image_encoder.image_size == 1024
    assert not path.with_name(path.name + ".json").exists()
    assert_sane(sam)
    loaded = sam.state_dict()
    for key, value in official.state_dict().items():
        assert torch.equal(loaded[key], value), key
    assert torch.equal(sam.pixel_mean, official.pixel_mean)
    assert torch.equal(sam.pixel_std, official.pixel_std)
    decoder, report = build_box_decoder(config, 3, sam.state_dict())
    for key, value in decoder.transformer.state_dict().items():
        assert torch.equal(value, loaded[f"mask_decoder.transformer.{key}"]), key
    assert not report.skipped
    with pytest.raises(ValueError, match="vit_h was requested but the state dict is a vit_b"):
        load_sam_checkpoint(path, "vit_h")


def test_tiny_round_trip_with_sidecar(tmp_path):
    torch.manual_seed(0)
    sam = build_sam(SAM_TINY_CONFIG)
    path = tmp_path / "sam_tiny.pth"
    save_sam_checkpoint(sam, SAM_TINY_CONFIG, path)
    sidecar = path.with_name(path.name + ".json")
    assert json.loads(sidecar.read_text()) == {"encoder_num_heads": 2, "decoder_num_heads": 4}
    loaded, config = load_sam_checkpoint(path, "tiny")
    assert config == SAM_TINY_CONFIG
    assert sam.state_dict().keys() == loaded.state_dict().keys()
    for key, value in sam.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert_sane(loaded)
    sidecar.unlink()
    with pytest.raises(ValueError, match="sam_tiny.pth: .*JSON sidecar"):
        load_sam_checkpoint(path)
    sidecar.write_text("{\"encoder_num_heads\": 2}")
    with pytest.raises(ValueError, match="sam_tiny.pth.json: expected JSON"):
        load_sam_checkpoint(path)


def test_image_encoder_geometry_and_dtype():
    encoder = build_sam(SAM_TINY_CONFIG).image_encoder
    assert isinstance(encoder, SamImageEncoder) and isinstance(encoder, ImageEncoderViT)
    assert (encoder.image_size, encoder.grid_size, encoder.embed_dim) == (256, 16, 64)
    features = encoder.encode(torch.zeros(2, 3, 256, 256, dtype=torch.float64))
    assert features.shape == (2, 64, 16, 16) and features.dtype == torch.float32


def test_custom_size_is_inferred_from_shapes(tmp_path):
    """Depth, global blocks, patch, image, window and decoder sizes all come from shapes."""
    custom = dataclasses.replace(SAM_TINY_CONFIG, name="custom", encoder_depth=3,
                                 encoder_global_attn_indexes=(1,), patch_size=16, image_size=128,
                                 window_size=4, encoder_num_heads=4, decoder_depth=1,
                                 decoder_num_heads=2, decoder_mlp_dim=32, prompt_embed_dim=32)
    path = tmp_path / "custom.pth"
    save_sam_checkpoint(build_sam(custom), custom, path)
    assert load_sam_checkpoint(path)[1] == custom
    with pytest.raises(ValueError, match="tiny was requested but the state dict is a custom SAM"):
        load_sam_checkpoint(path, "tiny")


def test_wrapped_state_dict_and_bad_files(tmp_path):
    sam = build_sam(SAM_TINY_CONFIG)
    state = sam.state_dict()
    wrapped = tmp_path / "wrapped.pth"
    save_sam_checkpoint(sam, SAM_TINY_CONFIG, wrapped)
    torch.save({"model": state, "epoch": 3}, wrapped)
    assert load_sam_checkpoint(wrapped)[1] == SAM_TINY_CONFIG

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth: cannot be read"):
        load_sam_checkpoint(garbage)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="other.pth: not a segment-anything state dict"):
        load_sam_checkpoint(other)
    mixed = tmp_path / "mixed.pth"
    torch.save({**state, "note": "hello"}, mixed)
    with pytest.raises(ValueError, match="mixed.pth: expected a state dict of tensors"):
        load_sam_checkpoint(mixed)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sam_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="--vision_model 'vit_x' is not one of"):
        load_sam_checkpoint(wrapped, "vit_x")


def test_strict_load_names_missing_unexpected_and_mismatched(tmp_path):
    sam = build_sam(SAM_TINY_CONFIG)
    cases = {
        "missing": ({k: v for k, v in sam.state_dict().items() if "iou_token" not in k},
                    r"1 missing keys \['mask_decoder.iou_token.weight'\], 0 unexpected"),
        "unexpected": ({**sam.state_dict(), "mask_decoder.extra": torch.zeros(1)},
                       r"0 missing keys \[\], 1 unexpected keys \['mask_decoder.extra'\]"),
        "mismatched": ({**sam.state_dict(), "mask_decoder.iou_token.weight": torch.zeros(1, 8)},
                       "does not load into a tiny SAM: .*iou_token"),
    }
    for name, (state, message) in cases.items():
        path = tmp_path / f"{name}.pth"
        save_sam_checkpoint(sam, SAM_TINY_CONFIG, path)
        torch.save(state, path)
        with pytest.raises(ValueError, match=f"{name}.pth: .*{message}"):
            load_sam_checkpoint(path)
