"""Pretrain a MiniMind model (dense or MoE) with DeepSpeed.

One machine (all its GPUs, or CPU ranks)::

    deepspeed pretrain_ds.py --deepspeed_config ds_configs/zero2_bf16.json

A cluster, from a hostfile::

    deepspeed --hostfile hostfile pretrain_ds.py --deepspeed_config ds_configs/zero2_bf16.json \\
        --data_path pretrain_hq.jsonl --tokenizer_path path/to/tokenizer

With no flag it trains on the bundled corpus (a short demonstration on a CPU-only
machine). ``--help`` lists every flag; MiniMind's flag names keep their meaning. The next stages
are ``sft_ds.py`` and ``dpo_ds.py``.
"""

import sys

from minimind.training import entry
from minimind.training.stages import PRETRAIN


def main(argv: list[str] | None = None) -> int:
    """Run the stage from ``argv`` (the command line where None); returns the exit status (``entry.main``)."""
    return entry.main(PRETRAIN, argv)


if __name__ == "__main__":
    sys.exit(main())
