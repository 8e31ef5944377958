"""Training infrastructure: the engine, checkpoints, distributed set-up, DeepSpeed config, logs
and data mixing."""
