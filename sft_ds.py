"""Supervised fine-tuning of a MiniMind model with DeepSpeed: MiniMind's ``train_full_sft.py`` on the same engine,
checkpoints and loop as pretraining.

After pretraining (its ``.pth`` in ``out/``), on the bundled conversations::

    deepspeed sft_ds.py

On a cluster, from a hostfile, with MiniMind's data::

    deepspeed --hostfile hostfile sft_ds.py --deepspeed_config ds_configs/zero2_bf16.json \\
        --data_path sft_mini_512.jsonl --from_weight pretrain

The loss covers the assistant's tokens only; conversations are packed into windows, each attending only to
itself (``--packing 0``: one padded conversation per row, exactly MiniMind's). ``--help`` lists every flag.
"""

import sys

from minimind.training import entry
from minimind.training.stages import SFT


def main(argv: list[str] | None = None) -> int:
    """Run the stage from ``argv`` (the command line where None); returns the exit status (``entry.main``)."""
    return entry.main(SFT, argv)


if __name__ == "__main__":
    sys.exit(main())
