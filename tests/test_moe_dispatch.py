"""MoE token dispatch: grouped GEMMs and the per-expert loop against a float64 per-token reference.

The reference is written here from the spec (softmax router, top-k, weights normalised when
k > 1 (minimind3: for any k), each chosen expert's SwiGLU weighted and summed, plus the shared experts), one token
and one chosen expert at a time, on float64 copies of the layer's parameters; autograd on
those copies gives the reference gradients.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from minimind import MiniMindConfig
from minimind.model import moe as moe_module
from minimind.model.moe import (
    MOEFeedForward,
    grouped_dispatch_planned,
    grouped_experts_usable,
    grouped_mm_supported,
)
from tests.near_tied_routing import near_tied_router, reference_choice

HOST_READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "__array__")
# float32 against the float64 reference: the layer's own rounding only.
FP32_TOLERANCE = dict(rtol=1e-5, atol=1e-5)
# bfloat16 grouped GEMMs against the bfloat16 loop: 8 mantissa bits, summed in another order.
BF16_TOLERANCE = dict(rtol=2e-2, atol=2e-2)


def moe_config(top_k=2, shared=1, norm=True, hidden=20, intermediate=36, dropout=0.0) -> MiniMindConfig:
    """A MoE config of awkward widths (5 experts; 20 x 36 are 16-byte rows in float32, as grouped GEMMs need)."""
    return MiniMindConfig(hidden_size=hidden, intermediate_size=intermediate, use_moe=True,
                          n_routed_experts=5, num_experts_per_tok=top_k, n_shared_experts=shared,
                          norm_topk_prob=norm, dropout=dropout, aux_loss_alpha=0.0,
                          num_attention_heads=1, num_key_value_heads=1)


def moe_layer(**config) -> MOEFeedForward:
    """The MoE layer of ``moe_config(**config)``, seeded."""
    torch.manual_seed(0)
    return MOEFeedForward(moe_config(**config))


def inputs_leaving_an_expert_idle(moe: MOEFeedForward, idle: int, shape=(3, 7)) -> torch.Tensor:
    """Inputs (21 tokens) whose feature 0 is 1 and a router that scores ``idle`` -10 on it: no token picks it."""
    with torch.no_grad():
        moe.gate.weight.mul_(4.0)  # sharper scores: the tokens spread over the other experts
        moe.gate.weight[:, 0] = 0.0
        moe.gate.weight[idle, 0] = -10.0
    x = torch.randn(*shape, moe.gate.weight.shape[1])
    x[..., 0] = 1.0
    return x


def swiglu(x, params, prefix):
    gate = x @ params[f"{prefix}.gate_proj.weight"].T
    return (F.silu(gate) * (x @ params[f"{prefix}.up_proj.weight"].T)) @ params[f"{prefix}.down_proj.weight"].T


def reference(x, params, top_k, norm, n_shared, normalize_top_1=False):
    """Spec MoE output (batch, seq, hidden) in float64, one token and one chosen expert at a time."""
    tokens = x.reshape(-1, x.shape[-1])
    scores = torch.softmax(tokens @ params["gate.weight"].T, -1)
    rows = []
    for t in range(tokens.shape[0]):
        chosen = scores[t].argsort(descending=True)[:top_k]
        weights = scores[t, chosen]
        if norm and (top_k > 1 or normalize_top_1):
            weights = weights / (weights.sum() + 1e-20)
        row = sum(w * swiglu(tokens[t], params, f"experts.{int(e)}") for w, e in zip(weights, chosen, strict=True))
        rows.append(row + sum(swiglu(tokens[t], params, f"shared_experts.{s}") for s in range(n_shared)))
    return torch.stack(rows).view(x.shape)


def grad_or_zeros(param: torch.Tensor) -> torch.Tensor:
    """A parameter's gradient; zeros where it has none (an expert no token reached, outside training)."""
    return torch.zeros_like(param) if param.grad is None else param.grad


def compare_with_reference(moe, x, top_k, norm, n_shared, normalize_top_1=False):
    """The layer's float32 output and every gradient against the reference's; returns the layer's grads."""
    params = {name: p.detach().double().requires_grad_() for name, p in moe.named_parameters()}
    x_ref = x.double().requires_grad_()
    expected = reference(x_ref, params, top_k, norm, n_shared, normalize_top_1)
    grad_out = torch.randn_like(expected)
    expected.backward(grad_out)
    x = x.clone().requires_grad_()
    out = moe(x)
    out.backward(grad_out.float())
    torch.testing.assert_close(out, expected.float(), **FP32_TOLERANCE)
    torch.testing.assert_close(x.grad, x_ref.grad.float(), **FP32_TOLERANCE)
    grads = {}
    for name, param in moe.named_parameters():
        grads[name] = param.grad
        expected_grad = grad_or_zeros(params[name]).float()
        torch.testing.assert_close(grad_or_zeros(param), expected_grad, **FP32_TOLERANCE, msg=name)
    return grads


