"""The client state a checkpoint holds beside DeepSpeed's files: its format version, and the one upgrade of
every older layout the project still reads.

Version 2 (this one) records ``format_version``. Version 1 is every checkpoint written before the
version was recorded; its older variants lack entries added since (the position's ``tokens_seen``,
the run identity, the schedule, the wandb id) or hold every visible GPU's RNG state per rank instead of
its own device's. ``upgrade_client_state`` brings any of them to version 2, so that the code that
reads a client state reads one layout.
"""

import torch

from minimind.checkpoint.errors import CheckpointError

FORMAT_KEY = "format_version"
FORMAT_VERSION = 2
# Entries later versions added: absent from a checkpoint written before them.
OPTIONAL_ENTRIES = ("model_config", "tokenizer_fingerprint", "data", "schedule", "wandb_run_id")


def upgrade_client_state(saved: dict) -> dict:
    """``saved`` (a checkpoint's client state, any version this project wrote) in the current layout; a
    checkpoint from a newer version of the project is a one-line ``CheckpointError``."""
    state = dict(saved)
    version = state.get(FORMAT_KEY, 1)
    if version > FORMAT_VERSION:
        raise CheckpointError(f"the checkpoint's client state is format {version}, written by a newer version of "
                              f"this project (this one reads up to format {FORMAT_VERSION}); update it to resume")
    if version == 1:
        state = upgraded_from_version_1(state)
    state[FORMAT_KEY] = FORMAT_VERSION
    return state


def upgraded_from_version_1(state: dict) -> dict:
    """A version-1 client state with every entry of version 2: the entries added since it was written set to
    None, a position without ``tokens_seen`` given the tokens its steps trained on (steps x the saved run's
    global batch x its sequence length), and each rank's RNG state holding only this rank's GPU generator."""
    for name in OPTIONAL_ENTRIES:
        state.setdefault(name, None)
    position = dict(state.get("position") or {})
    batch = (state.get("resolved_ds_config") or {}).get("train_batch_size")
    seq_len = (state.get("args") or {}).get("max_seq_len")
    if "tokens_seen" not in position and batch and seq_len:
        position["tokens_seen"] = position.get("step", 0) * batch * seq_len
    state["position"] = position
    if "rng_states" in state:
        state["rng_states"] = [own_device_generator(rank_state) for rank_state in state["rng_states"]]
    return state


def own_device_generator(rank_state: dict) -> dict:
    """A rank's RNG state with its ``cuda`` entry for this process's current GPU only: a checkpoint from before
    the per-device format holds a list of every visible GPU's generator (dropped when this rank has no GPU
    at that index)."""
    cuda = rank_state.get("cuda")
    if not isinstance(cuda, list):
        return rank_state
    state = {key: value for key, value in rank_state.items() if key != "cuda"}
    if torch.cuda.is_available() and torch.cuda.current_device() < len(cuda):
        state["cuda"] = cuda[torch.cuda.current_device()]
    return state
