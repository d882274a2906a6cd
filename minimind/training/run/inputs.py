"""What a run resolved from its flags before any heavy work."""

import hashlib
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from minimind.checkpoint.locate import CheckpointLocation
from minimind.data import TokenCacheLocation
from minimind.data.chat_data import ChatSamples
from minimind.data.pipeline import DataSettings
from minimind.model import MiniMindConfig
from minimind.tokenizer.loader import tokenizer_fingerprint
from minimind.training.checkpoints.identity import RunIdentity, data_identity
from minimind.training.checkpoints.resume_choice import ResumeRequest
from minimind.training.ds_config.load import BatchPlan
from minimind.training.evaluation.samples import ChatStyle


def chat_rows_identity(data: DataSettings, tokenizer: PreTrainedTokenizerFast) -> dict:
    """What decides a fine-tuning stage's rows besides the file: the family's rows (packed or not), and the chat
    template they are rendered with (minimind2: the tokenizer's, which its fingerprint leaves out) or the seed of
    their random choices (minimind3)."""
    if data.padded_rows == "minimind3":
        return {"rows": data.padded_rows, "seed": data.seed}
    template = hashlib.blake2b((tokenizer.chat_template or "").encode(), digest_size=8).hexdigest()
    return {"rows": data.padded_rows, "chat_template": template}


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
    data: DataSettings
    cache_locations: tuple[TokenCacheLocation, ...]  # one per data file
    resume_request: ResumeRequest | None
    ep_size: int | None
    fit_batch_to_corpus: bool  # the bundled corpus with a batch the user did not choose
    resume: CheckpointLocation | None = None  # the verified tag, once the process group has chosen it
    host_notes: tuple[str, ...] = ()  # CPU threads and precision, MoE's slow path on a GPU: the first lines
    precision_timed: bool = False  # the precision was chosen by timing this rank's processor
    eval_cache_location: TokenCacheLocation | None = None  # of --eval_data_path
    sample_prompts: tuple[str, ...] = ()  # continued at each evaluation (none: no samples)
    stage: str = "pretrain"  # minimind.training.stages.STAGES
    content_digest: str | None = None  # a fine-tuning stage's data file (pretraining's are its token caches')
    reference: dict | None = None  # DPO's reference weights: {"path", "blake2b"}
    chat: ChatSamples | None = None  # a fine-tuning stage's samples, read and checked with the other inputs
    sample_chat: ChatStyle | None = None  # a fine-tuning stage's sample prompts are user turns in this style

    def identity(self) -> RunIdentity:
        """What a checkpoint of this run records, and a resumed checkpoint must share."""
        digests = [location.key_inputs["source"]["blake2b"] for location in self.cache_locations]
        digest = self.content_digest  # None: the bundled corpus
        if digests:  # one file keeps its own digest, as checkpoints from before several files recorded it
            digest = digests[0] if len(digests) == 1 else hashlib.blake2b("".join(digests).encode()).hexdigest()
        mixture = None
        if self.data.is_mixture:
            mixture = {"sources": [[source.name, source.weight] for source in self.data.sources],
                       "exhaust": self.data.mixture_exhaust, "seed": self.data.seed}
        data = data_identity(self.data.description(), digest, self.data.packing, self.data.max_seq_len,
                             self.data.eval_fraction, mixture, self.data.text_field, self.data.padded_rows)
        if self.stage != "pretrain":
            data = {**data, "stage": self.stage, **chat_rows_identity(self.data, self.tokenizer)}
        return RunIdentity(self.model_config.to_dict(), tokenizer_fingerprint(self.tokenizer), data, self.reference)

