"""One run's pieces built from its flags: the resolved inputs, its settings file, what its checkpoints hold, and
its resume."""