@pytest.fixture(params=["grouped", "loop"])
def path(request, monkeypatch):
    """Run the layer on one dispatch path: grouped GEMMs (chosen by itself here) or the loop (forced)."""
    if request.param == "loop":
        monkeypatch.setattr(moe_module, "grouped_experts_usable", lambda tokens, experts: False)
    return request.param


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("top_k, norm, shared", [
    (1, True, 0), (1, False, 1), (2, True, 1), (2, False, 0), (3, True, 2),
])
def test_output_and_gradients_match_the_reference(path, training, top_k, norm, shared):
    moe = moe_layer(top_k=top_k, shared=shared, norm=norm).train(training)
    idle = 3
    x = inputs_leaving_an_expert_idle(moe, idle)
    chosen = moe.gate(x)[0]
    assert not (chosen == idle).any() and chosen.unique().numel() == 4  # one expert idle, the others used
    if path == "grouped":
        assert grouped_experts_usable(x.reshape(-1, 20), moe.experts)
    grads = compare_with_reference(moe, x, top_k, norm, shared)
    if training:  # every expert has a gradient, so data-parallel ranks all reduce the same set
        for name in ("gate_proj", "up_proj", "down_proj"):
            grad = grads[f"experts.{idle}.{name}.weight"]
            assert grad is not None and not grad.any(), name


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("top_k, norm", [(1, True), (1, False), (2, True)])
def test_minimind3_layer_matches_the_reference(path, training, top_k, norm):
    """minimind3's layer: experts moe_intermediate_size wide, no shared experts, weights normalised at k = 1 too."""
    torch.manual_seed(0)
    config = MiniMindConfig(model_family="minimind3", hidden_size=20, intermediate_size=64, moe_intermediate_size=44,
                            use_moe=True, num_experts=5, num_experts_per_tok=top_k, norm_topk_prob=norm,
                            router_aux_loss_coef=0.0, num_attention_heads=1, num_key_value_heads=1)
    moe = MOEFeedForward(config).train(training)
    assert moe.shared_experts is None and moe.experts[0].gate_proj.weight.shape == (44, 20)
    x = inputs_leaving_an_expert_idle(moe, idle=3)
    if path == "grouped":
        assert grouped_experts_usable(x.reshape(-1, 20), moe.experts)
    compare_with_reference(moe, x, top_k, norm, 0, normalize_top_1=True)


def test_bfloat16_grouped_gemms_match_the_loop(monkeypatch):
    """In bfloat16 the router itself rounds, so the loop (same router, same routing) is the reference here."""
    moe = moe_layer(hidden=32, intermediate=48).to(torch.bfloat16).train()
    x = torch.randn(5, 9, 32, dtype=torch.bfloat16)
    assert grouped_experts_usable(x.reshape(-1, 32), moe.experts)
    results = []
    for usable in (True, False):
        monkeypatch.setattr(moe_module, "grouped_experts_usable", lambda tokens, experts, usable=usable: usable)
        moe.zero_grad(set_to_none=True)
        inputs = x.clone().requires_grad_()
        out = moe(inputs)
        out.float().pow(2).sum().backward()
        results.append([out, inputs.grad, *(param.grad for param in moe.parameters())])
    for grouped, loop in zip(*results, strict=True):
        torch.testing.assert_close(grouped, loop, **BF16_TOLERANCE)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_bfloat16_router_picks_the_float32_experts_on_near_ties(top_k):
    """The softmax runs in float32 in a bfloat16 layer, as MiniMind's under autocast: probabilities rounded
    to bfloat16 tie experts one logit step apart. The weights stay float32, as MiniMind multiplies with them."""
    moe = moe_layer(top_k=top_k, hidden=32, intermediate=48).to(torch.bfloat16).train()
    gate_weight, x = near_tied_router(moe.n_routed_experts, 32, top_k)
    with torch.no_grad():
        moe.gate.weight.copy_(gate_weight)
    chosen, weights, _ = moe.gate(x.view(2, 16, 32).bfloat16())
    expected = reference_choice(x, gate_weight, top_k)
    torch.testing.assert_close(chosen.sort(dim=-1).values, expected, rtol=0, atol=0)
    scores = torch.softmax(x.double() @ gate_weight.double().T, dim=-1).gather(1, chosen)
    if top_k > 1:
        scores = scores / scores.sum(dim=-1, keepdim=True)
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights, scores.float(), **FP32_TOLERANCE)


