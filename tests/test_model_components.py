"""Each MiniMind component against the float64 reference in ``model_reference.py``."""

import math

import pytest
import torch

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.model.config import default_intermediate_size
from minimind.model.layers import RMSNorm
from minimind.model.rope import rope_frequencies, rope_tables
from tests.model_reference import (
    attention_ref,
    causal_lm_ref,
    moe_ref,
    rms_norm_ref,
    rope_tables_ref,
    rotate_ref,
    swiglu_ref,
)


def tiny_config(**overrides) -> MiniMindConfig:
    """A small config with awkward sizes: 3 layers, GQA 6:2, hidden 48."""
    base = dict(
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        vocab_size=97,
        max_position_embeddings=64,
        kernel_impl="torch",
    )
    base.update(overrides)
    return MiniMindConfig(**base)


def float64_model(config: MiniMindConfig, seed: int) -> MiniMindForCausalLM:
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(config).double()
    with torch.no_grad():  # non-trivial norm weights so the reference exercises them
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                param.uniform_(0.5, 1.5)
    return model


def test_config_defaults_match_minimind():
    config = MiniMindConfig()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (512, 8, 8)
    assert (config.num_key_value_heads, config.vocab_size, config.intermediate_size) == (2, 6400, 1408)
    assert (config.max_position_embeddings, config.rms_norm_eps, config.rope_theta) == (32768, 1e-5, 1e6)
    assert (config.bos_token_id, config.eos_token_id, config.hidden_act) == (1, 2, "silu")
    assert (config.n_routed_experts, config.num_experts_per_tok, config.n_shared_experts) == (4, 2, 1)
    assert (config.aux_loss_alpha, config.seq_aux, config.norm_topk_prob) == (0.01, True, True)
    assert config.flash_attn and not config.use_moe and not config.inference_rope_scaling
    assert config.model_type == "minimind" and config.tie_word_embeddings


@pytest.mark.parametrize("hidden", [512, 640, 768, 100])
def test_intermediate_size_formula(hidden):
    assert default_intermediate_size(hidden) == 64 * math.ceil(int(hidden * 8 / 3) / 64)


def test_minimind3_defaults_match_upstream():
    config = MiniMindConfig(model_family="minimind3")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 8, 8)
    assert (config.num_key_value_heads, config.head_dim, config.intermediate_size) == (4, 96, 2432)
    assert (config.max_position_embeddings, config.rms_norm_eps, config.rope_theta) == (32768, 1e-6, 1e6)
    assert (config.num_experts, config.num_experts_per_tok, config.moe_intermediate_size) == (4, 1, 2432)
    assert (config.router_aux_loss_coef, config.norm_topk_prob, config.shared_expert_count) == (5e-4, True, 0)
    assert config.tie_word_embeddings and not config.inference_rope_scaling and config.qk_norm
    assert not any(hasattr(config, name) for name in ("n_routed_experts", "n_shared_experts", "aux_loss_alpha"))


@pytest.mark.parametrize("hidden", [512, 640, 768, 100])
def test_minimind3_intermediate_size_formula(hidden):
    assert default_intermediate_size(hidden, "minimind3") == math.ceil(hidden * math.pi / 64) * 64


def test_a_config_without_a_family_is_minimind2_and_each_family_round_trips():
    recorded = {key: value for key, value in MiniMindConfig(hidden_size=64).to_dict().items()
                if key not in ("model_family", "head_dim")}  # as written before the families existed
    assert MiniMindConfig.from_dict(recorded).to_dict() == MiniMindConfig(hidden_size=64).to_dict()
    minimind3 = MiniMindConfig(model_family="minimind3", hidden_size=64, head_dim=24, use_moe=True, num_experts=6)
    assert MiniMindConfig.from_dict(minimind3.to_dict()).to_dict() == minimind3.to_dict()


