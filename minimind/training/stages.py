"""The training stages MiniMind runs one after the other: pretraining, supervised fine-tuning and DPO.

A stage is its script, its data and its loss; everything else (the run config, the engine, checkpoints, the
loop, evaluation, logging) is shared. Each stage keeps the flag defaults of MiniMind's trainer for it
(``train_pretrain.py``, ``train_full_sft.py``, ``train_dpo.py``) in each version: e119db8's for the minimind2
family, today's for minimind3. On a CPU-only machine without size or batch flags, a stage's short
demonstration starts from the previous stage's demonstration weights in ``out/``.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class Stage:
    """One training stage: its name, script, data kind and flag defaults."""

    name: str  # pretrain | sft | dpo
    script: str  # the entry point beside pretrain_ds.py
    description: str  # the first line of --help
    data: str  # what its --data_path holds: documents | conversations | preferences
    defaults: Mapping  # flag defaults shared by both model families
    family_defaults: Mapping  # per model family: MiniMind's defaults that changed between its versions
    cpu_demo: Mapping = field(default_factory=dict)  # the CPU demonstration's values over pretraining's
    bundled_eval_fraction: float = 0.01  # the share of the bundled data held out for validation
    rows_per_sample: int = 1  # sequences of max_seq_len tokens one sample trains on (DPO: the two answers)

    def flag_defaults(self, family: str) -> dict:
        """This stage's flag defaults for the model ``family`` (before MiniMind's shared ones)."""
        return {**self.defaults, **self.family_defaults[family]}


PRETRAIN = Stage(
    name="pretrain", script="pretrain_ds.py",
    description="Pretrain a MiniMind model with DeepSpeed (ZeRO, mixed precision, MoE).",
    data="documents",
    defaults=MappingProxyType({"save_weight": "pretrain", "from_weight": "none", "wandb_project": "MiniMind-Pretrain"}),
    family_defaults=MappingProxyType({"minimind2": {"epochs": 1}, "minimind3": {"epochs": 2}}),
)
SFT = Stage(
    name="sft", script="sft_ds.py",
    description="Fine-tune a MiniMind model on conversations with DeepSpeed (MiniMind's full SFT).",
    data="conversations",
    defaults=MappingProxyType({"save_weight": "full_sft", "from_weight": "pretrain",
                               "wandb_project": "MiniMind-Full-SFT", "epochs": 2, "batch_size": 16,
                               "accumulation_steps": 1, "grad_clip": 1.0}),
    family_defaults=MappingProxyType({"minimind2": {"learning_rate": 1e-6, "max_seq_len": 340},
                                      "minimind3": {"learning_rate": 1e-5, "max_seq_len": 768}}),
    cpu_demo=MappingProxyType({"learning_rate": 3e-3, "max_steps": 150, "eval_interval": 50, "save_interval": 50}),
)
DPO = Stage(
    name="dpo", script="dpo_ds.py",
    description="Align a fine-tuned MiniMind model with preference pairs by DPO, with DeepSpeed.",
    data="preferences",
    defaults=MappingProxyType({"save_weight": "dpo", "from_weight": "full_sft", "wandb_project": "MiniMind-DPO",
                               "epochs": 1, "batch_size": 4, "accumulation_steps": 1, "grad_clip": 1.0,
                               "learning_rate": 4e-8, "max_seq_len": 1024, "save_interval": 100}),
    family_defaults=MappingProxyType({"minimind2": {"beta": 0.1}, "minimind3": {"beta": 0.15}}),
    cpu_demo=MappingProxyType({"learning_rate": 1e-3, "max_steps": 60, "batch_size": 4, "eval_interval": 30,
                               "save_interval": 30, "log_interval": 10}),
    bundled_eval_fraction=0.05,
    rows_per_sample=2,
)
STAGES = {stage.name: stage for stage in (PRETRAIN, SFT, DPO)}
