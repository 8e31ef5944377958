"""The model and head configuration, saved beside every checkpoint and exported model."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from model.box_losses import BoxLossConfig
from model.constants import BOX_HEADS, UNCERTAINTY_SIGNALS

CONFIG_NAME = "grounding_config.json"


@dataclass
class GroundingConfig:
    """Everything needed to rebuild a uMedGround model without guessing.

    ``version``/``vision_pretrained`` are the base checkpoints (a llava-hf folder, a SAM /
    MedSAM / tiny state dict). ``lora_r = 0`` trains the whole language model instead of LoRA.
    ``query_layers`` are the LM hidden-state layers (0 = token embeddings, -1 = last layer)
    whose phrase states make a ``[BOX]``'s query (see :mod:`model.phrase_query`), pooled by
    ``query_heads`` heads (a config saved before the setting existed loads with 1; train.py's
    default is ``DEFAULT_QUERY_HEADS``).
    ``gradient_checkpointing`` recomputes the language model's activations in the backward
    pass (training only; LISA turns it on for 7B/13B).
    ``max_boxes_per_phrase`` is K, the boxes each ``[BOX]`` may yield (box slots of the
    decoder, :mod:`model.box_decoder`); 1 is the single-box model of the paper, and a config
    saved before this setting existed loads with 1. train.py's default is
    ``DEFAULT_MAX_BOXES_PER_PHRASE``. ``phrase_box`` (K > 1 only; False for K = 1) adds the
    decoder's phrase box, the single box a phrase reports when its count is one
    (:mod:`model.box_decoder`); a config saved before it existed loads without it, and
    train.py turns it on unless told ``--no_phrase_box``. ``upscaled_heatmap`` places the box
    decoder's centre heatmaps on SAM's 4x upscaled mask grid (:mod:`model.box_decoder`); a
    config saved before it existed loads without it. ``own_count_path`` (K > 1 only; False for
    K = 1) gives the box count a path of its own: a pooling of the phrase's language-model
    states of its own and the decoder's ``[BOX]`` output, both detached, so that the count's
    loss moves nothing the boxes are read from (:mod:`model.box_decoder`); a config saved
    before it existed loads without it, and train.py turns it on unless told
    ``--no-own_count_path``.
    ``ce_weight`` weighs the text loss against the box losses, and ``phrase_start_weight`` the
    cross-entropy of the answer's phrase-start tokens against its other tokens inside it
    (:mod:`model.text_loss`; 1, the plain mean, in configs saved before it existed).
    ``iou_head`` adds the box decoder's IoU-prediction head; ``uncertainty`` is the signal a
    box's ``u`` reports (one of ``UNCERTAINTY_SIGNALS``, see :mod:`model.uncertainty`; ``iou``
    and ``combined`` need the head). Folders saved before these fields load with the defaults.

    In an exported folder (:meth:`model.grounding_model.UMedGround.save_pretrained`)
    ``version`` is ``"."`` (the folder itself) and ``vision_pretrained`` is
    ``"grounding.safetensors"`` when the folder holds the SAM encoder, or the absolute path of
    the SAM checkpoint it links to (``--link_sam``).
    """

    version: str
    vision_pretrained: str
    vision_model: str = "auto"
    box_head: str = "umhp"
    num_hypotheses: int = 3
    max_boxes_per_phrase: int = 1
    phrase_box: bool = False
    upscaled_heatmap: bool = False
    own_count_path: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    train_vision_encoder: bool = False
    lora_sam_rank: int = 0
    query_layers: list[int] = field(default_factory=lambda: [0, -1])
    query_heads: int = 1
    gradient_checkpointing: bool = False
    ce_weight: float = 1.0
    phrase_start_weight: float = 1.0
    box_loss: BoxLossConfig = field(default_factory=BoxLossConfig)
    sam: dict[str, Any] | None = None  # the SAM architecture, filled in when the model is built
    iou_head: bool = False
    uncertainty: str = "spread"

    def __post_init__(self) -> None:
        if self.box_head not in BOX_HEADS:
            raise ValueError(f"box_head {self.box_head!r} is not one of {BOX_HEADS}")
        if self.box_head == "single":
            self.num_hypotheses = 1
        elif self.num_hypotheses < 2:
            raise ValueError(f"box_head {self.box_head!r} needs --num_hypotheses >= 2")
        if not isinstance(self.max_boxes_per_phrase, int) or self.max_boxes_per_phrase < 1:
            raise ValueError(f"max_boxes_per_phrase {self.max_boxes_per_phrase!r} must be an "
                             "integer >= 1")
        if not isinstance(self.phrase_box, bool):
            raise ValueError(f"phrase_box {self.phrase_box!r} must be true or false")
        if not isinstance(self.own_count_path, bool):
            raise ValueError(f"own_count_path {self.own_count_path!r} must be true or false")
        if self.max_boxes_per_phrase == 1:
            self.phrase_box = False
            self.own_count_path = False
        if not isinstance(self.upscaled_heatmap, bool):
            raise ValueError(f"upscaled_heatmap {self.upscaled_heatmap!r} must be true or false")
        if isinstance(self.box_loss, dict):
            self.box_loss = BoxLossConfig(**self.box_loss)
        self.box_loss.mode = self.box_head
        if not isinstance(self.query_heads, int) or self.query_heads < 1:
            raise ValueError(f"query_heads {self.query_heads!r} must be an integer >= 1")
        if not (isinstance(self.phrase_start_weight, (int, float))
                and math.isfinite(self.phrase_start_weight) and self.phrase_start_weight > 0):
            raise ValueError(f"phrase_start_weight {self.phrase_start_weight!r} must be a "
                             "number > 0")
        if not (isinstance(self.lora_dropout, (int, float)) and 0 <= self.lora_dropout < 1):
            raise ValueError(f"lora_dropout {self.lora_dropout!r} must lie in [0, 1)")
        if not self.query_layers:
            raise ValueError("query_layers is empty: name at least one LM layer, e.g. -1")
        if self.uncertainty not in UNCERTAINTY_SIGNALS:
            raise ValueError(f"uncertainty {self.uncertainty!r} is not one of "
                             f"{UNCERTAINTY_SIGNALS}")
        if self.uncertainty != "spread" and not self.iou_head:
            raise ValueError(f"uncertainty {self.uncertainty!r} needs the IoU head (--iou_head)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_dict(cls, raw: Any, source: str) -> "GroundingConfig":
        """A config from its JSON form; ``source`` names where it came from, for errors."""
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: the grounding config must be a JSON object, "
                             f"got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {sorted(unknown)}")
        try:
            return cls(**raw)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {error}") from None

    @classmethod
    def load(cls, folder: str | Path) -> "GroundingConfig":
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: this folder was not written by train.py")
        try:
            raw = json.loads(path.read_text())
        except ValueError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
        return cls.from_dict(raw, str(path))
