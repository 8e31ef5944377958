#!/usr/bin/env bash
# The demo: train the tiny uMedGround on SynthCXR with the deepspeed launcher (CPU, 1 rank),
# export it (zero_to_fp32 + LoRA merge) and evaluate the exported model on the test split.
# `make demo` builds the data and the tiny checkpoints first. Settings come from the
# environment so a shorter run can be tried: DEMO_EPOCHS, DEMO_STEPS, DEMO_BATCH.
# The tiny language model is randomly initialised, so the demo trains it whole (--lora_r 0)
# rather than adapting it with LoRA; the LoRA + merge path is what real checkpoints use, and
# tests/test_training.py runs it. The merge script still writes the exported folder.
# Three settings make the most of the CPU budget. The grounding parts (SAM encoder,
# phrase query, box decoder) learn at 3x the language model's rate (--grounding_lr). The text
# loss weighs 10x (--ce_loss_weight): with Adam only the language model sees the ratio, so
# the box loss no longer drowns its next-token learning (per-token text loss at step 500:
# 0.07 with weight 10, as with no box loss at all; 0.44 with weight 1).
# --group_by_length batches reports of similar length, so less padding goes through the
# language model (380k tokens an epoch instead of 469k; training took 574 s for 1,100 steps,
# against 609 s for 1,000 steps without it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RUN=runs/demo
EPOCHS=${DEMO_EPOCHS:-5}
STEPS=${DEMO_STEPS:-220}
BATCH=${DEMO_BATCH:-16}
start=$(date +%s)
rm -rf "$RUN"
.venv/bin/deepspeed --num_gpus 1 --master_port "${DEMO_PORT:-29517}" train.py \
  --version pretrained/tiny/llava --vision_pretrained pretrained/tiny/sam_tiny.pth \
  --dataset_dir ln_data/synthcxr --dataset report --sample_rates 1 \
  --exp_name demo --log_base_dir runs \
  --epochs "$EPOCHS" --steps_per_epoch "$STEPS" --batch_size "$BATCH" --grad_accumulation_steps 1 \
  --lr 1e-3 --grounding_lr 3e-3 --ce_loss_weight 10 --warmup_steps 30 --group_by_length \
  --train_vision_encoder --lora_r 0 \
  --box_head umhp --num_hypotheses 3 --val_max_samples 32 --val_batch_size 16 --workers 1
trained=$(date +%s)
$PY "$RUN/ckpt/zero_to_fp32.py" "$RUN/ckpt" "$RUN/fp32" --tag "$(cat "$RUN/ckpt/best")" --safe_serialization
$PY merge_lora_weights_and_save_hf_model.py --version pretrained/tiny/llava \
  --vision_pretrained pretrained/tiny/sam_tiny.pth --weight "$RUN/fp32" --save_path "$RUN/hf"
$PY test.py --version "$RUN/hf" --dataset_dir ln_data/synthcxr --split test \
  --out "$RUN/eval" --batch_size 16 --vis 4
end=$(date +%s)
echo "demo: training $((trained - start)) s, export + evaluation $((end - trained)) s; metrics in $RUN/eval/metrics.json"
