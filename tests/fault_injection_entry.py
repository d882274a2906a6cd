"""Test entry point: ``pretrain_ds.py`` with faults injected at chosen points, set by environment.

- ``ALLOW_FP16_ON_CPU=1``: override the CPU accelerator's refusal of fp16 (DeepSpeed then runs
  ZeRO-2 fp16 on CPU ranks, which lets a test watch the dynamic loss scaler).
- ``INJECT_NONFINITE_AT=a-b,c,...``: the forwards numbered a..b, c, ... (1-based, per rank)
  return infinite logits, so their losses and gradients are not finite.
- ``KILL_DURING_SAVE=rank:n``: that rank dies (``os._exit``) inside the n-th checkpoint save,
  after the model states are written and before its optimizer shard is.
- ``DISK_FULL_DURING_SAVE=rank:n``: at the same point, that rank's next ``torch.save`` (its
  optimizer shard) fails the way it fails on a full disk (it writes to ``/dev/full``).
"""

import os
import sys
from pathlib import Path

import torch
from deepspeed.accelerator import get_accelerator
from deepspeed.runtime.engine import DeepSpeedEngine

import pretrain_ds
from minimind.model.modeling import MiniMindForCausalLM
from minimind.training.distributed.world import global_rank

if os.environ.get("ALLOW_FP16_ON_CPU") == "1":
    get_accelerator().is_fp16_supported = lambda: True

if "INJECT_NONFINITE_AT" in os.environ:
    nonfinite_calls = set()
    for span in os.environ["INJECT_NONFINITE_AT"].split(","):
        first, _, last = span.partition("-")
        nonfinite_calls.update(range(int(first), int(last or first) + 1))
    plain_forward = MiniMindForCausalLM.forward
    forward_calls = 0

    def forward_with_injected_infinity(self, *args, **kwargs):
        global forward_calls
        output = plain_forward(self, *args, **kwargs)
        forward_calls += 1
        if forward_calls in nonfinite_calls:
            output.logits = output.logits * float("inf")
        return output

    MiniMindForCausalLM.forward = forward_with_injected_infinity

def fail_inside_a_save(variable: str, fault) -> None:
    """``variable=rank:n``: ``fault(engine)`` runs on that rank inside its n-th checkpoint save,
    after the model states are written and before its optimizer shard is."""
    victim, _, save_number = os.environ[variable].partition(":")
    plain_save_zero = DeepSpeedEngine._save_zero_checkpoint
    saves = 0

    def save_zero_with_fault(self, *args, **kwargs):
        nonlocal saves
        saves += 1
        if global_rank() == int(victim) and saves == int(save_number):
            fault(self)
        return plain_save_zero(self, *args, **kwargs)

    DeepSpeedEngine._save_zero_checkpoint = save_zero_with_fault


def write_to_a_full_disk(engine) -> None:
    """The next ``torch.save`` starts its file, then fails as it does on a full disk."""
    plain_torch_save = torch.save

    def save_onto_full_disk(obj, path, *args, **kwargs):
        torch.save = plain_torch_save
        Path(path).write_bytes(b"\0" * 1024)
        plain_torch_save(obj, "/dev/full", *args, **kwargs)

    torch.save = save_onto_full_disk


if "KILL_DURING_SAVE" in os.environ:
    fail_inside_a_save("KILL_DURING_SAVE", lambda engine: os._exit(17))

if "DISK_FULL_DURING_SAVE" in os.environ:
    fail_inside_a_save("DISK_FULL_DURING_SAVE", write_to_a_full_disk)

if __name__ == "__main__":
    sys.exit(pretrain_ds.main())
