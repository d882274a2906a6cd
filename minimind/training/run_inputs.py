"""What a run resolved from its flags before any heavy work, and the data it trains on."""

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

from minimind.checkpoint.locate import CheckpointLocation
from minimind.data import RankInvariantSampler, TokenCacheLocation
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
    data_path: Path | None
    cache_location: TokenCacheLocation | None  # of data_path; None for the bundled corpus
    resume_request: ResumeRequest | None
    ep_size: int | None
    fit_batch_to_corpus: bool  # the bundled corpus with a batch the user did not choose
    resume: CheckpointLocation | None = None  # the verified tag, once the process group has chosen it
    host_notes: tuple[str, ...] = ()  # CPU threads and precision, said in the run's first lines
    precision_timed: bool = False  # the precision was chosen by timing this rank's processor
    eval_cache_location: TokenCacheLocation | None = None  # of --eval_data_path
    sample_prompts: tuple[str, ...] = ()  # continued at each evaluation (none: no samples)

    def identity(self, args: argparse.Namespace) -> RunIdentity:
        """What a checkpoint of this run records, and a resumed checkpoint must share."""
        digest = self.cache_location.key_inputs["source"]["blake2b"] if self.cache_location else None
        source = self.data_path.name if self.data_path else "the bundled corpus"
        return RunIdentity(self.model_config.to_dict(), tokenizer_fingerprint(self.tokenizer),
                           data_identity(source, digest, bool(args.packing), args.max_seq_len, args.eval_fraction))


@dataclass
class TrainingData:
    """The sampler and loader of one run and how many optimizer steps it trains."""

    sampler: RankInvariantSampler
    loader: torch.utils.data.DataLoader
    total_steps: int


def weights_name(args: argparse.Namespace) -> str:
    """MiniMind's ``.pth`` name for this run's model."""
    return minimind_weights_name(args.hidden_size, bool(args.use_moe))
