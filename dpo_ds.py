"""Direct preference optimisation of a fine-tuned MiniMind model with DeepSpeed: MiniMind's ``train_dpo.py`` on the
same engine, checkpoints and loop as pretraining, the frozen reference model under the same ZeRO stage.

After fine-tuning (``full_sft`` weights in ``out/``), on the bundled preference pairs::

    deepspeed dpo_ds.py

On a cluster, from a hostfile, with MiniMind's data::

    deepspeed --hostfile hostfile dpo_ds.py --deepspeed_config ds_configs/zero3_bf16.json \\
        --data_path dpo.jsonl --from_weight full_sft

``--help`` lists every flag.
"""

import sys

from minimind.training import entry
from minimind.training.stages import DPO


def main(argv: list[str] | None = None) -> int:
    """Run the stage from ``argv`` (the command line where None); returns the exit status (``entry.main``)."""
    return entry.main(DPO, argv)


if __name__ == "__main__":
    sys.exit(main())
