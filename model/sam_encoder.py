"""SAM / MedSAM image encoders from state dicts in the official segment-anything layout.

One code path loads ``sam_vit_h_4b8939.pth``, ``medsam_vit_b.pth`` (a plain vit_b state
dict) and the project's tiny checkpoint: the architecture is read off the tensor shapes
(:func:`infer_sam_config`), built from ``segment_anything.modeling`` and loaded strictly.
Attention head counts cannot be read off shapes: the official widths (1280, 1024, 768) carry
the official counts, other widths carry them in a JSON sidecar (``<checkpoint>.json``)
written by :func:`save_sam_checkpoint`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from model.constants import VISION_MODELS

SIDECAR_KEYS = ("encoder_num_heads", "decoder_num_heads")


@dataclass(frozen=True)
class SamConfig:
    """The shape of a SAM model (encoder, prompt encoder, mask decoder).

    ``name`` is "vit_h", "vit_l", "vit_b", "tiny" or "custom"; ``prompt_embed_dim`` is the
    encoder's output width (the neck), the prompt width and the mask decoder's width.
    """

    name: str
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    patch_size: int = 16
    image_size: int = 1024
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_global_attn_indexes",
                           tuple(self.encoder_global_attn_indexes))

    @property
    def grid_size(self) -> int:
        """Side of the encoder's feature map, ``image_size // patch_size``."""
        return self.image_size // self.patch_size


