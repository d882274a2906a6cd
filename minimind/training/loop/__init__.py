"""The optimizer-step loop and what it consults each step: when to evaluate, the schedule, a stop request, and
the host copy of a device value (when to save is the checkpoint manager's)."""
