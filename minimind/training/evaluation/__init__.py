"""What an evaluation computes: the validation loss over the eval windows and the sample generations."""