OFFICIAL_CONFIGS = {
    "vit_h": SamConfig("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SamConfig("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SamConfig("vit_b", 768, 12, 12, (2, 5, 8, 11)),
}
# The CPU default: 256 px with 16-px patches gives a 16 x 16 feature grid; 64 channels
# throughout; a windowed block (4 x 4 patches) then a global one. The box decoder's heatmap
# and sub-cell offsets place even small nodules on this grid (docs/experiments.md, 2026-11-29).
SAM_TINY_CONFIG = SamConfig("tiny", encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2,
                            encoder_global_attn_indexes=(1,), patch_size=16, image_size=256,
                            window_size=4, prompt_embed_dim=64, decoder_depth=2,
                            decoder_num_heads=4, decoder_mlp_dim=256)
KNOWN_CONFIGS = (*OFFICIAL_CONFIGS.values(), SAM_TINY_CONFIG)


class SamImageEncoder(ImageEncoderViT):
    """SAM's ``ImageEncoderViT`` built from a :class:`SamConfig` (same modules and keys),
    with the geometry the rest of the model needs.

    Attributes:
      image_size: S, the side of the square (padded) input.
      grid_size: S / p, the side of the feature map.
      embed_dim: C, the width of the feature map (the neck's output).
    """

    def __init__(self, config: SamConfig):
        super().__init__(
            depth=config.encoder_depth, embed_dim=config.encoder_embed_dim,
            img_size=config.image_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=config.encoder_num_heads, patch_size=config.patch_size, qkv_bias=True,
            use_rel_pos=True, global_attn_indexes=config.encoder_global_attn_indexes,
            window_size=config.window_size, out_chans=config.prompt_embed_dim)
        self.image_size = config.image_size
        self.grid_size = config.grid_size
        self.embed_dim = config.prompt_embed_dim

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Arguments:
          images: (B,3,S,S) SAM-preprocessed (resized, normalised, padded) images.
        Returns:
          (B,C,S/p,S/p) features, in the encoder's dtype.
        """
        return self(images.to(self.patch_embed.proj.weight.dtype))


def build_sam(config: SamConfig) -> Sam:
    """A randomly initialised ``Sam`` of the given shape; for vit_h/l/b the same modules,
    keys and shapes as ``sam_model_registry`` builds (the encoder is a :class:`SamImageEncoder`)."""
    return Sam(
        image_encoder=SamImageEncoder(config),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(config.grid_size, config.grid_size),
            input_image_size=(config.image_size, config.image_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=config.decoder_depth,
                                          embedding_dim=config.prompt_embed_dim,
                                          mlp_dim=config.decoder_mlp_dim,
                                          num_heads=config.decoder_num_heads),
            transformer_dim=config.prompt_embed_dim, iou_head_depth=3,
            iou_head_hidden_dim=config.prompt_embed_dim),
    )  # Sam's default pixel_mean / pixel_std are the official ones


def _count(state_dict: dict[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for key in state_dict if (m := regex.match(key))})


def infer_sam_config(state_dict: dict[str, torch.Tensor],
                     heads: dict[str, int] | None = None) -> SamConfig:
    """Read a SAM architecture off the tensor shapes of an official-layout state dict.

    Widths, depths, patch, image and window sizes, the global-attention blocks (their
    ``rel_pos_h`` has ``2 * grid - 1`` rows, windowed ones ``2 * window - 1``) and the mask
    decoder's depth and MLP width come from shapes; works on meta tensors.

    Arguments:
      state_dict: keys ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``.
      heads: ``{"encoder_num_heads": …, "decoder_num_heads": …}`` (the sidecar); needed
        unless the encoder width is an official one (1280, 1024, 768).
    Returns:
      the matching official or tiny config, else one named "custom".
    Raises:
      ValueError when the layout is not segment-anything's or heads are needed but absent.
    """
    try:
        embed_dim, _, patch, _ = state_dict["image_encoder.patch_embed.proj.weight"].shape
        grid = state_dict["image_encoder.pos_embed"].shape[1]
        out_chans = state_dict["image_encoder.neck.0.weight"].shape[0]
        decoder_mlp = state_dict["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]
        depth = _count(state_dict, r"image_encoder\.blocks\.(\d+)\.")
        rel_rows = [state_dict[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0]
                    for i in range(depth)]
    except KeyError as error:
        raise ValueError(f"not a segment-anything state dict (no {error.args[0]})") from None
    except (ValueError, IndexError) as error:  # a tensor of the wrong rank
        raise ValueError(f"not a segment-anything state dict (a tensor has an unexpected "
                         f"shape: {error})") from None
    global_blocks = tuple(i for i, rows in enumerate(rel_rows) if rows == 2 * grid - 1)
    windowed = [rows for rows in rel_rows if rows != 2 * grid - 1]
    official = next((c for c in OFFICIAL_CONFIGS.values() if c.encoder_embed_dim == embed_dim),
                    None)
    if heads is None and official is not None:
        heads = {"encoder_num_heads": official.encoder_num_heads,
                 "decoder_num_heads": official.decoder_num_heads}
    if heads is None:
        raise ValueError(f"a SAM of width {embed_dim} is not an official size; its attention "
                         "heads must come from the JSON sidecar written by save_sam_checkpoint "
                         "(<checkpoint>.json)")
    _check_heads(int(embed_dim), int(heads["encoder_num_heads"]), int(out_chans),
                 int(heads["decoder_num_heads"]))
    config = SamConfig(
        "custom", int(embed_dim), depth, int(heads["encoder_num_heads"]), global_blocks,
        patch_size=int(patch), image_size=int(grid * patch),
        window_size=(windowed[0] + 1) // 2 if windowed else 0, prompt_embed_dim=int(out_chans),
        decoder_depth=_count(state_dict, r"mask_decoder\.transformer\.layers\.(\d+)\."),
        decoder_num_heads=int(heads["decoder_num_heads"]), decoder_mlp_dim=int(decoder_mlp))
    return next((known for known in KNOWN_CONFIGS if replace(config, name=known.name) == known),
                config)


def _check_heads(embed_dim: int, encoder_heads: int, prompt_dim: int, decoder_heads: int) -> None:
    """The attention heads must divide the widths (segment_anything only asserts it)."""
    if encoder_heads <= 0 or decoder_heads <= 0:
        raise ValueError(f"attention heads must be positive, got {encoder_heads} (encoder) and "
                         f"{decoder_heads} (decoder)")
    # the mask decoder's cross-attention works at half the prompt width
    widths = (("image encoder", embed_dim, encoder_heads), ("mask decoder", prompt_dim,
              decoder_heads), ("mask decoder cross-attention", prompt_dim // 2, decoder_heads))
    for part, width, heads in widths:
        if width % heads:
            raise ValueError(f"malformed SAM: the {part} width {width} is not divisible by its "
                             f"{heads} attention heads; the checkpoint or its sidecar is corrupt")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``path``: a plain state dict, or one under "model" / "state_dict"."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for foreign or corrupt files
        first_line = (str(error).strip().splitlines() or [""])[0][:300]
        raise ValueError(f"{path}: cannot be read as a state dict with weights_only=True "
                         f"({type(error).__name__}: {first_line}); the file is truncated or "
                         "corrupt (download it again), or holds pickled objects, which are "
                         "never loaded") from None
    if isinstance(raw, dict) and "image_encoder.patch_embed.proj.weight" not in raw:
        raw = next((raw[key] for key in ("model", "state_dict") if isinstance(raw.get(key), dict)),
                   raw)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a state dict, got a {type(raw).__name__}")
    not_tensors = [key for key, value in raw.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{path}: expected a state dict of tensors; {not_tensors[:5]} are not "
                         "tensors")
    return raw


def _read_sidecar(path: Path) -> dict[str, int] | None:
    sidecar = path.with_name(path.name + ".json")
    if not sidecar.is_file():
        return None
    try:
        heads = json.loads(sidecar.read_text(encoding="utf-8"))
        return {key: int(heads[key]) for key in SIDECAR_KEYS}
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise ValueError(f"{sidecar}: expected JSON with integer {list(SIDECAR_KEYS)} "
                         f"({type(error).__name__}: {error}); rewrite it with "
                         "save_sam_checkpoint") from None


def load_sam_checkpoint(path: str | Path, vision_model: str = "auto",
                        device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None) -> tuple[Sam, SamConfig]:
    """Load SAM / MedSAM / tiny weights (``torch.load(weights_only=True)``), strictly.

    Arguments:
      path: the ``.pth`` state dict (official layout; a dict holding it under "model" or
        "state_dict" is accepted too).
      vision_model: the expected type, or "auto"; a mismatch is an error naming both.
      device, dtype: where and in which precision to put the model (default CPU, as stored).
    Returns:
      the model (eval mode) and its config.
    """
    path = Path(path)
    if vision_model not in VISION_MODELS:
        raise ValueError(f"--vision_model {vision_model!r} is not one of {VISION_MODELS}")
    if not path.is_file():
        raise FileNotFoundError(f"--vision_pretrained {path} does not exist (see README, Real "
                                "weights, or run `make tiny`)")
    state_dict = _read_state_dict(path)
    try:
        config = infer_sam_config(state_dict, _read_sidecar(path))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    if vision_model != "auto" and vision_model != config.name:
        raise ValueError(f"{path}: --vision_model {vision_model} was requested but the state "
                         f"dict is a {config.name} SAM")
    try:
        sam = build_sam(config)
    except (AssertionError, ValueError, RuntimeError) as error:
        raise ValueError(f"{path}: the state dict describes a SAM that cannot be built "
                         f"({type(error).__name__}: {error}); the checkpoint is malformed"
                         ) from None
    expected = set(sam.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise ValueError(f"{path}: does not match a {config.name} SAM: {len(missing)} missing "
                         f"keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}")
    try:
        sam.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: does not load into a {config.name} SAM: "
                         f"{' '.join(str(error).split())}") from None
    return sam.to(device=device or "cpu", dtype=dtype).eval(), config


def save_sam_checkpoint(sam: Sam, config: SamConfig, path: str | Path) -> None:
    """Save ``torch.save`` of a plain state dict (the official format), plus the heads sidecar
    ``<path>.json`` for sizes that are not official."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in sam.state_dict().items()}, path)
    if config.name not in OFFICIAL_CONFIGS:
        path.with_name(path.name + ".json").write_text(json.dumps(
            {key: getattr(config, key) for key in SIDECAR_KEYS}, indent=2) + "\n")
