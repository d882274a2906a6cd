"""The memory plan's arithmetic on known cases, computed here independently."""

import dataclasses

import pytest
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

from minimind.model import MiniMindConfig
from minimind.plan import (
    GIB,
    PlanSettings,
    count_parameters,
    main,
    model_config,
    plan_memory,
    suggest,
)

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, VOCAB = 64, 2, 8, 2, 192, 512


def tiny_config(**overrides) -> MiniMindConfig:
    kwargs = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  num_key_value_heads=KV_HEADS, intermediate_size=FFN, vocab_size=VOCAB)
    return MiniMindConfig(**{**kwargs, **overrides})


def expected_dense_parameters() -> int:
    kv = KV_HEADS * HIDDEN // HEADS
    attention = 2 * HIDDEN * HIDDEN + 2 * HIDDEN * kv
    block = attention + 3 * HIDDEN * FFN + 2 * HIDDEN  # q/o, k/v, SwiGLU, two norms
    return VOCAB * HIDDEN + LAYERS * block + HIDDEN  # tied embedding / head, final norm


def test_parameters_counted_on_meta_device():
    config = tiny_config()
    counts = count_parameters(config)
    assert counts.total == expected_dense_parameters()
    assert counts.routed_experts == 0
    assert counts.largest_layer == VOCAB * HIDDEN  # the (tied) embedding
    assert counts.buffers == 2 * config.max_position_embeddings * (HIDDEN // HEADS)  # RoPE cos and sin


def test_presets_match_documented_counts():
    assert round(count_parameters(model_config("26m")).total / 1e4) == 2583  # 25.83M
    assert round(count_parameters(model_config("1b")).total / 1e4) == 98785  # 987.85M


@pytest.mark.parametrize("world", [1, 4, 8])
def test_model_states_per_zero_stage_bf16(world):
    """ZeRO paper: 2P params + 2P grads + 12P Adam states, partitioned by stage; plus DeepSpeed's 4P fp32 grads."""
    config = tiny_config()
    counts = count_parameters(config)
    p, largest, rope = counts.total, counts.largest_layer, 2 * counts.buffers
    expected = {  # (params, grads, optimizer); RoPE tables are held whole by every rank
        1: (2 * p + rope, 2 * p + 4 * p / world, 12 * p / world),
        2: (2 * p + rope, 2 * p / world + 4 * p / world, 12 * p / world),
        3: (2 * p / world + 2 * largest + rope, 2 * p / world + 2 * largest + 4 * p / world, 12 * p / world),
    }
    for zero, (params, grads, optimizer) in expected.items():
        plan = plan_memory(config, PlanSettings(world_size=world, zero=zero, micro_batch=1, max_seq_len=8), counts)
        assert plan.param_bytes == pytest.approx(params, abs=1)
        assert plan.grad_bytes == pytest.approx(grads, abs=2)
        assert plan.optimizer_bytes == pytest.approx(optimizer, abs=1)
    # The ZeRO paper's totals, plus the fp32 gradient partition DeepSpeed's estimators count.
    zero2 = plan_memory(config, PlanSettings(world_size=world, zero=2, micro_batch=1, max_seq_len=8), counts)
    assert zero2.model_state_bytes - rope == pytest.approx(2 * p + (2 + 12) * p / world + 4 * p / world, abs=3)
    _, ds_gpu = estimate_zero2_model_states_mem_needs(p, num_gpus_per_node=world, cpu_offload=False)
    assert zero2.model_state_bytes - rope == pytest.approx(ds_gpu, abs=3)
    zero3 = plan_memory(config, PlanSettings(world_size=world, zero=3, micro_batch=1, max_seq_len=8), counts)
    _, ds_gpu, _ = estimate_zero3_model_states_mem_needs(p, largest, num_gpus_per_node=world, cpu_offload=False)
    # DeepSpeed's ZeRO-3 estimate (4L + 18P/N) leaves out the 16-bit parameter partition, 2P/N.
    assert zero3.model_state_bytes - rope == pytest.approx(ds_gpu + 2 * p / world, abs=3)
    # Gradients pass through the bucket buffers, and with more than one rank one more flat copy.
    assert zero2.bucket_bytes == 2 * p * (2 if world > 1 else 1)


def test_fp32_states_and_activation_formula():
    config = tiny_config()
    counts = count_parameters(config)
    p = counts.total
    settings = PlanSettings(world_size=2, zero=2, micro_batch=3, max_seq_len=16, precision="fp32")
    plan = plan_memory(config, settings, counts)
    rope = 4 * counts.buffers
    assert plan.model_state_bytes == pytest.approx(4 * p + rope + 4 * p / 2 + 4 * p / 2 + 12 * p / 2, abs=3)
    assert plan.bucket_bytes == 2 * 4 * p  # the whole model fits in one bucket, flattened once more to reduce
    tokens = 3 * 16
    block = 4 * (9 * HIDDEN + 4 * FFN) + 4 * HEADS  # fp32: no RMSNorm copies
    head = 4 * 2 * HIDDEN + 4 * VOCAB + 4 * VOCAB + 8 * VOCAB
    assert plan.activation_bytes_without_checkpointing == tokens * (LAYERS * block + head)
    assert plan.activation_bytes_with_checkpointing == tokens * (LAYERS * 4 * HIDDEN + block + head)
    assert plan.activation_bytes == plan.activation_bytes_without_checkpointing
    assert plan.total_bytes == plan.model_state_bytes + plan.bucket_bytes + plan.activation_bytes


def budget_gib(total_bytes: float, reserve: float = 0.1) -> float:
    """The --gpu_memory whose budget after the reserve is exactly ``total_bytes``."""
    return total_bytes / (1 - reserve) / GIB


def test_fits_verdict_and_suggestions():
    config = model_config("1b")
    counts = count_parameters(config)
    base = PlanSettings(world_size=8, zero=1, micro_batch=4, max_seq_len=2048)
    zero1 = plan_memory(config, base, counts)
    zero2 = plan_memory(config, dataclasses.replace(base, zero=2), counts)
    assert zero2.total_bytes < zero1.total_bytes

    roomy = plan_memory(config, dataclasses.replace(base, gpu_memory_gib=budget_gib(zero1.total_bytes) * 1.01), counts)
    assert roomy.fits and suggest(config, roomy) == []

    # Between the ZeRO-2 and the ZeRO-1 totals: raising the stage is the first change that fits.
    between = budget_gib((zero1.total_bytes + zero2.total_bytes) / 2)
    tight = plan_memory(config, dataclasses.replace(base, gpu_memory_gib=between), counts)
    assert not tight.fits
    assert suggest(config, tight)[0].startswith("--zero 2")

    # At ZeRO-2, just below its total: activation checkpointing comes first.
    below = plan_memory(config, dataclasses.replace(base, zero=2, gpu_memory_gib=budget_gib(zero2.total_bytes) * 0.99),
                        counts)
    assert not below.fits
    assert suggest(config, below)[0].startswith("--activation_checkpointing")

    # Nothing a single rank can change fits 1 GiB for 1B parameters.
    hopeless = plan_memory(config, dataclasses.replace(base, gpu_memory_gib=0.01), counts)
    assert suggest(config, hopeless)[0].startswith("nothing in reach fits")


def test_moe_counts_all_experts_and_splits_them_by_ep_size():
    config = tiny_config(use_moe=True, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1)
    counts = count_parameters(config)
    routed = LAYERS * 4 * 3 * HIDDEN * FFN
    gate = LAYERS * 4 * HIDDEN
    assert counts.routed_experts == routed
    assert counts.total == expected_dense_parameters() + routed + gate  # the shared expert is the dense MLP
    dense = counts.total - routed
    for ep in (1, 2, 4):
        plan = plan_memory(config, PlanSettings(world_size=4, zero=2, micro_batch=1, max_seq_len=8, ep_size=ep),
                           counts)
        local, expert_dp = routed / ep, 4 / ep
        expected = 2 * dense + 18 * dense / 4 + 2 * local + 18 * local / expert_dp + 2 * counts.buffers
        assert plan.model_state_bytes == pytest.approx(expected, abs=6)
    with pytest.raises(ValueError):
        plan_memory(config, PlanSettings(world_size=8, zero=2, micro_batch=1, max_seq_len=8, ep_size=8), counts)


def test_command_line(capsys):
    plan = main(["--preset", "26m", "--world_size", "2", "--zero", "2", "--micro_batch", "2", "--max_seq_len", "64",
                 "--gpu_memory", "80"])
    out = capsys.readouterr().out
    assert plan.fits
    assert "fits in 80 GiB" in out and "optimizer states" in out and "activations" in out
