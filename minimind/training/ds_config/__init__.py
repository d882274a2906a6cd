"""The DeepSpeed JSON: loaded, overridden by flags and checked, the batch arithmetic it fixes, and the flag-less
run's batch fitted to the bundled corpus."""
