"""A weighted mixture of data sources: each source's samples in a fixed share of the training tokens.

``--data_path web/*.jsonl:0.7 code.parquet:0.3`` gives each source a share of the tokens an epoch
trains on. ``MixedSamples`` is one dataset of N samples, ``n_d`` of them from source d, chosen so
that ``n_d x (target tokens per sample of d)`` is in proportion to the weights; the
``RankInvariantSampler`` shuffles the N indices as it shuffles any dataset, so the mixture inherits
its guarantees: the same samples in every step on any number of ranks, and an exact resume at any
step boundary. Which of a source's samples an epoch takes is fixed by the seed: each source is read
as an endless stream of passes, pass p a permutation drawn from ``(seed, source, p)``, and epoch e
takes the stream's samples ``[e * n_d, (e + 1) * n_d)``, so later epochs go on where earlier ones
stopped.

How long an epoch is, ``exhaust``:

- ``repeat``: until the source with the most tokens for its weight has been read once; the others
  are repeated (``passes_per_epoch`` says how often).
- ``stop``: until the first source runs out; the others are read in part (and go on next epoch).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

# ``--mixture_exhaust``: how a mixture's epoch ends, in the words the run's data line uses.
EXHAUST_MEANINGS = {"repeat": "sources that run out repeat", "stop": "the epoch ends when a source runs out"}
EXHAUST_POLICIES = tuple(EXHAUST_MEANINGS)


@dataclass(frozen=True)
class MixtureSource:
    """One source of a mixture: its name, weight, samples and their target tokens."""

    name: str
    weight: float
    samples: Dataset  # with ``num_label_tokens`` (PackedWindows, PaddedDocuments)

    @property
    def tokens_per_sample(self) -> float:
        """The source's target tokens per sample, on average."""
        return self.samples.num_label_tokens / len(self.samples)


class MixedSamples(Dataset):
    """The samples of several sources, in shares of the target tokens set by their weights (see the module).

    Index i < N belongs to the source d whose block ``[starts[d], starts[d + 1])`` holds it; call
    ``set_epoch`` before each epoch (the blocks stay, the samples behind them move on). The epoch lives in
    this object: a DataLoader must read it in this process (``num_workers=0``, as ``make_data_loader`` is
    called), or its workers would keep the epoch they were started with.
    """

    def __init__(self, sources: Sequence[MixtureSource], *, exhaust: str = "repeat", seed: int = 0):
        if exhaust not in EXHAUST_POLICIES:
            raise ValueError(f"exhaust must be one of {EXHAUST_POLICIES}, got {exhaust!r}")
        if not sources or any(len(source.samples) == 0 or source.weight <= 0 for source in sources):
            raise ValueError("a mixture needs sources with samples and positive weights")
        self.sources = list(sources)
        self.exhaust = exhaust
        self.seed = seed
        self.counts = mixture_counts(sources, exhaust)  # (sources,) samples per epoch
        self.starts = np.r_[0, np.cumsum(self.counts)]  # (sources + 1,)
        self.num_label_tokens = round(sum(count * source.tokens_per_sample
                                          for count, source in zip(self.counts, sources, strict=True)))
        self.epoch = 0
        self._permutations: dict[tuple[int, int], np.ndarray] = {}

    def set_epoch(self, epoch: int) -> None:
        """Serve epoch ``epoch``'s samples of every source."""
        self.epoch = epoch
        self._permutations.clear()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def source_of(self, index: int) -> int:
        """Which source sample ``index`` comes from."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        return int(np.searchsorted(self.starts, index, side="right")) - 1

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        source = self.source_of(index)
        size = len(self.sources[source].samples)
        pass_index, position = divmod(self.epoch * int(self.counts[source]) + index - int(self.starts[source]), size)
        return self.sources[source].samples[int(self._permutation(source, pass_index)[position])]

    def _permutation(self, source: int, pass_index: int) -> np.ndarray:
        """The order of source ``source``'s samples in its pass ``pass_index`` (drawn once per epoch)."""
        key = (source, pass_index)
        if key not in self._permutations:
            size = len(self.sources[source].samples)
            order = np.random.default_rng([self.seed, source, pass_index]).permutation(size)
            self._permutations[key] = order.astype(np.uint32 if size <= 2**32 else np.int64)  # half the memory
        return self._permutations[key]

    def token_shares(self) -> list[float]:
        """Each source's share of an epoch's target tokens."""
        tokens = [count * source.tokens_per_sample for count, source in zip(self.counts, self.sources, strict=True)]
        return [amount / sum(tokens) for amount in tokens]

    def passes_per_epoch(self) -> list[float]:
        """How many times an epoch reads each source (above 1: repeated; below 1: read in part)."""
        return [int(count) / len(source.samples) for count, source in zip(self.counts, self.sources, strict=True)]

    def describe_repeats(self) -> list[str]:
        """One line per source that an epoch reads more than once: which of its passes the current epoch reads."""
        lines = []
        for source, count in zip(self.sources, self.counts, strict=True):
            size = len(source.samples)
            first, last = self.epoch * int(count) // size, ((self.epoch + 1) * int(count) - 1) // size
            if count > size:
                lines.append(f"mixture, epoch {self.epoch}: {source.name} repeated, passes {first + 1}-{last + 1} "
                             f"over its {size} samples")
        return lines

    def describe(self) -> list[str]:
        """One line per source: weight, realised token share, samples and passes per epoch."""
        total_weight = sum(source.weight for source in self.sources)
        return [f"mixture source {source.name}: weight {source.weight:g} ({source.weight / total_weight:.1%}), "
                f"{share:.2%} of the tokens, {int(count)} of each epoch's {len(self)} samples, "
                f"{passes:.2f} passes per epoch{' (repeated)' if passes > 1 else ''}"
                for source, share, count, passes in zip(self.sources, self.token_shares(), self.counts,
                                                       self.passes_per_epoch(), strict=True)]

    def summary(self) -> list[dict]:
        """``describe``'s figures as records (for run_settings.json and wandb)."""
        return [{"source": source.name, "weight": source.weight, "token_share": share,
                 "samples_per_epoch": int(count), "passes_per_epoch": passes}
                for source, share, count, passes in zip(self.sources, self.token_shares(), self.counts,
                                                       self.passes_per_epoch(), strict=True)]


def mixture_counts(sources: Sequence[MixtureSource], exhaust: str) -> np.ndarray:
    """Samples per epoch of each source, ``n_d`` proportional to ``weight_d / tokens_per_sample_d``, scaled so
    that the source that runs out first (``stop``) or last (``repeat``) is read exactly once; at least one each.
    Returns (sources,) int64."""
    rates = np.array([source.weight / source.tokens_per_sample for source in sources])  # samples per unit
    sizes = np.array([len(source.samples) for source in sources])
    reach = sizes / rates  # the epoch scale at which each source is read exactly once
    limiting = int(reach.argmin() if exhaust == "stop" else reach.argmax())
    scaled = rates * reach[limiting]
    counts = np.maximum(np.floor(scaled) if exhaust == "stop" else np.rint(scaled), 1).astype(np.int64)
    counts[limiting] = sizes[limiting]  # exactly once, whatever the rounding
    return counts
