"""Whether the checkpoint a run resumes from fits the run: the same model, tokenizer and data.

A different model size or MoE layout would fail deep inside DeepSpeed's ``load_state_dict``
after the engine is built, and a different tokenizer would train on ids that now mean other
tokens: both are refused in one line naming what differs, before anything loads. Other data
(another file, or other sample settings) is allowed: the data position restarts at the start
of the checkpoint's epoch, and the run says so.
"""

from dataclasses import dataclass

from minimind.checkpoint.locate import CheckpointLocation
from minimind.errors import ConfigError
from minimind.training.distributed.rank_print import print0

# The config fields that decide the architecture and the shapes and names of the model's parameters.
MODEL_SHAPE_FIELDS = ("model_family", "hidden_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size", "use_moe",
                      "n_routed_experts", "n_shared_experts", "num_experts", "moe_intermediate_size",
                      "num_experts_per_tok", "tie_word_embeddings")
# What a checkpoint that does not record a field had (runs from before the field existed).
UNRECORDED_DEFAULTS = {"model_family": "minimind2"}


@dataclass(frozen=True)
class RunIdentity:
    """What a checkpoint must share with the run that resumes it, as recorded in its client state."""

    model_config: dict
    tokenizer_fingerprint: str
    data: dict  # the data file's name and content digest, and how it is cut into samples
    reference: dict | None = None  # DPO's frozen reference weights: their path and content digest

    def client_state(self) -> dict:
        """The entries ``save_training_state`` adds to the client state."""
        return {"model_config": self.model_config, "tokenizer_fingerprint": self.tokenizer_fingerprint,
                "data": self.data, **({"reference": self.reference} if self.reference is not None else {})}


def data_identity(source: str, content_digest: str | None, packing: bool, max_seq_len: int,
                  held_out_fraction: float | None = None, mixture: dict | None = None,
                  text_field: str = "text", padded_rows: str | None = None) -> dict:
    """The data a run trains on: the file (or the bundled corpus), its content digest, the sample cut (without
    packing, whose rows), the share of documents held out for validation, the mixture's sources, weights,
    policy and seed, and the field the texts are read from (the last three recorded only where there is one,
    or it is not ``text``)."""
    identity = {"source": source, "content": content_digest, "packing": packing, "max_seq_len": max_seq_len}
    if not packing:
        identity["rows"] = padded_rows
    if text_field != "text":
        identity["text_field"] = text_field
    if held_out_fraction:
        identity["held_out_fraction"] = held_out_fraction
    if mixture:
        identity["mixture"] = mixture
    return identity


def check_resume_fits(location: CheckpointLocation, client_state: dict, run: RunIdentity) -> None:
    """Refuse (``ConfigError``) a checkpoint whose model, tokenizer or DPO reference weights differ from ``run``'s.
    Fields a checkpoint does not record (older runs) are not compared, except the model family: a checkpoint
    without one is minimind2's."""
    saved_model = client_state.get("model_config") or {}
    if saved_model:
        saved_model = {**UNRECORDED_DEFAULTS, **saved_model}
    differences = [
        f"{field} {saved_model[field]} (checkpoint) vs {run.model_config.get(field)} (this run)"
        for field in MODEL_SHAPE_FIELDS
        if field in saved_model and saved_model[field] != run.model_config.get(field)
    ]
    if differences:
        raise ConfigError(f"{location.tag_dir}: the checkpoint's model differs from this run's flags: "
                          f"{'; '.join(differences)}; pass the checkpoint's sizes or use another --save_dir")
    saved_tokenizer = client_state.get("tokenizer_fingerprint")
    if saved_tokenizer is not None and saved_tokenizer != run.tokenizer_fingerprint:
        raise ConfigError(f"{location.tag_dir}: the checkpoint was trained with another tokenizer (its token ids "
                          "mean other text); pass the same --tokenizer_path or use another --save_dir")
    saved_reference = client_state.get("reference")
    if saved_reference is not None and run.reference is not None and \
            saved_reference["blake2b"] != run.reference["blake2b"]:
        raise ConfigError(f"{location.tag_dir}: the checkpoint was trained against the reference weights "
                          f"{saved_reference['path']} as they were; {run.reference['path']} now holds other weights "
                          "(DPO's loss would change meaning); restore them or start over with --overwrite")


def data_position_applies(client_state: dict, run: RunIdentity) -> bool:
    """Whether the checkpoint's data position means the same samples in this run; when the data
    differs, says so in one line (the position then restarts at the start of the epoch)."""
    saved = client_state.get("data")
    if saved is None or saved == run.data:
        return True
    changed = [key for key in {**saved, **run.data} if saved.get(key) != run.data.get(key)]
    print0(f"warning: the data differs from the checkpoint's ({', '.join(changed)}: {saved.get('source')} -> "
           f"{run.data['source']}); the data position restarts at the start of epoch "
           f"{(client_state.get('position') or {}).get('epoch', 0)}")
    return False
