"""Test entry point: ``pretrain_ds.py`` with faults injected at chosen points, set by environment.

- ``ALLOW_FP16_ON_CPU=1``: override the CPU accelerator's refusal of fp16 (DeepSpeed then runs
  ZeRO-2 fp16 on CPU ranks, which lets a test watch the dynamic loss scaler).
- ``INJECT_NONFINITE_AT=a-b`` (or ``a``): the forwards numbered a..b (1-based, per rank) return
  infinite logits, so their losses and gradients are not finite.
- ``KILL_DURING_SAVE=rank:n``: that rank dies (``os._exit``) inside the n-th checkpoint save,
  after the model states are written and before its optimizer shard is.
"""

import os
import sys

from deepspeed.accelerator import get_accelerator
from deepspeed.runtime.engine import DeepSpeedEngine

import pretrain_ds
from minimind.model.modeling import MiniMindForCausalLM
from minimind.training.rank_print import global_rank

if os.environ.get("ALLOW_FP16_ON_CPU") == "1":
    get_accelerator().is_fp16_supported = lambda: True

if "INJECT_NONFINITE_AT" in os.environ:
    first, _, last = os.environ["INJECT_NONFINITE_AT"].partition("-")
    nonfinite_calls = range(int(first), int(last or first) + 1)
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

if "KILL_DURING_SAVE" in os.environ:
    victim, _, save_number = os.environ["KILL_DURING_SAVE"].partition(":")
    plain_save_zero = DeepSpeedEngine._save_zero_checkpoint
    saves = 0

    def save_zero_then_maybe_die(self, *args, **kwargs):
        global saves
        saves += 1
        if global_rank() == int(victim) and saves == int(save_number):
            os._exit(17)
        return plain_save_zero(self, *args, **kwargs)

    DeepSpeedEngine._save_zero_checkpoint = save_zero_then_maybe_die

if __name__ == "__main__":
    sys.exit(pretrain_ds.main())
