"""Names and sizes shared by the model, the data code, training and evaluation: one home each.

Dependency-free, so that ``utils/``, ``training/``, the converters and the entry points import
them from here and nothing in ``model/`` needs to import from elsewhere in the project.
"""
from __future__ import annotations

BOX_TOKEN = "[BOX]"  # the token that closes a diagnostic phrase; each one becomes a box
TASKS = ("report", "vqa", "class")  # annotation tasks: report grounding, VQA, classification
BOX_HEADS = ("single", "mhp", "umhp", "hinge")  # single = MedGround, umhp = uMedGround
# what a box's scalar u reports (model/uncertainty.py): the hypotheses' relative spread, one
# minus the IoU head's predicted IoU, or the fixed rule combining both
UNCERTAINTY_SIGNALS = ("spread", "iou", "combined")
VISION_MODELS = ("auto", "vit_h", "vit_l", "vit_b", "tiny")  # SAM / MedSAM encoder types
REFERENCE_BOX_FRAME = 640  # the reference code's boxes are pixels of the image resized to 640²
DEFAULT_MODEL_MAX_LENGTH = 512  # tokens of prompt + answer
DEFAULT_MAX_NEW_TOKENS = 128  # tokens generated per answer at evaluation
IGNORE_INDEX = -100  # a label the text loss skips (the prompt, padding), as in transformers
# Box slots per [BOX] of a new training run (train.py --max_boxes_per_phrase); a config that
# does not name it (one saved before the setting existed) has 1, the single-box model.
DEFAULT_MAX_BOXES_PER_PHRASE = 4
# Pooling heads of a [BOX]'s phrase query (model/phrase_query.py) in a new training run
# (train.py --query_heads); a config that does not name it has 1, the pooling before heads.
DEFAULT_QUERY_HEADS = 4
# The batch keys a UMedGround forward takes (collated by utils.dataset.GroundingCollator).
MODEL_INPUTS = ("sam_images", "pixel_values", "input_ids", "attention_mask", "labels",
                "box_targets", "box_set_targets", "box_set_index")
