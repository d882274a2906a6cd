"""Pretrain a MiniMind model (dense or MoE) with DeepSpeed.

One machine (all its GPUs, or CPU ranks)::

    deepspeed pretrain_ds.py --deepspeed_config ds_configs/zero2_bf16.json

A cluster, from a hostfile::

    deepspeed --hostfile hostfile pretrain_ds.py --deepspeed_config ds_configs/zero2_bf16.json \\
        --data_path pretrain_hq.jsonl --tokenizer_path path/to/tokenizer

With no flag it trains on the bundled corpus (a short demonstration on a CPU-only
machine). ``--help`` lists every flag; MiniMind's flag names keep their meaning.
"""

import sys

from minimind.training.arguments import parse_args
from minimind.training.loop import NonFiniteStepsError
from minimind.training.pretrain import USER_INPUT_ERRORS, pretrain


def main(argv: list[str] | None = None) -> int:
    """Parse flags and train. Bad input is one line on stderr and exit status 2; a run stopped
    for non-finite losses is one line and status 3."""
    args = parse_args(argv)
    try:
        pretrain(args)
    except USER_INPUT_ERRORS as error:
        print(f"pretrain_ds.py: error: {error}", file=sys.stderr, flush=True)
        return 2
    except NonFiniteStepsError as error:
        print(f"pretrain_ds.py: stopped: {error}", file=sys.stderr, flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
