"""Parallelism applied to the model after it is built: expert parallelism through DeepSpeed's AutoEP."""
