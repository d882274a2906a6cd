"""A whole MiniMind forward and backward with the Triton kernels (interpreted on CPU, compiled on a GPU:
the ``device`` fixture) against PyTorch."""

import pytest
import torch

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind_kernels import fused_rms_norm, rope


def counted(function, calls: dict, key: str):
    def wrapper(*args, **kwargs):
        calls[key] += 1
        return function(*args, **kwargs)

    return wrapper


def build(kernel_impl: str, use_moe: bool, device: torch.device, family: str = "minimind2") -> MiniMindForCausalLM:
    torch.manual_seed(0)
    config = MiniMindConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                            vocab_size=97, max_position_embeddings=64, use_moe=use_moe, kernel_impl=kernel_impl,
                            model_family=family)
    model = MiniMindForCausalLM(config).to(device).train()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("family, norms_per_block", [("minimind2", 2), ("minimind3", 4)])  # minimind3: q/k norms
@pytest.mark.parametrize("use_moe", [False, True])
def test_triton_and_torch_kernels_give_the_same_logits_and_gradients(use_moe, family, norms_per_block, monkeypatch,
                                                                     device):
    calls = {"rms_norm": 0, "rope": 0}
    launchers = [
        (fused_rms_norm, "rms_norm_triton", "rms_norm"),
        (fused_rms_norm, "rms_norm_residual_triton", "rms_norm"),  # a norm fused with the residual add before it
        (rope, "apply_rotary_triton", "rope"),
    ]
    for module, name, key in launchers:
        monkeypatch.setattr(module, name, counted(getattr(module, name), calls, key))
    ids = torch.randint(0, 97, (2, 11), device=device)
    results = {}
    for impl in ("torch", "triton"):
        model = build(impl, use_moe, device, family)
        output = model(ids, labels=ids)
        (output.loss + output.aux_loss).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results[impl] = (output.logits.detach(), output.loss.detach(), grads)
    assert calls == {"rms_norm": 2 * norms_per_block + 1, "rope": 2}  # + the final norm; one rotary launch a block
    (logits_t, loss_t, grads_t), (logits_k, loss_k, grads_k) = results["torch"], results["triton"]
    # fp32 end to end: both paths accumulate in fp32 in a different order, so agreement is to ~1e-5
    torch.testing.assert_close(logits_k, logits_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_k, loss_t, rtol=1e-6, atol=1e-6)
    assert grads_k.keys() == grads_t.keys()
    for name in grads_t:
        torch.testing.assert_close(grads_k[name], grads_t[name], rtol=1e-4, atol=1e-6, msg=name)


def test_model_with_triton_kernels_compiles_to_one_graph(device):
    """The dense model traces whole (``fullgraph``) with the kernels as operators, and the
    compiled step gives eager's loss and gradients."""
    ids = torch.randint(0, 97, (2, 11), device=device)
    results = []
    for compiled in (False, True):
        model = build("triton", use_moe=False, device=device)
        step = torch.compile(model, backend="aot_eager", fullgraph=True) if compiled else model
        torch._dynamo.reset()
        loss = step(ids, labels=ids).loss
        loss.backward()
        results.append((loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}))
    (loss_eager, grads_eager), (loss_compiled, grads_compiled) = results
    torch.testing.assert_close(loss_compiled, loss_eager, rtol=1e-6, atol=1e-6)
    assert grads_compiled.keys() == grads_eager.keys()
    for name in grads_eager:
        torch.testing.assert_close(grads_compiled[name], grads_eager[name], rtol=1e-5, atol=1e-6, msg=name)
