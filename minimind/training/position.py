"""Where training stands, the one state every part of the run reads: the loop advances it, checkpoints
record it, a resume restores it, the metrics and the report name it."""

from dataclasses import dataclass, fields


@dataclass
class TrainingPosition:
    """Where training stands: the optimizer step done, the next sample of the epoch, the input tokens
    trained on since the start, and the last step evaluated."""

    epoch: int = 0
    step: int = 0
    sample_in_epoch: int = 0
    tokens_seen: int = 0
    evaluated_step: int = 0

    def advance(self, global_batch: int, tokens_per_sample: int = 0) -> None:
        """One optimizer step over ``global_batch`` samples of ``tokens_per_sample`` tokens is done."""
        self.step += 1
        self.sample_in_epoch += global_batch
        self.tokens_seen += global_batch * tokens_per_sample

    def begin_epoch(self, epoch: int) -> None:
        """Move to the start of ``epoch`` (unless already in it: a resume mid-epoch keeps its place)."""
        if epoch != self.epoch:
            self.epoch, self.sample_in_epoch = epoch, 0

    def align(self, samples_per_micro_step: int, samples_per_epoch: int) -> int:
        """Move on to the next multiple of ``samples_per_micro_step`` (a resume with another global
        batch), or to the next epoch when no full step is left in this one; returns the samples skipped."""
        aligned = -(-self.sample_in_epoch // samples_per_micro_step) * samples_per_micro_step
        if aligned > samples_per_epoch:
            skipped = max(samples_per_epoch - self.sample_in_epoch, 0)
            self.epoch, self.sample_in_epoch = self.epoch + 1, 0
            return skipped
        skipped, self.sample_in_epoch = aligned - self.sample_in_epoch, aligned
        return skipped

    @classmethod
    def from_client_state(cls, saved: dict) -> "TrainingPosition":
        """The position a checkpoint's client state recorded (keys of earlier formats ignored)."""
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})
