"""Per-rank memory plan of a DeepSpeed pretraining run: will it fit, and what to change if not.

    python -m minimind.plan --preset 1b --world_size 8 --zero 2 --micro_batch 4 --max_seq_len 2048 \\
        [--gpu_memory 80] [--precision bf16] [--activation_checkpointing] [--ep_size 1] [--offload none]

Parameters are counted on a model built on the meta device (tied embeddings once; a MoE's
routed experts all held, or ``1/ep_size`` of them with expert parallelism). Bytes per rank:

Model states (``P`` parameters, ``N`` ranks sharing them, ``w`` bytes per weight: 2 for
bf16/fp16, 4 for fp32), as DeepSpeed's ZeRO optimizer allocates them for Adam:

- parameters: ``w P`` (ZeRO 0-2); ``w P / N + w L`` at ZeRO-3, ``L`` the largest layer's
  parameters, gathered whole while it runs.
- gradients: ``w P`` (ZeRO 0-1, every rank reduces all of them) or ``w P / N`` (ZeRO 2-3),
  plus ``4 P / N`` for the fp32 copy of this rank's gradient partition that the optimizer
  steps on (and ``w L`` gathered at ZeRO-3).
- optimizer states: ``12 P / N``: the fp32 master weights, Adam's momentum and variance.

For mixed precision this is the ZeRO paper's ``2P + 2P + 12P`` plus DeepSpeed's fp32
gradient partition: at ZeRO-2 the sum is ``2P + 18P/N``, exactly
``deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs``; at ZeRO-3
``4L + 20P/N``, which is ``stage3.estimate_zero3_model_states_mem_needs`` (``4L + 18P/N``)
plus the 16-bit parameter partition ``2P/N`` that estimator leaves out (the plan calls both
and checks). ZeRO-1 is derived from the stage-2 arithmetic with unpartitioned gradients
(``4P + 16P/N`` in bf16); ZeRO-0 is ZeRO-1 with ``N = 1`` (in fp32, plain Adam:
``4P + 4P + 8P``). With ``--offload optimizer`` the gradient partition and the optimizer
states live in CPU memory (DeepSpeed's estimators: ``2P`` on the GPU at ZeRO 1-2,
``4L + 2P/N`` at ZeRO-3); ``--offload params`` (ZeRO-3) moves the parameters too (``4L``).

Activations, per micro-batch token (``b`` bytes per activation element, ``h`` hidden, ``f``
FFN width, ``V`` vocabulary), for what autograd keeps between forward and backward:

- a dense block keeps ``b (9h + 4f)`` bytes: attention: the block input, RMSNorm output,
  q, the GQA-repeated k and v, the SDPA output and its re-laid-out copy for ``o_proj``
  (7h); MLP: its input and RMSNorm output (2h), gate, SiLU(gate), up and their product (4f).
  In bf16, each RMSNorm also keeps an fp32 copy of its input: ``+ 8h`` bytes.
- a MoE block replaces ``4f`` with ``4f`` per shared expert plus, per routed slot (``k`` per
  token), the gathered input, ``4f`` and the weighted output: ``k (2h + 4f)``, and the router's
  ``n_routed_experts`` fp32 scores.
- attention is SDPA (flash / memory-efficient kernels): the probabilities are never stored,
  so there is no ``seq^2`` term, only the per-head log-sum-exp (``4 heads`` bytes). The eager
  path (``flash_attn=False``) would add ``b heads seq`` per token.
- with activation checkpointing a block keeps only its input (``b h``), and the backward
  recomputes one block at a time: ``L b h + one block``.
- the head: final RMSNorm (as above), the logits (``b V``, still held by the training step
  during the backward), the fp32 log-softmax the cross-entropy keeps (``4V``), and in its
  backward the incoming and outgoing fp32 gradients (``8V``). (The fp32 copy of bf16 logits,
  ``4V``, lives only during the forward's loss and is smaller than that backward peak.)

Communication buckets: at ZeRO 1-2 DeepSpeed reduces gradients through buffers of
``reduce_bucket_size`` elements, two with ``overlap_comm`` (this project's configs: 5e7, on);
only the part gradients pass through is touched: ``w min(P, 2 x reduce_bucket_size)``; with
more than one rank, each reduction flattens a bucket into one more buffer for the collective:
``+ w min(P, reduce_bucket_size)``. The same terms are kept at ZeRO-3 for its reduce and
prefetch buffers. Parameters include the model's buffers (RoPE cos/sin tables, ``w`` each).

Total = model states + buckets + activations of one micro-batch (``micro_batch x max_seq_len``
tokens). It fits when the total is at most ``gpu_memory x (1 - reserve)``: the reserve (10%)
stands for the CUDA context, kernel workspaces and allocator fragmentation.

Checked against the peak memory of real CPU runs by ``bench/plan_accuracy.py``.
"""

