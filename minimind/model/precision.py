"""Training precisions, named as the DeepSpeed configs name them: dtypes, bytes per value, and
which one a config trains in. The one table every layer uses (training, checkpoints, the plan).
"""

import torch

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# MiniMind's --dtype names for them.
DTYPE_PRECISIONS = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
PRECISION_BYTES = {name: dtype.itemsize for name, dtype in PRECISION_DTYPES.items()}
# What mixed-precision Adam keeps per parameter besides the module copy: the fp32 master
# weight and Adam's two fp32 moments.
OPTIMIZER_STATE_BYTES_PER_PARAM = 4 + 4 + 4


def precision_of(ds_config: dict) -> str:
    """``fp16``, ``bf16`` or ``fp32``: what a DeepSpeed config (its ``fp16``/``bf16`` sections) trains in."""
    for name in ("fp16", "bf16"):
        if ds_config.get(name, {}).get("enabled"):
            return name
    return "fp32"
