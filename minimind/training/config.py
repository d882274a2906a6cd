"""One run's configuration: frozen sections, resolved once from the command line (``arguments.run_config``).

Every default (MiniMind's, the CPU demonstration, a preset's size, the bundled corpus's evaluation, the
precision a CPU run times) is applied when the config is built; nothing after that sees ``argparse`` or
changes a value. Each part of the run takes the sections it needs, so a later stage (fine-tuning) can
build its own config from the same sections. ``flags`` keeps the resolved values under their flag names:
what checkpoints record as ``args``, the run settings and the wandb config.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from minimind.data.pipeline import DataSettings
from minimind.model.pth_weights import minimind_weights_name

MINIMIND_DEFAULTS = {  # the width is the model family's (minimind.model.config.FAMILY_DEFAULTS)
    "num_hidden_layers": 8,
    "max_seq_len": 340,
    "log_interval": 100,
    "save_interval": 1000,
}

# What a flag-less run trains on a machine without an accelerator: a model small enough
# for the loss to fall visibly within a few minutes on two cores.
CPU_DEMO = {
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "max_seq_len": 128,
    "batch_size": 8,
    "accumulation_steps": 1,
    "learning_rate": 3e-3,
    "max_steps": 200,
    "log_interval": 10,
    "save_interval": 100,
    "eval_interval": 50,
}
CPU_DEMO_TRIGGERS = ("preset", "hidden_size", "num_hidden_layers", "max_seq_len", "batch_size", "accumulation_steps",
                     "learning_rate", "max_steps")


# MiniMind's pretraining stage's --save_weight: its records stay in the save folder itself.
DEFAULT_SAVE_WEIGHT = "pretrain"


# What a run on the bundled data samples at each evaluation when no prompt flag is given (the share it holds
# out for validation is its stage's, ``Stage.bundled_eval_fraction``).
BUNDLED_SAMPLE_PROMPTS = "default"


@dataclass(frozen=True)
class ModelSection:
    """The model's size and how it runs: MiniMind's size flags (a preset's values where unset)."""

    preset: str | None
    model_family: str  # minimind2 | minimind3 (minimind.model.config.MODEL_FAMILIES)
    hidden_size: int
    num_hidden_layers: int
    use_moe: bool
    activation_checkpointing: bool
    ep_size: int | None  # --ep_size: AutoEP's size over the JSON's
    kernels: str  # RMSNorm/RoPE implementation (minimind_kernels.dispatch.IMPLEMENTATIONS)
    packed_attention: str  # how packed conversations attend (minimind.model.packed_attention.PACKED_ATTENTION)
    compile: bool
    tokenizer_path: str | None  # None: the shipped tokenizer
    config_kwargs: Mapping  # MiniMindConfig's arguments (the preset's, overridden by the size flags)


@dataclass(frozen=True)
class BatchSection:
    """The flags that override the DeepSpeed JSON's batch and optimiser values (None: the JSON's)."""

    micro_batch: int | None
    accumulation: int | None
    grad_clip: float | None
    learning_rate: float | None
    chosen: bool  # the user gave a micro-batch or accumulation (the bundled corpus then keeps it)


@dataclass(frozen=True)
class ScheduleSection:
    """How long the run trains and its learning-rate warm-up."""

    epochs: int
    max_steps: int | None
    warmup_steps: int
    seed: int


@dataclass(frozen=True)
class CheckpointSection:
    """Where the run saves, how often, what it keeps, and what it resumes or starts from.

    MiniMind's stages share one ``save_dir``: each publishes ``{save_weight}_{hidden}[_moe].pth`` there, and
    the next starts from one with ``--from_weight``. Each ``save_weight`` keeps its own checkpoints, metrics
    and lock (``records_dir``): in the folder itself for ``pretrain`` (where they always were), in
    ``{save_dir}/{save_weight}/`` for any other, so that stages never take each other's records for their own.
    """

    save_dir: str
    save_weight: str  # the published .pth's prefix (MiniMind's --save_weight)
    from_weight: str | None  # start from {save_dir}/{from_weight}_{hidden}[_moe].pth; None: from scratch
    save_interval: int
    keep_checkpoints: int
    from_resume: bool
    resume_from: str | None
    overwrite: bool
    auto_universal: bool
    verify_checkpoint: str  # minimind.checkpoint.manifest.VERIFY_MODES
    trust_checkpoint: bool

    @property
    def resolved_dir(self) -> Path:
        """``save_dir`` as an absolute path."""
        return Path(self.save_dir).resolve()

    @property
    def records_dir(self) -> Path:
        """Where this stage keeps its checkpoints, metrics, run settings and lock (absolute)."""
        if self.save_weight == DEFAULT_SAVE_WEIGHT:
            return self.resolved_dir
        return self.resolved_dir / self.save_weight

    def weights_path(self, hidden_size: int, use_moe: bool) -> Path:
        """The ``.pth`` this stage publishes: ``{save_dir}/{save_weight}_{hidden}[_moe].pth``."""
        return self.resolved_dir / minimind_weights_name(self.save_weight, hidden_size, use_moe)

    def from_weight_path(self, hidden_size: int, use_moe: bool) -> Path | None:
        """The ``.pth`` the run starts from (``--from_weight``), or None for a start from scratch."""
        if self.from_weight is None:
            return None
        return self.resolved_dir / minimind_weights_name(self.from_weight, hidden_size, use_moe)

    @property
    def resuming(self) -> bool:
        """Whether the run asks to resume (from ``save_dir`` or a named checkpoint)."""
        return bool(self.from_resume or self.resume_from)


@dataclass(frozen=True)
class EvaluationSection:
    """When evaluations run and what they generate (the validation data is the data section's)."""

    interval: int
    max_batches: int  # micro-batches per rank per evaluation; 0: all
    sample_prompts: str | None  # a file, 'default', 'none' or None
    sample_tokens: int


@dataclass(frozen=True)
class DistributedSection:
    """How long ranks wait for each other: at start, and inside a collective."""

    rendezvous_timeout: float
    rendezvous_report_interval: float
    collective_timeout: float


@dataclass(frozen=True)
class HostSection:
    """The machine's part: the DeepSpeed JSON (on a CPU-only machine, the one its processor runs fastest), TF32."""

    cpu_only: bool
    deepspeed_config: str | None
    precision_timed: bool  # the JSON was chosen by timing this rank's processor
    notes: tuple[str, ...]  # CPU threads and precision: lines the run prints first
    tf32: bool


@dataclass(frozen=True)
class LoggingSection:
    """The log line, the stop after non-finite steps, and Weights & Biases."""

    log_interval: int
    max_nonfinite_steps: int
    use_wandb: bool
    wandb_project: str


@dataclass(frozen=True)
class StageSection:
    """Which training stage runs (``minimind.training.stages``) and its own loss's settings."""

    name: str  # pretrain | sft | dpo
    beta: float | None = None  # DPO's --beta


@dataclass(frozen=True)
class RunConfig:
    """Every section of a training run (of any stage), and the resolved flags by name."""

    model: ModelSection
    data: DataSettings
    batch: BatchSection
    schedule: ScheduleSection
    checkpoint: CheckpointSection
    evaluation: EvaluationSection
    distributed: DistributedSection
    host: HostSection
    logging: LoggingSection
    demo: bool  # the CPU demonstration's settings apply (a CPU-only machine, no size or batch flag)
    flags: Mapping  # every flag's resolved value, by flag name
    stage: StageSection = StageSection("pretrain")

    def weights_path(self) -> Path:
        """The ``.pth`` this run publishes (``CheckpointSection.weights_path`` of this model)."""
        return self.checkpoint.weights_path(self.model.hidden_size, self.model.use_moe)

    def from_weight_path(self) -> Path | None:
        """The ``.pth`` this run starts from, or None (``CheckpointSection.from_weight_path`` of this model)."""
        return self.checkpoint.from_weight_path(self.model.hidden_size, self.model.use_moe)
