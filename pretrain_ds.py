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

from minimind.errors import UserInputError, first_line
from minimind.training.arguments import parse_args
from minimind.training.checkpointing import CheckpointWriteError
from minimind.training.loop import NonFiniteStepsError
from minimind.training.pretrain import pretrain
from minimind.training.process_group import lost_a_peer
from minimind.training.world import global_rank


def main(argv: list[str] | None = None) -> int:
    """Parse flags and train. Bad input is one line on stderr and exit status 2; a run stopped
    for non-finite losses is one line and status 3, one whose checkpoint could not be written
    (disk full) one line and status 4; a rank that loses its peers (one died) one line and status 5."""
    try:
        pretrain(parse_args(argv))
    except UserInputError as error:
        print(f"pretrain_ds.py: error: {error}", file=sys.stderr, flush=True)
        return error.exit_status
    except NonFiniteStepsError as error:  # every rank stops together: rank 0 says why
        if global_rank() == 0:
            print(f"pretrain_ds.py: stopped: {error}", file=sys.stderr, flush=True)
        return 3
    except CheckpointWriteError as error:
        print(f"pretrain_ds.py: stopped: {error}", file=sys.stderr, flush=True)
        return 4
    except RuntimeError as error:  # DistError, or gloo's plain RuntimeError: another rank died
        if not lost_a_peer(error):
            raise
        print(f"pretrain_ds.py: stopped: rank {global_rank()}: a collective with the other ranks failed "
              f"({first_line(error)}); "
              "another rank has probably died or stalled, see its own message", file=sys.stderr, flush=True)
        return 5
    return 0


if __name__ == "__main__":
    sys.exit(main())
