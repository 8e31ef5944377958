#!/usr/bin/env bash
# The demo: train the tiny uMedGround on SynthCXR with the deepspeed launcher (CPU, 1 rank),
# export it (safe zero_to_fp32 consolidation + LoRA merge) and evaluate the exported model on the test split.
# `make demo` builds the data and the tiny checkpoints first. Settings come from the
# environment so a shorter run can be tried: DEMO_EPOCHS, DEMO_STEPS, DEMO_BATCH.
# The tiny language model is randomly initialised, so the demo trains it whole (--lora_r 0)
# rather than adapting it with LoRA; the LoRA + merge path is what real checkpoints use, and
# tests/test_training.py runs it. The grounding parts learn at 3x the language model's rate
# (--grounding_lr), the text loss weighs 10x (--ce_loss_weight) and batches are grouped by
# length; docs/experiments.md has the measurements behind each choice.
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
$PY -m training.consolidate "$RUN/ckpt" "$RUN/fp32" --tag best
$PY merge_lora_weights_and_save_hf_model.py --version pretrained/tiny/llava \
  --vision_pretrained pretrained/tiny/sam_tiny.pth --weight "$RUN/fp32" --save_path "$RUN/hf"
$PY test.py --version "$RUN/hf" --dataset_dir ln_data/synthcxr --split test \
  --out "$RUN/eval" --batch_size 16 --vis 4
end=$(date +%s)
echo "demo: training $((trained - start)) s, export + evaluation $((end - trained)) s; metrics in $RUN/eval/metrics.json"
