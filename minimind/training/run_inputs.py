"""What a run resolved from its flags before any heavy work, and the data it trains on."""

import argparse
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

from minimind.checkpoint.locate import CheckpointLocation
from minimind.data import DataSource, MixedSamples, RankInvariantSampler, TokenCacheLocation
from minimind.model import MiniMindConfig
from minimind.model.pth_weights import minimind_weights_name
from minimind.tokenizer.loader import tokenizer_fingerprint
from minimind.training.ds_config import BatchPlan
from minimind.training.resume import ResumeRequest
from minimind.training.resume_fit import RunIdentity, data_identity


@dataclass
class RunInputs:
    """Everything ``check_inputs`` resolved from the flags before any heavy work."""

    cpu_only: bool
    demo: bool
    ds_config: dict
    batch: BatchPlan
    save_dir: Path
    tokenizer: PreTrainedTokenizerFast
    model_config: MiniMindConfig
    data_paths: tuple[Path, ...]  # every file --data_path names, in order; none: the bundled corpus
    cache_locations: tuple[TokenCacheLocation, ...]  # one per data file
    resume_request: ResumeRequest | None
    ep_size: int | None
    fit_batch_to_corpus: bool  # the bundled corpus with a batch the user did not choose
    resume: CheckpointLocation | None = None  # the verified tag, once the process group has chosen it
    host_notes: tuple[str, ...] = ()  # CPU threads and precision, MoE's slow path on a GPU: the first lines
    precision_timed: bool = False  # the precision was chosen by timing this rank's processor
    eval_cache_location: TokenCacheLocation | None = None  # of --eval_data_path
    sample_prompts: tuple[str, ...] = ()  # continued at each evaluation (none: no samples)
    sources: tuple[DataSource, ...] = ()  # --data_path's sources (weighted: a mixture); none: the bundled corpus

    @property
    def is_mixture(self) -> bool:
        """Whether ``--data_path`` gave weights: the samples are a mixture of the sources."""
        return any(source.weight is not None for source in self.sources)

    def identity(self, args: argparse.Namespace) -> RunIdentity:
        """What a checkpoint of this run records, and a resumed checkpoint must share."""
        digests = [location.key_inputs["source"]["blake2b"] for location in self.cache_locations]
        digest = None  # the bundled corpus
        if digests:  # one file keeps its own digest, as checkpoints from before several files recorded it
            digest = digests[0] if len(digests) == 1 else hashlib.blake2b("".join(digests).encode()).hexdigest()
        mixture = None
        if self.is_mixture:
            mixture = {"sources": [[source.name, source.weight] for source in self.sources],
                       "exhaust": args.mixture_exhaust, "seed": args.seed}
        return RunIdentity(self.model_config.to_dict(), tokenizer_fingerprint(self.tokenizer),
                           data_identity(self.data_description, digest, bool(args.packing), args.max_seq_len,
                                         args.eval_fraction, mixture, args.text_field))

    @property
    def data_description(self) -> str:
        """The training data in a few words: the file's name, the count and first names of several, the
        sources of a mixture, or the bundled corpus."""
        if self.is_mixture:
            return f"a mixture of {', '.join(f'{source.name}:{source.weight:g}' for source in self.sources)}"
        names = [path.name for path in self.data_paths]
        if len(names) > 1:
            return f"{len(names)} files ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
        return names[0] if names else "the bundled corpus"


@dataclass
class TrainingData:
    """The sampler and loader of one run, how many optimizer steps it trains, and its mixture (if any)."""

    sampler: RankInvariantSampler
    loader: torch.utils.data.DataLoader
    total_steps: int
    mixture: MixedSamples | None = None

    def start_epoch(self, epoch: int, start_sample: int) -> list[str]:
        """Deal epoch ``epoch`` from global sample ``start_sample`` on (a mixture's sources move on to the
        epoch's samples); returns lines naming the sources this epoch repeats."""
        self.sampler.set_epoch(epoch, start_sample)
        if self.mixture is None:
            return []
        self.mixture.set_epoch(epoch)
        return self.mixture.describe_repeats()


def weights_name(args: argparse.Namespace) -> str:
    """MiniMind's ``.pth`` name for this run's model."""
    return minimind_weights_name(args.hidden_size, bool(args.use_moe))
