"""An independent float64 MiniMind forward written from the spec's formulas, for tests."""

import math

import torch


def rms_norm_ref(x, weight, eps):
    """Spec RMSNorm in float64."""
    x = x.double()
    return weight.double() * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def rope_tables_ref(head_dim, theta, positions):
    """Spec tables: cos/sin of cat(f, f), (positions, head_dim), float64."""
    j = torch.arange(head_dim // 2, dtype=torch.float64)
    inv_freq = theta ** (-2.0 * j / head_dim)
    angles = torch.arange(positions, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)


def rotate_ref(x, cos, sin):
    """out = x * cos + rotate_half(x) * sin for x (batch, seq, heads, head_dim)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos[None, :, None, :] + rotated * sin[None, :, None, :]


def attention_ref(x, attn, cos, sin):
    """Causal GQA attention of one layer, loop over heads, float64."""
    w = {n: getattr(attn, n).weight.double() for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
    batch, seq, _ = x.shape
    hd = attn.head_dim
    q = (x @ w["q_proj"].T).view(batch, seq, -1, hd)
    k = (x @ w["k_proj"].T).view(batch, seq, -1, hd)
    v = (x @ w["v_proj"].T).view(batch, seq, -1, hd)
    q, k = rotate_ref(q, cos[:seq], sin[:seq]), rotate_ref(k, cos[:seq], sin[:seq])
    n_heads, n_kv = q.shape[2], k.shape[2]
    outs = []
    for h in range(n_heads):
        kv = h // (n_heads // n_kv)
        scores = q[:, :, h] @ k[:, :, kv].transpose(1, 2) / math.sqrt(hd)  # (batch, seq, seq)
        future = torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1)
        scores = scores.masked_fill(future, float("-inf"))
        outs.append(torch.softmax(scores, -1) @ v[:, :, kv])
    return torch.cat(outs, -1) @ w["o_proj"].T


def swiglu_ref(x, mlp):
    """down(silu(gate(x)) * up(x)) in float64."""
    gate = x @ mlp.gate_proj.weight.double().T
    up = x @ mlp.up_proj.weight.double().T
    return (gate * torch.sigmoid(gate) * up) @ mlp.down_proj.weight.double().T


def moe_ref(x, moe, top_k, norm_topk, alpha, seq_aux):
    """MiniMind MoE output and aux loss, token by token, float64."""
    batch, seq, hidden = x.shape
    n_exp = moe.gate.weight.shape[0]
    scores = torch.softmax(x.reshape(-1, hidden) @ moe.gate.weight.double().T, -1)
    out = torch.zeros(batch * seq, hidden, dtype=torch.float64)
    chosen = []
    for t in range(batch * seq):
        top = sorted(range(n_exp), key=lambda e: -scores[t, e].item())[:top_k]
        chosen.append(top)
        weights = scores[t, top]
        if top_k > 1 and norm_topk:
            weights = weights / (weights.sum() + 1e-20)
        for e, wt in zip(top, weights, strict=True):
            out[t] += wt * swiglu_ref(x.reshape(-1, hidden)[t : t + 1], moe.experts[e])[0]
    out = out.view(batch, seq, hidden)
    for shared in moe.shared_experts:
        out = out + swiglu_ref(x, shared)
    counts = torch.zeros(batch, n_exp, dtype=torch.float64)
    for t, top in enumerate(chosen):
        for e in top:
            counts[t // seq, e] += 1
    per_seq_scores = scores.view(batch, seq, n_exp).mean(1)
    if seq_aux:
        load = counts / (seq * top_k / n_exp)
        aux = alpha * (load * per_seq_scores).sum(1).mean()
    else:
        fi = counts.sum(0) / (batch * seq * top_k) * n_exp
        aux = alpha * (scores.mean(0) * fi).sum()
    return out, aux


def causal_lm_ref(model, input_ids):
    """Whole-model logits and summed aux loss in float64, from the reference pieces."""
    cfg = model.config
    cos, sin = rope_tables_ref(cfg.head_dim, cfg.rope_theta, input_ids.shape[1])
    h = model.model.embed_tokens.weight.double()[input_ids]
    aux_total = torch.zeros((), dtype=torch.float64)
    for layer in model.model.layers:
        normed = rms_norm_ref(h, layer.input_layernorm.weight, cfg.rms_norm_eps)
        h = h + attention_ref(normed, layer.self_attn, cos, sin)
        normed = rms_norm_ref(h, layer.post_attention_layernorm.weight, cfg.rms_norm_eps)
        if cfg.use_moe:
            out, aux = moe_ref(
                normed, layer.mlp, cfg.num_experts_per_tok, cfg.norm_topk_prob, cfg.aux_loss_alpha, cfg.seq_aux
            )
            aux_total = aux_total + aux
        else:
            out = swiglu_ref(normed, layer.mlp)
        h = h + out
    h = rms_norm_ref(h, model.model.norm.weight, cfg.rms_norm_eps)
    return h @ model.lm_head.weight.double().T, aux_total


def greedy_full_recompute(model, prompt: list[int], new_tokens: int, eos: int | None = None) -> list[int]:
    """The reference decode: each new token the argmax of a forward over the whole sequence so far (no
    cache), up to ``new_tokens`` or ``eos`` (included)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(new_tokens):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] == eos:
                break
    return ids[len(prompt):]
