"""MiniMind's mixture-of-experts MLP: softmax top-k router, routed and shared SwiGLU experts.

Module and parameter names follow MiniMind (``gate.weight``, ``experts.{e}.*``,
``shared_experts.{s}.*``) so that a MiniMind checkpoint loads as it is and DeepSpeed's
AutoEP can find the router, the experts and the shared experts by name.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from minimind.model.config import MiniMindConfig
from minimind.model.layers import FeedForward


class MoEGate(nn.Module):
    """Softmax router: picks the top-k experts of every token and MiniMind's aux loss.

    ``weight``: (n_routed_experts, hidden). ``forward`` takes (batch, seq, hidden) and returns
    ``(topk_idx (tokens, k), topk_weight (tokens, k), aux_loss scalar)``.
    """

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.n_routed_experts = config.n_routed_experts
        self.alpha = config.aux_loss_alpha
        self.seq_aux = config.seq_aux
        self.norm_topk_prob = config.norm_topk_prob
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.hidden_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, seq, hidden = x.shape
        scores = F.linear(x.reshape(-1, hidden), self.weight).softmax(dim=-1)  # (tokens, experts)
        topk_weight, topk_idx = torch.topk(scores, k=self.top_k, dim=-1, sorted=False)
        if self.top_k > 1 and self.norm_topk_prob:
            topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + 1e-20)
        if self.training and self.alpha > 0.0:
            aux_loss = self.auxiliary_loss(scores.view(batch, seq, -1), topk_idx.view(batch, seq * self.top_k))
        else:
            aux_loss = scores.new_zeros(())
        return topk_idx, topk_weight, aux_loss

    def auxiliary_loss(self, scores: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """MiniMind's load-balancing loss from scores (batch, seq, experts) and chosen ids (batch, seq * k)."""
        batch, seq, n_experts = scores.shape
        if self.seq_aux:
            counts = torch.zeros(batch, n_experts, device=scores.device, dtype=scores.dtype)
            counts.scatter_add_(1, chosen, torch.ones_like(chosen, dtype=scores.dtype))
            load = counts / (seq * self.top_k / n_experts)  # (batch, experts)
            return (load * scores.mean(dim=1)).sum(dim=1).mean() * self.alpha
        fraction = F.one_hot(chosen.reshape(-1), num_classes=n_experts).to(scores.dtype).mean(0)
        return (scores.reshape(-1, n_experts).mean(0) * fraction * n_experts).sum() * self.alpha


class SharedExperts(nn.ModuleList):
    """The always-on experts: a ModuleList (keys ``shared_experts.{s}.*``) whose forward sums its members."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(expert(x) for expert in self)


class MOEFeedForward(nn.Module):
    """Routed experts weighted by the router, plus the shared experts. No token is dropped.

    Takes and returns (batch, seq, hidden); the layer's aux loss of the last forward is kept
    in ``self.aux_loss``.
    """

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.n_routed_experts = config.n_routed_experts
        self.num_experts_per_tok = config.num_experts_per_tok
        self.experts = nn.ModuleList([FeedForward(config) for _ in range(config.n_routed_experts)])
        self.gate = MoEGate(config)
        self.shared_experts = SharedExperts(FeedForward(config) for _ in range(config.n_shared_experts))
        self.aux_loss = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        topk_idx, topk_weight, self.aux_loss = self.gate(x)
        tokens = x.reshape(-1, hidden)
        routed = self.route(tokens, topk_idx, topk_weight).view(batch, seq, hidden)
        if len(self.shared_experts) > 0:
            routed = routed + self.shared_experts(x)
        return routed

    def route(self, tokens: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor) -> torch.Tensor:
        """Send each (token, slot) to its expert and sum the weighted outputs: (tokens, hidden)."""
        k = topk_idx.shape[1]
        flat_expert = topk_idx.reshape(-1)  # (tokens * k,)
        order = flat_expert.argsort(stable=True)
        counts = torch.bincount(flat_expert, minlength=self.n_routed_experts).tolist()
        token_of_slot = order // k
        out = torch.zeros_like(tokens)
        start = 0
        for expert, count in zip(self.experts, counts, strict=True):
            # In training every expert runs, an idle one on zero rows, so that all of them get a
            # (zero) gradient, as in MiniMind: data-parallel ranks must reduce the same set.
            if count or self.training:
                slots = order[start : start + count]
                rows = token_of_slot[start : start + count]
                weighted = expert(tokens[rows]) * topk_weight.reshape(-1)[slots, None].to(tokens.dtype)
                out.index_add_(0, rows, weighted)
            start += count
        return out
