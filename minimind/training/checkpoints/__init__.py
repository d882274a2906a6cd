"""Checkpoint tags: what they hold and how they are written, recorded and pruned, MiniMind's .pth, the tag a
resume chooses, whether it fits the run, and its universal copy."""