import argparse
import dataclasses
import sys
from dataclasses import dataclass

import torch

from minimind.errors import ConfigError, UserInputError
from minimind.flags import POSITIVE, FlagParser, number_at_least
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.model.precision import OPTIMIZER_STATE_BYTES_PER_PARAM, PRECISION_BYTES
from minimind.model.presets import PRESETS, preset_config_kwargs

GIB = 2**30
OFFLOAD_CHOICES = ("none", "optimizer", "params")
DEFAULT_RESERVE = 0.10
DEFAULT_REDUCE_BUCKET_SIZE = 50_000_000  # ds_configs/*.json


@dataclass(frozen=True)
class ParameterCount:
    """A model's parameters: all of them, the routed experts' share, and the largest single module's."""

    total: int
    routed_experts: int
    largest_layer: int
    buffers: int = 0  # elements of the non-trainable buffers (the RoPE cos/sin tables)

    @property
    def dense(self) -> int:
        return self.total - self.routed_experts


@dataclass(frozen=True)
class PlanSettings:
    """The run whose memory is planned."""

    world_size: int
    zero: int
    micro_batch: int
    max_seq_len: int
    precision: str = "bf16"
    activation_checkpointing: bool = False
    ep_size: int = 1
    offload: str = "none"
    gpu_memory_gib: float = 80.0
    reserve: float = DEFAULT_RESERVE
    reduce_bucket_size: int = DEFAULT_REDUCE_BUCKET_SIZE
    bucket_buffers: int = 2  # 2 with overlap_comm, else 1

    def __post_init__(self):
        if self.zero not in (0, 1, 2, 3):
            raise ConfigError(f"ZeRO stage must be 0-3, got {self.zero}")
        if self.precision not in PRECISION_BYTES:
            raise ConfigError(f"precision must be one of {', '.join(PRECISION_BYTES)}, got {self.precision!r}")
        if self.offload not in OFFLOAD_CHOICES:
            raise ConfigError(f"offload must be one of {', '.join(OFFLOAD_CHOICES)}, got {self.offload!r}")
        if self.offload == "params" and self.zero != 3:
            raise ConfigError("parameter offload needs ZeRO-3")
        if self.offload != "none" and self.zero == 0:
            raise ConfigError("optimizer offload needs ZeRO 1-3")
        if self.world_size < 1 or self.micro_batch < 1 or self.max_seq_len < 1 or self.ep_size < 1:
            raise ConfigError("world_size, micro_batch, max_seq_len and ep_size must be at least 1")
        if self.world_size % self.ep_size:
            raise ConfigError(f"ep_size {self.ep_size} must divide world_size {self.world_size}")
        if not 0 <= self.reserve < 1 or self.gpu_memory_gib <= 0:
            raise ConfigError(f"reserve must be in [0, 1) and gpu_memory above 0, got {self.reserve:g} and "
                              f"{self.gpu_memory_gib:g}")

    @property
    def weight_bytes(self) -> int:
        return PRECISION_BYTES[self.precision]


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per rank of one run, by kind."""

    settings: PlanSettings
    parameters: ParameterCount
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    bucket_bytes: int  # gradient-reduction buffers
    activation_bytes: int  # with the run's activation-checkpointing setting
    activation_bytes_without_checkpointing: int
    activation_bytes_with_checkpointing: int
    cpu_offload_bytes: int  # host memory per node that DeepSpeed's estimator asks for, 0 without offload

    @property
    def model_state_bytes(self) -> int:
        return self.param_bytes + self.grad_bytes + self.optimizer_bytes

    @property
    def total_bytes(self) -> int:
        return self.model_state_bytes + self.bucket_bytes + self.activation_bytes

    @property
    def budget_bytes(self) -> int:
        return int(self.settings.gpu_memory_gib * GIB * (1 - self.settings.reserve))

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.budget_bytes


def model_config(preset: str | None = None, **overrides) -> MiniMindConfig:
    """The ``MiniMindConfig`` of ``preset`` (MiniMind's defaults when None) with non-None ``overrides``."""
    kwargs = preset_config_kwargs(preset) if preset else {}
    kwargs.update({name: value for name, value in overrides.items() if value is not None})
    return MiniMindConfig(**kwargs)


def count_parameters(config: MiniMindConfig) -> ParameterCount:
    """Count the parameters of ``MiniMindForCausalLM(config)`` built on the meta device (no memory used)."""
    with torch.device("meta"):
        model = MiniMindForCausalLM(config)
    total = routed = 0
    for name, parameter in model.named_parameters():  # shared (tied) parameters are listed once
        total += parameter.numel()
        if ".mlp.experts." in name:
            routed += parameter.numel()
    largest = max(sum(p.numel() for p in module.parameters(recurse=False)) for module in model.modules())
    buffers = sum(buffer.numel() for buffer in model.buffers())
    return ParameterCount(total, routed, largest, buffers)


def _states(params: int, ranks: int, largest: int, settings: PlanSettings) -> tuple[int, int, int]:
    """(parameter, gradient, optimizer-state) bytes per rank for ``params`` shared by ``ranks`` ranks."""
    w = settings.weight_bytes
    n = 1 if settings.zero == 0 else ranks
    if settings.zero == 3:
        param = w * params / n + w * largest
        grad = w * params / n + w * largest
    else:
        param = w * params
        grad = w * params / n if settings.zero == 2 else w * params
    fp32_grad_partition = 4 * params / n
    optimizer = OPTIMIZER_STATE_BYTES_PER_PARAM * params / n
    if settings.zero == 0 and w == 4:  # plain fp32 Adam steps on the module's own weights and gradients
        fp32_grad_partition, optimizer = 0, 8 * params
    if settings.offload == "none":
        return int(param), int(grad + fp32_grad_partition), int(optimizer)
    # Offloaded optimizer: the fp32 gradient partition and the optimizer live on the host.
    if settings.zero == 3:
        gathered = w * largest
        if settings.offload == "params":
            return int(gathered), int(gathered), 0
        return int(w * params / n + gathered), int(gathered), 0
    return int(param), 0, 0  # gradients are reduced through buckets straight to the host


def model_state_bytes(counts: ParameterCount, settings: PlanSettings) -> tuple[int, int, int]:
    """(parameter, gradient, optimizer-state) bytes per rank.

    Dense parameters are shared by all ``world_size`` ranks; routed experts, with expert
    parallelism, are split ``ep_size`` ways and each part shared by ``world_size / ep_size``
    ranks (DeepSpeed's expert data-parallel group).
    """
    dense = _states(counts.dense, settings.world_size, counts.largest_layer, settings)
    experts = _states(counts.routed_experts // settings.ep_size, settings.world_size // settings.ep_size, 0, settings)
    param, grad, optimizer = (a + b for a, b in zip(dense, experts, strict=True))
    return param + settings.weight_bytes * counts.buffers, grad, optimizer


def deepspeed_estimate(counts: ParameterCount, settings: PlanSettings) -> tuple[int, int] | None:
    """DeepSpeed's own (gpu, cpu) model-state bytes per rank for ZeRO-2/3 in 16-bit precision, else None."""
    if settings.zero not in (2, 3) or settings.weight_bytes != 2:
        return None
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    offload = settings.offload != "none"
    gpu = cpu = 0
    groups = ((counts.dense, settings.world_size, counts.largest_layer),
              (counts.routed_experts // settings.ep_size, settings.world_size // settings.ep_size, 0))
    for params, ranks, largest in groups:
        if params == 0:
            continue
        if settings.zero == 2:
            group_cpu, group_gpu = estimate_zero2_model_states_mem_needs(
                params, num_gpus_per_node=ranks, cpu_offload=offload)
        else:
            group_cpu, group_gpu, _ = estimate_zero3_model_states_mem_needs(
                params, largest, num_gpus_per_node=ranks, cpu_offload=offload,
                cpu_offload_params=settings.offload == "params")
        gpu += group_gpu
        cpu += group_cpu if offload else 0
    return gpu, cpu


def bf16_partition_bytes(counts: ParameterCount, settings: PlanSettings) -> int:
    """``2P/N`` summed over the dense and expert groups (this rank's 16-bit parameter partition at ZeRO-3)."""
    dense = 2 * counts.dense / settings.world_size
    experts = 2 * (counts.routed_experts // settings.ep_size) / (settings.world_size // settings.ep_size)
    return int(dense + experts)


def bucket_bytes(counts: ParameterCount, settings: PlanSettings) -> int:
    """Bytes of the gradient-reduction buffers that gradients pass through (see the module docstring)."""
    local = counts.dense + counts.routed_experts // settings.ep_size
    if settings.zero == 0:
        return 0
    staging = min(local, settings.bucket_buffers * settings.reduce_bucket_size)
    flattened = min(local, settings.reduce_bucket_size) if settings.world_size > 1 else 0
    return settings.weight_bytes * (staging + flattened)


def block_activation_bytes_per_token(config: MiniMindConfig, act_bytes: int) -> int:
    """Bytes one block keeps for the backward per token, without checkpointing (see the module docstring)."""
    h, f = config.hidden_size, config.intermediate_size
    attention = act_bytes * 7 * h + 4 * config.num_attention_heads
    if config.use_moe:
        k, expert = config.num_experts_per_tok, config.expert_intermediate_size
        mlp = act_bytes * (2 * h + 4 * f * config.shared_expert_count + k * (2 * h + 4 * expert))
        mlp += 4 * config.expert_count
    else:
        mlp = act_bytes * (2 * h + 4 * f)
    norm_fp32_copies = 2 * 4 * h if act_bytes != 4 else 0
    return attention + mlp + norm_fp32_copies


def head_activation_bytes_per_token(config: MiniMindConfig, act_bytes: int) -> int:
    """Bytes per token of the final norm, the logits and the loss at the start of the backward.

    The logits (``b V``, still held by the training step), the log-softmax the cross-entropy
    keeps (``4V``), and in its backward the incoming gradient and the logits' gradient (``8V``).
    The forward's fp32 copy of bf16 logits (``4V``) is freed before then and is smaller.
    """
    h, vocab = config.hidden_size, config.vocab_size
    norm = act_bytes * 2 * h + (4 * h if act_bytes != 4 else 0)
    return norm + act_bytes * vocab + 4 * vocab + 8 * vocab


def activation_bytes(config: MiniMindConfig, settings: PlanSettings, checkpointing: bool) -> int:
    """Activation bytes of one micro-batch (``micro_batch x max_seq_len`` tokens) per rank."""
    b = settings.weight_bytes
    tokens = settings.micro_batch * settings.max_seq_len
    block = block_activation_bytes_per_token(config, b)
    layers = config.num_hidden_layers
    kept = layers * b * config.hidden_size + block if checkpointing else layers * block
    return tokens * (kept + head_activation_bytes_per_token(config, b))


def plan_memory(config: MiniMindConfig, settings: PlanSettings, counts: ParameterCount | None = None) -> MemoryPlan:
    """The per-rank memory plan of training ``config`` under ``settings``."""
    if counts is None:
        counts = count_parameters(config)
    if config.use_moe and config.expert_count % settings.ep_size:
        raise ConfigError(f"ep_size {settings.ep_size} must divide the {config.expert_count} routed experts")
    param, grad, optimizer = model_state_bytes(counts, settings)
    estimate = deepspeed_estimate(counts, settings)
    if estimate is not None:
        # Without offload, DeepSpeed's ZeRO-3 estimate leaves out the 16-bit parameter partitions (2P/N).
        unpartitioned = settings.zero == 3 and settings.offload == "none"
        missing = bf16_partition_bytes(counts, settings) if unpartitioned else 0
        missing += settings.weight_bytes * counts.buffers  # nor does it count buffers
        if abs(estimate[0] + missing - (param + grad + optimizer)) > 8:
            raise AssertionError(f"model states {param + grad + optimizer} disagree with DeepSpeed's {estimate[0]}")
    without = activation_bytes(config, settings, checkpointing=False)
    with_checkpointing = activation_bytes(config, settings, checkpointing=True)
    return MemoryPlan(
        settings=settings, parameters=counts, param_bytes=param, grad_bytes=grad, optimizer_bytes=optimizer,
        bucket_bytes=bucket_bytes(counts, settings),
        activation_bytes=with_checkpointing if settings.activation_checkpointing else without,
        activation_bytes_without_checkpointing=without, activation_bytes_with_checkpointing=with_checkpointing,
        cpu_offload_bytes=estimate[1] if estimate else 0,
    )


def candidate_changes(settings: PlanSettings) -> list[tuple[str, PlanSettings]]:
    """Single setting changes that lower memory, cheapest in throughput first: (advice, changed settings)."""
    replace = dataclasses.replace
    changes = []
    if settings.zero < 2 and settings.offload == "none":
        changes.append(("--zero 2 (partition gradients too, same communication; ds_configs/zero2_bf16.json)",
                        replace(settings, zero=2)))
    if not settings.activation_checkpointing:
        changes.append(("--activation_checkpointing (pretrain_ds.py flag; about a third more compute)",
                        replace(settings, activation_checkpointing=True)))
    if settings.zero < 3 and settings.offload == "none":
        changes.append(("--zero 3 (partition parameters, 1.5x communication; ds_configs/zero3_bf16.json)",
                        replace(settings, zero=3)))
    micro = settings.micro_batch // 2
    while micro >= 1:
        changes.append((f"--micro_batch {micro} (pretrain_ds.py --batch_size; raise --accumulation_steps "
                        f"to keep the global batch)", replace(settings, micro_batch=micro)))
        micro //= 2
    if settings.offload == "none" and settings.zero >= 1:
        changes.append(("--offload optimizer (ZeRO-Offload: Adam on the CPU; ds_configs/zero2_offload_bf16.json)",
                        replace(settings, offload="optimizer")))
    if settings.zero == 3 and settings.offload != "params":
        changes.append(("--offload params (ZeRO-Infinity: parameters on the CPU too; offload_param at ZeRO-3)",
                        replace(settings, offload="params")))
    return changes


def suggest(config: MiniMindConfig, plan: MemoryPlan) -> list[str]:
    """What to change so the run fits: the first single change that fits, else changes applied together.

    Empty when the run already fits; ``["nothing in reach fits: ..."]`` when even all changes do not.
    """
    if plan.fits:
        return []
    for description, changed in candidate_changes(plan.settings):
        if plan_memory(config, changed, plan.parameters).fits:
            return [description]
    applied, settings = [], plan.settings
    while True:
        changes = candidate_changes(settings)
        if not changes:
            break
        description, settings = changes[0]
        applied.append(description)
        if plan_memory(config, settings, plan.parameters).fits:
            return applied
    return [f"nothing in reach fits: more GPUs, expert parallelism or a shorter --max_seq_len (tried: "
            f"{'; '.join(applied)})"]


def format_plan(config: MiniMindConfig, plan: MemoryPlan, name: str) -> str:
    """A human-readable report of ``plan``: one line per kind of memory, the verdict and the advice."""
    s, counts = plan.settings, plan.parameters

    def gib(value: int) -> str:
        return f"{value / GIB:8.2f} GiB"

    experts = (f", of which {counts.routed_experts / 1e6:,.1f}M in routed experts "
               f"(ep_size {s.ep_size}: {counts.routed_experts // s.ep_size / 1e6:,.1f}M per rank)"
               if counts.routed_experts else "")
    checkpointing = "on" if s.activation_checkpointing else "off"
    offload = "" if s.offload == "none" else f", offload {s.offload}"
    lines = [
        f"{name}: {counts.total / 1e6:,.2f}M parameters{experts}; hidden {config.hidden_size} x "
        f"{config.num_hidden_layers} layers, vocab {config.vocab_size}",
        f"ZeRO-{s.zero}{offload}, {s.world_size} ranks, {s.precision}, micro-batch {s.micro_batch} x "
        f"{s.max_seq_len} tokens, activation checkpointing {checkpointing}",
        f"  parameters        {gib(plan.param_bytes)}",
        f"  gradients         {gib(plan.grad_bytes)}",
        f"  optimizer states  {gib(plan.optimizer_bytes)}",
        f"  reduce buckets    {gib(plan.bucket_bytes)}",
        f"  activations       {gib(plan.activation_bytes)}   (checkpointing off "
        f"{plan.activation_bytes_without_checkpointing / GIB:.2f} GiB, on "
        f"{plan.activation_bytes_with_checkpointing / GIB:.2f} GiB)",
        f"  total per rank    {gib(plan.total_bytes)}",
    ]
    if plan.cpu_offload_bytes:
        lines.append(f"  host memory (DeepSpeed's estimate, per node) {plan.cpu_offload_bytes / GIB:.2f} GiB")
    verdict = "fits" if plan.fits else "does NOT fit"
    lines.append(f"{verdict} in {s.gpu_memory_gib:g} GiB (budget {plan.budget_bytes / GIB:.2f} GiB after a "
                 f"{s.reserve:.0%} reserve)")
    for advice in suggest(config, plan):
        lines.append(f"  change: {advice}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``python -m minimind.plan``; a bad value is a one-line ``ConfigError``."""
    parser = FlagParser(prog="python -m minimind.plan", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default=None, help="model size (default: MiniMind's 26m)")
    parser.add_argument("--hidden_size", type=POSITIVE, default=None, help="overrides the preset")
    parser.add_argument("--num_hidden_layers", type=POSITIVE, default=None, help="overrides the preset")
    parser.add_argument("--vocab_size", type=POSITIVE, default=None, help="overrides the preset (6400)")
    parser.add_argument("--world_size", type=POSITIVE, default=1, help="data-parallel ranks in total")
    parser.add_argument("--zero", type=int, choices=(0, 1, 2, 3), default=2, help="ZeRO stage")
    parser.add_argument("--micro_batch", type=POSITIVE, default=4, help="micro-batch per rank")
    parser.add_argument("--max_seq_len", type=POSITIVE, default=2048)
    parser.add_argument("--precision", choices=list(PRECISION_BYTES), default="bf16")
    parser.add_argument("--activation_checkpointing", action="store_true")
    parser.add_argument("--ep_size", type=POSITIVE, default=1, help="MoE expert-parallel size")
    parser.add_argument("--offload", choices=OFFLOAD_CHOICES, default="none", help="ZeRO-Offload of what")
    parser.add_argument("--gpu_memory", type=number_at_least(0, float), default=80.0, help="GiB per GPU")
    parser.add_argument("--reserve", type=number_at_least(0, float), default=DEFAULT_RESERVE,
                        help="share of --gpu_memory kept for the CUDA context, buffers and fragmentation")
    return parser


def main(argv: list[str] | None = None) -> MemoryPlan:
    """Print the memory plan the flags describe and return it; bad input is one line, status 2."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        config = model_config(args.preset, hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers,
                              vocab_size=args.vocab_size)
        settings = PlanSettings(
            world_size=args.world_size, zero=args.zero, micro_batch=args.micro_batch, max_seq_len=args.max_seq_len,
            precision=args.precision, activation_checkpointing=args.activation_checkpointing, ep_size=args.ep_size,
            offload=args.offload, gpu_memory_gib=args.gpu_memory, reserve=args.reserve,
        )
        plan = plan_memory(config, settings)
    except UserInputError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        sys.exit(error.exit_status)
    print(format_plan(config, plan, args.preset or "custom"))
    return plan


if __name__ == "__main__":
    main()
