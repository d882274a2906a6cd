"""The training side: arguments, DeepSpeed config, schedule, loop, checkpoints and logging."""
