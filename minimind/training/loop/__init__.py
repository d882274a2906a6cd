"""The optimizer-step loop and what it consults each step: when to save and evaluate, the schedule, a stop
request, and the host copy of a device value."""
