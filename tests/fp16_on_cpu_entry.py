"""Test entry point: ``pretrain_ds.py`` with fp16 allowed on the CPU accelerator and one infinite loss.

DeepSpeed refuses fp16 on its CPU accelerator; with ``is_fp16_supported`` overridden it runs
ZeRO-2 fp16 on CPU ranks, which lets a test watch the dynamic loss scaler skip a step.
``INJECT_INF_AT_MICRO_STEP=n`` turns the logits of the n-th forward (1-based) into infinities.
"""

import os
import sys

from deepspeed.accelerator import get_accelerator

import pretrain_ds
from minimind.model.modeling import MiniMindForCausalLM

get_accelerator().is_fp16_supported = lambda: True
inject_at = int(os.environ["INJECT_INF_AT_MICRO_STEP"])
plain_forward = MiniMindForCausalLM.forward
forward_calls = 0


def forward_with_injected_infinity(self, *args, **kwargs):
    global forward_calls
    output = plain_forward(self, *args, **kwargs)
    forward_calls += 1
    if forward_calls == inject_at:
        output.logits = output.logits * float("inf")
    return output


MiniMindForCausalLM.forward = forward_with_injected_infinity

if __name__ == "__main__":
    sys.exit(pretrain_ds.main())