@pytest.mark.parametrize("family, options, message", [
    ("minimind3", {"n_shared_experts": 1}, "n_shared_experts: not an option of model_family 'minimind3'"),
    ("minimind3", {"aux_loss_alpha": 0.1, "seq_aux": False}, "aux_loss_alpha, seq_aux: not an option"),
    ("minimind2", {"num_experts": 8}, "num_experts: not an option of model_family 'minimind2'"),
    ("minimind2", {"router_aux_loss_coef": 0.1}, "router_aux_loss_coef: not an option"),
    ("minimind2", {"head_dim": 32}, "head_dim 32 is not hidden_size / num_attention_heads"),
    ("minimind3", {"head_dim": 15}, "head_dim 15 must be even"),
    ("minimind4", {}, "model_family must be one of minimind2, minimind3, got 'minimind4'"),
])
def test_options_of_the_other_family_are_one_line_errors(family, options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as error:
        MiniMindConfig(model_family=family, **options)
    assert "\n" not in str(error.value)


def test_minimind3_head_dim_need_not_split_the_width():
    model = MiniMindForCausalLM(tiny_config(model_family="minimind3", head_dim=10))
    attention = model.model.layers[0].self_attn
    assert attention.q_proj.weight.shape == (60, 48) and attention.o_proj.weight.shape == (48, 60)
    assert attention.q_norm.weight.shape == attention.k_norm.weight.shape == (10,)
    assert model(torch.randint(0, 97, (1, 5))).logits.shape == (1, 5, 97)


def test_untied_embeddings_are_separate_weights():
    model = MiniMindForCausalLM(tiny_config(model_family="minimind3", tie_word_embeddings=False))
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("shape", [(1, 1, 7), (3, 5, 48), (2, 11, 130)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_rms_norm_against_reference(shape, dtype):
    x = torch.randn(shape, dtype=dtype) * 3
    norm = RMSNorm(shape[-1], eps=1e-5, kernel_impl="torch")
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    out = norm(x)
    expected = rms_norm_ref(x, norm.weight, 1e-5)
    # the formula normalises in float32 (``x.float()``) whatever the input dtype, so float64 inputs
    # carry float32 rounding (2^-24 relative); bf16 output rounding is 2^-8 relative
    tolerance = {torch.float64: 1e-6, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(out.double(), expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("head_dim", [2, 16, 64])
def test_rope_tables_against_reference(head_dim):
    cos, sin = rope_tables(head_dim, 1e6, 300)
    cos_ref, sin_ref = rope_tables_ref(head_dim, 1e6, 300)
    # angles up to 300 rad computed in float32 (as MiniMind does): ~300 * 2^-24 absolute error
    torch.testing.assert_close(cos.double(), cos_ref, rtol=0, atol=5e-5)
    torch.testing.assert_close(sin.double(), sin_ref, rtol=0, atol=5e-5)


def test_yarn_scales_only_low_frequencies_and_only_past_original_context():
    yarn = MiniMindConfig(inference_rope_scaling=True).yarn_scaling
    plain = rope_frequencies(64, 1e6, 32768)
    scaled = rope_frequencies(64, 1e6, 32768, yarn)
    assert torch.equal(scaled[:2], plain[:2])  # highest frequencies untouched
    torch.testing.assert_close(scaled[-1], plain[-1] / 16)  # lowest frequency divided by the factor
    assert torch.all(scaled <= plain)
    assert torch.equal(rope_frequencies(64, 1e6, 2048, yarn), plain)  # within the original context


@pytest.mark.parametrize("batch,seq,heads,kv_heads", [(1, 1, 4, 4), (2, 9, 6, 2), (3, 17, 8, 1)])
def test_rotary_against_reference(batch, seq, heads, kv_heads):
    from minimind_kernels import functional as kernel_ops

    cos_ref, sin_ref = rope_tables_ref(16, 1e4, 40)
    q = torch.randn(batch, seq, heads, 16, dtype=torch.float64)
    k = torch.randn(batch, seq, kv_heads, 16, dtype=torch.float64)
    offset = 5
    q_out, k_out = kernel_ops.apply_rotary(q, k, cos_ref, sin_ref, position_offset=offset, impl="torch")
    torch.testing.assert_close(q_out, rotate_ref(q, cos_ref[offset : offset + seq], sin_ref[offset : offset + seq]))
    torch.testing.assert_close(k_out, rotate_ref(k, cos_ref[offset : offset + seq], sin_ref[offset : offset + seq]))


@pytest.mark.parametrize("sdpa", [True, False])
@pytest.mark.parametrize("heads,kv_heads,seq", [(6, 2, 13), (6, 6, 1), (6, 1, 7)])
def test_causal_gqa_attention(sdpa, heads, kv_heads, seq):
    model = float64_model(tiny_config(num_attention_heads=heads, num_key_value_heads=kv_heads, flash_attn=sdpa), 0)
    attn = model.model.layers[0].self_attn
    x = torch.randn(2, seq, 48, dtype=torch.float64)
    cos, sin = model.model.freqs_cos.double(), model.model.freqs_sin.double()
    cos_ref, sin_ref = rope_tables_ref(8, 1e6, seq)
    torch.testing.assert_close(attn(x, (cos, sin)), attention_ref(x, attn, cos_ref, sin_ref), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sdpa", [True, False])
def test_a_block_with_the_fused_residual_norm_equals_the_unfused_pre_norm_block(sdpa):
    """The residual add fused into the norm (one kernel on Triton) leaves MiniMind's block:
    h += attn(norm(h)); h += mlp(norm(h))."""
    model = float64_model(tiny_config(flash_attn=sdpa), 2)
    block = model.model.layers[1]
    x = torch.randn(3, 9, 48, dtype=torch.float64)
    rope = (model.model.freqs_cos.double(), model.model.freqs_sin.double())
    hidden = x + block.self_attn(block.input_layernorm(x), rope)
    expected = hidden + block.mlp(block.post_attention_layernorm(hidden))
    torch.testing.assert_close(block(x, rope), expected, rtol=0, atol=0)


@pytest.mark.parametrize("use_moe", [False, True])
def test_attention_gives_the_same_result_with_sdpa_s_own_gqa_and_with_copied_kv_heads(use_moe, monkeypatch):
    """GPUs copy the K/V heads where SDPA's fast kernels cannot take fewer of them: the same logits."""
    model = float64_model(tiny_config(use_moe=use_moe), 3)
    ids = torch.randint(0, 97, (2, 13))
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[0, :4] = 0  # a left-padded row: the masked path
    with torch.no_grad():
        native = [model(ids).logits, model(ids, attention_mask=mask).logits]
        monkeypatch.setattr("minimind.model.layers.sdpa_takes_fewer_kv_heads", lambda q, causal_only: False)
        copied = [model(ids).logits, model(ids, attention_mask=mask).logits]
    for a, b in zip(native, copied, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_swiglu_mlp():
    model = float64_model(tiny_config(intermediate_size=40), 1)
    mlp = model.model.layers[1].mlp
    x = torch.randn(3, 5, 48, dtype=torch.float64)
    torch.testing.assert_close(mlp(x), swiglu_ref(x, mlp))


@pytest.mark.parametrize("seq_aux", [True, False])
@pytest.mark.parametrize("top_k,norm,shared", [(2, True, 1), (1, True, 0), (3, False, 2), (2, False, 1)])
def test_moe_block(seq_aux, top_k, norm, shared):
    config = tiny_config(
        use_moe=True,
        n_routed_experts=5,
        num_experts_per_tok=top_k,
        n_shared_experts=shared,
        norm_topk_prob=norm,
        seq_aux=seq_aux,
        aux_loss_alpha=0.1,
    )
    model = float64_model(config, 2).train()
    moe = model.model.layers[0].mlp
    x = torch.randn(3, 7, 48, dtype=torch.float64)
    out = moe(x)
    expected, expected_aux = moe_ref(x, moe, top_k, norm, 0.1, seq_aux)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(moe.aux_loss, expected_aux)


def test_an_expert_without_tokens_still_gets_a_zero_gradient_in_training():
    """Data-parallel ranks (ZeRO, DDP) must all reduce every parameter's gradient, whatever the routing."""
    model = float64_model(tiny_config(use_moe=True, n_routed_experts=4, num_experts_per_tok=1), 5).train()
    moe = model.model.layers[0].mlp
    with torch.no_grad():  # the router sends every token to expert 2
        moe.gate.weight.zero_()
        moe.gate.weight[2] = 1.0
    x = torch.ones(2, 3, 48, dtype=torch.float64)
    moe(x).sum().backward()
    for index, expert in enumerate(moe.experts):
        for name, param in expert.named_parameters():
            assert param.grad is not None, (index, name)
            assert (param.grad.abs().sum() > 0) == (index == 2), (index, name)


def test_moe_aux_loss_only_in_training():
    model = float64_model(tiny_config(use_moe=True), 3).eval()
    out = model(torch.randint(0, 97, (2, 6)))
    assert out.aux_loss.item() == 0.0


@pytest.mark.parametrize("use_moe", [False, True])
def test_whole_model_logits_and_loss(use_moe):
    model = float64_model(tiny_config(use_moe=use_moe, aux_loss_alpha=0.05), 4).train()
    ids = torch.randint(0, 97, (2, 12))
    labels = ids.clone()
    labels[0, :4] = -100
    out = model(ids, labels=labels)
    logits_ref, aux_ref = causal_lm_ref(model, ids)
    torch.testing.assert_close(out.logits, logits_ref)
    torch.testing.assert_close(out.aux_loss.double(), aux_ref)
    keep = labels[:, 1:] != -100
    log_probs = torch.log_softmax(logits_ref[:, :-1], -1)
    nll = -log_probs.gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0]
    torch.testing.assert_close(out.loss.double(), nll[keep].mean())


def test_lm_head_is_tied_to_embeddings():
    model = MiniMindForCausalLM(tiny_config())
    assert model.lm_head.weight is model.model.embed_tokens.weight
