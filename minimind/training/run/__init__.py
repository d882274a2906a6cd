"""One run's pieces built from its config: the resolved inputs, its start-up lines, the engine, the evaluation
plan, its settings file, what its checkpoints hold, and its resume."""
