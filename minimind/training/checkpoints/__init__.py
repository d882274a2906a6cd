"""Checkpoints: the manager that saves and loads them (when, what a tag holds), the client state's format and its
upgrade, the tag files, MiniMind's .pth, the tag a resume chooses, whether it fits the run, its universal copy."""