@pytest.mark.parametrize("dtype, hidden, autocast, usable", [
    (torch.float32, 20, False, True),
    (torch.float32, 18, False, False),  # 72-byte rows: not 16-byte aligned
    (torch.bfloat16, 20, False, False),  # 40-byte rows
    (torch.float64, 20, False, False),  # no float64 grouped GEMM
    (torch.float32, 20, True, False),  # autocast casts nn.Linear inputs, which the loop goes through
])
def test_where_the_grouped_gemms_run(dtype, hidden, autocast, usable):
    moe = moe_layer(hidden=hidden).to(dtype)
    tokens = torch.randn(4, hidden, dtype=dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        assert grouped_experts_usable(tokens, moe.experts) == usable
    if not autocast:  # what start-up plans from the config alone (training never autocasts)
        assert grouped_dispatch_planned(moe_config(hidden=hidden), tokens.device, dtype) == usable


def test_unaligned_widths_fall_back_to_the_loop_with_the_same_results():
    moe = moe_layer(hidden=18, intermediate=30).train()
    compare_with_reference(moe, torch.randn(2, 5, 18), 2, True, 1)


def test_cuda_grouped_dispatch_never_synchronizes(cuda_device):
    device = cuda_device
    if not grouped_mm_supported(device, torch.bfloat16):
        pytest.skip("no sync-free grouped GEMM on this GPU (bfloat16 on compute capability 9.x)")
    moe = moe_layer(hidden=64, intermediate=128).to(device, torch.bfloat16).train()
    x = torch.randn(4, 33, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
    moe(x).sum().backward()  # warm-up: allocator and library handles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        moe(x).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def forbid_host_reads(monkeypatch):
    def host_read(*args, **kwargs):
        raise AssertionError("a tensor was read on the host")

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, host_read)


def test_grouped_forward_and_backward_read_nothing_on_the_host(monkeypatch):
    moe = moe_layer().train()
    x = torch.randn(3, 7, 20, requires_grad=True)
    forbid_host_reads(monkeypatch)
    moe(x).sum().backward()
    assert all(param.grad is not None for param in moe.parameters())


def test_the_host_read_check_catches_the_loop(monkeypatch):
    """The check above is not vacuous: the per-expert loop reads its counts on the host and trips it."""
    moe = moe_layer().train()
    x = torch.randn(3, 7, 20)
    monkeypatch.setattr(moe_module, "grouped_experts_usable", lambda tokens, experts: False)
    forbid_host_reads(monkeypatch)
    with pytest.raises(AssertionError, match="read on the host"):
        moe(x)


@pytest.mark.parametrize("reentrant", [False, True])
def test_recomputation_gives_the_same_gradients(reentrant):
    """Activation checkpointing runs the dispatch twice; the second run must rebuild the same graph."""
    moe = moe_layer().train()
    x = torch.randn(3, 7, 20)
    grads = []
    for recompute in (False, True):
        moe.zero_grad(set_to_none=True)
        inputs = x.clone().requires_grad_()
        out = checkpoint(moe, inputs, use_reentrant=reentrant) if recompute else moe(inputs)
        out.pow(2).sum().backward()
        grads.append([inputs.grad, *(param.grad for param in moe.parameters())])
    for plain, recomputed in zip(*grads, strict=True):
        torch.testing.assert_close(recomputed, plain, rtol=0, atol=0)


def test_dropout_applies_to_each_expert_output_as_in_the_expert(path):
    """With top-1 and no shared expert each output element is the reference's, dropped (0) or scaled by 1/(1-p)."""
    moe = moe_layer(top_k=1, shared=0, dropout=0.5).train()
    x = torch.randn(3, 7, 20)
    params = {name: p.detach().double() for name, p in moe.named_parameters()}
    expected = reference(x.double(), params, 1, True, 0)
    out = moe(x).double()
    dropped = out == 0
    assert 0.3 < dropped.double().mean() < 0.7
    torch.testing.assert_close(out[~dropped], 2 * expected[~dropped], rtol=1e-5, atol=1e-5)
