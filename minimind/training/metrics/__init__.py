"""What the run reports as it trains: the log line, metrics.jsonl and Weights & Biases."""
