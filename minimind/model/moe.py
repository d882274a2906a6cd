"""MiniMind's mixture-of-experts MLP: softmax top-k router, routed and shared SwiGLU experts.

Module and parameter names follow MiniMind (``gate.weight``, ``experts.{e}.*``,
``shared_experts.{s}.*``) so that a MiniMind checkpoint loads as it is and DeepSpeed's
AutoEP can find the router, the experts and the shared experts by name. The two families
differ in the experts' width, the shared experts (minimind3 has none), when the top-k weights
are normalized and the load-balancing loss (``MoEGate``); the dispatch is the same.

Tokens reach their experts without any expert's token count being read on the host (on a GPU,
a device sync per layer, twice under activation checkpointing): the (token, slot) pairs are
sorted by expert, each expert's end row is found on the device, and each projection of all
experts is one grouped GEMM (``torch._grouped_mm``) over the experts' own weights, stacked on
the fly. The stacked copy is not kept for the backward (it is stacked again there). Where
``torch._grouped_mm`` has no sync-free kernel (float64, unaligned widths, autocast; on CUDA
anything but bfloat16 on compute capability 9.x) the layer runs MiniMind's loop over experts,
which reads the counts on the host: the static-shape alternative, every expert on every
token, costs n_routed_experts / top_k times the experts' work, more than one sync per layer.
"""


import torch
import torch.nn.functional as F
from torch import nn
from torch.torch_version import TorchVersion

from minimind.model.config import MiniMindConfig
from minimind.model.layers import FeedForward

HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")  # torch 2.8 on
GROUPED_MM_ON_CPU = HAS_GROUPED_MM and TorchVersion(torch.__version__) >= "2.9"  # 2.8 has no CPU kernel
# torch._grouped_mm reads every operand's rows with 16-byte alignment.
ALIGNMENT_BYTES = 16
# What the sync-free grouped GEMMs need on a GPU (``grouped_mm_supported``, ``grouped_dispatch_planned``).
SYNC_FREE_ON_GPU = ("bf16 on CUDA compute capability 9.x (H100, H200), torch 2.8 or later, and hidden and "
                    "intermediate sizes that are multiples of 8")


def router_scores(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over experts of the router's logits (tokens, experts), in float32 at least.

    The logits keep the model's dtype, the probabilities do not: MiniMind's trainer runs under
    bfloat16 autocast, whose softmax is float32, and so does AutoEP's router. Rounded to
    bfloat16, probabilities of experts whose logits differ in the last bit tie, and top-k
    picks either of them.
    """
    return logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))


class MoEGate(nn.Linear):
    """Softmax router, a bias-free ``nn.Linear`` from hidden to experts: picks the top-k experts of every
    token and the family's load-balancing loss.

    ``weight``: (experts, hidden). ``forward`` takes (batch, seq, hidden) and returns
    ``(topk_idx (tokens, k), topk_weight (tokens, k), aux_loss scalar)``; the weights and the
    loss are float32 (float64 in a float64 model), whatever the model's dtype.
    """

    def __init__(self, config: MiniMindConfig):
        super().__init__(config.hidden_size, config.expert_count, bias=False)
        self.top_k = config.num_experts_per_tok
        self.n_routed_experts = config.expert_count
        self.alpha = config.aux_loss_coef
        self.normalize = config.topk_weights_normalized
        # minimind3's loss counts each top-k slot's choices apart; minimind2's per sequence or over all slots
        self.balance = "slot" if config.model_family == "minimind3" else "sequence" if config.seq_aux else "token"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, seq, hidden = x.shape
        scores = router_scores(F.linear(x.reshape(-1, hidden), self.weight))  # (tokens, experts)
        topk_weight, topk_idx = torch.topk(scores, k=self.top_k, dim=-1, sorted=False)
        if self.normalize:
            topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + 1e-20)
        if self.training and self.alpha > 0.0:
            aux_loss = self.auxiliary_loss(scores.view(batch, seq, -1), topk_idx.view(batch, seq * self.top_k))
        else:
            aux_loss = scores.new_zeros(())
        return topk_idx, topk_weight, aux_loss

    def auxiliary_loss(self, scores: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """The family's load-balancing loss from scores (batch, seq, experts) and chosen ids (batch, seq * k)."""
        batch, seq, n_experts = scores.shape
        if self.balance == "slot":  # upstream minimind3: one_hot(topk_idx).mean(0) is (k, experts)
            load = F.one_hot(chosen.reshape(batch * seq, self.top_k), num_classes=n_experts).to(scores.dtype).mean(0)
            return (load * scores.reshape(-1, n_experts).mean(0)).sum() * n_experts * self.alpha
        if self.balance == "sequence":
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


def grouped_mm_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """True when ``torch._grouped_mm`` runs on ``device`` in ``dtype`` without reading its offsets on the host.

    On CPU it takes float32, bfloat16 and float16, and a host read there is no device sync. On
    CUDA only its CUTLASS kernel is sync-free: bfloat16 on compute capability 9.x; elsewhere
    torch falls back to a loop that copies the offsets to the host. Capability 10.x is left
    out: grouped GEMMs there have been reported to give an expert without tokens a non-zero
    weight gradient (pytorch/pytorch#172439).
    """
    if device.type == "cpu":
        return GROUPED_MM_ON_CPU and dtype in (torch.float32, torch.bfloat16, torch.float16)
    if device.type == "cuda":
        return HAS_GROUPED_MM and dtype == torch.bfloat16 and torch.cuda.get_device_capability(device)[0] == 9
    return False


def rows_aligned(widths: tuple[int, ...], element_size: int) -> bool:
    """Whether rows of each of these widths start ``torch._grouped_mm``'s 16 bytes apart."""
    return all(width * element_size % ALIGNMENT_BYTES == 0 for width in widths)


def grouped_experts_usable(tokens: torch.Tensor, experts: nn.ModuleList) -> bool:
    """Whether ``grouped_swiglu`` can run these experts on ``tokens`` (device, dtype, alignment, no autocast)."""
    weight = experts[0].gate_proj.weight  # (intermediate, hidden); all experts share the shapes
    return (
        weight.dtype == tokens.dtype
        and weight.device == tokens.device
        and rows_aligned(weight.shape, tokens.element_size())
        and not torch.is_autocast_enabled(tokens.device.type)
        and grouped_mm_supported(tokens.device, tokens.dtype)
    )


def grouped_dispatch_planned(config: MiniMindConfig, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the MoE layers of ``config``, in ``dtype`` on ``device`` without autocast, will run grouped GEMMs
    (no host read); False: the per-expert loop, a device sync per layer on a GPU. What
    ``grouped_experts_usable`` decides at every forward, known before the model is built."""
    widths = (config.hidden_size, config.expert_intermediate_size)
    return rows_aligned(widths, dtype.itemsize) and grouped_mm_supported(device, dtype)


class GroupedLinear(torch.autograd.Function):
    """``rows[ends[e-1]:ends[e]] @ weights[e].T`` for every expert ``e``, in one grouped GEMM each way.

    ``rows``: (R, in) sorted by expert, ``ends``: (experts,) int32 cumulative row counts ending
    at R, ``weights``: one (out, in) tensor per expert. Returns (R, out). An expert without rows
    gets a zero weight gradient.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, ends: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows, ends, *weights)
        return torch._grouped_mm(rows, torch.stack(weights).transpose(1, 2), offs=ends)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, ends, *weights = ctx.saved_tensors
        grad = grad.contiguous()  # (R, out)
        grad_rows = torch._grouped_mm(grad, torch.stack(weights), offs=ends) if ctx.needs_input_grad[0] else None
        if any(ctx.needs_input_grad[2:]):
            grad_weights = torch._grouped_mm(grad.t(), rows, offs=ends).unbind(0)  # (experts, out, in)
        else:
            grad_weights = (None,) * len(weights)
        return grad_rows, None, *grad_weights


def grouped_swiglu(rows: torch.Tensor, ends: torch.Tensor, experts: nn.ModuleList) -> torch.Tensor:
    """Each expert's ``FeedForward`` on its rows: (R, hidden) sorted by expert -> (R, hidden).

    The same computation as calling ``experts[e]`` on its slice: activation and dropout are
    the experts' own (one config builds them all, so the first expert's stand for all).
    """

    def project(inputs: torch.Tensor, name: str) -> torch.Tensor:
        return GroupedLinear.apply(inputs, ends, *(getattr(expert, name).weight for expert in experts))

    first = experts[0]
    gated = first.act_fn(project(rows, "gate_proj")) * project(rows, "up_proj")  # (R, intermediate)
    return first.dropout(project(gated, "down_proj"))


class MOEFeedForward(nn.Module):
    """Routed experts weighted by the router, plus the shared experts. No token is dropped.

    Takes and returns (batch, seq, hidden); the layer's aux loss of the last forward is kept
    in ``self.aux_loss``.
    """

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.n_routed_experts = config.expert_count
        self.num_experts_per_tok = config.num_experts_per_tok
        width = config.expert_intermediate_size
        self.experts = nn.ModuleList([FeedForward(config, width) for _ in range(config.expert_count)])
        self.gate = MoEGate(config)
        # minimind3 has no shared experts, not even an empty list: AutoEP looks them up by name
        if config.model_family == "minimind2":
            self.shared_experts = SharedExperts(FeedForward(config) for _ in range(config.n_shared_experts))
        else:
            self.shared_experts = None
        self.aux_loss = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        topk_idx, topk_weight, self.aux_loss = self.gate(x)
        tokens = x.reshape(-1, hidden)
        routed = self.route(tokens, topk_idx, topk_weight).view(batch, seq, hidden)
        if self.shared_experts:
            routed = routed + self.shared_experts(x)
        return routed

    def route(self, tokens: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor) -> torch.Tensor:
        """Send each (token, slot) to its expert and sum the weighted outputs: (tokens, hidden).

        Grouped GEMMs where ``torch._grouped_mm`` runs without a host read (no device sync),
        else the per-expert loop.
        """
        if grouped_experts_usable(tokens, self.experts):
            return self.route_grouped(tokens, topk_idx, topk_weight)
        return self.route_loop(tokens, topk_idx, topk_weight)

    def route_grouped(self, tokens: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor) -> torch.Tensor:
        """``route`` with every expert in one grouped GEMM per projection; nothing is read on the host."""
        tokens_count, k = topk_idx.shape
        sorted_expert, order = topk_idx.reshape(-1).sort(stable=True)  # (tokens * k,) slots grouped by expert
        # Each expert's end row in the sorted slots. Not bincount: on CUDA it reads the largest id on the host.
        expert_ids = torch.arange(self.n_routed_experts, device=tokens.device)
        ends = torch.searchsorted(sorted_expert, expert_ids, right=True).to(torch.int32)
        # Every expert is in the grouped GEMMs, an idle one on zero rows, so each gets a (zero)
        # gradient in training: data-parallel ranks must reduce the same set.
        expert_out = grouped_swiglu(tokens.index_select(0, order // k), ends, self.experts)  # (tokens * k, hidden)
        per_slot = expert_out.index_select(0, order.argsort()).view(tokens_count, k, -1)  # back in slot order
        # Weighted and summed in the router's float32, as MiniMind (under autocast) and AutoEP do.
        weighted = torch.bmm(topk_weight.unsqueeze(1), per_slot.to(topk_weight.dtype)).squeeze(1)
        return weighted.to(tokens.dtype)

    def route_loop(self, tokens: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor) -> torch.Tensor:
        """``route`` one expert at a time, as MiniMind does: reads the per-expert counts on the host."""
        k = topk_idx.shape[1]
        flat_expert = topk_idx.reshape(-1)  # (tokens * k,)
        order = flat_expert.argsort(stable=True)
        counts = torch.bincount(flat_expert, minlength=self.n_routed_experts).tolist()  # host read: a device sync
        token_of_slot = order // k
        out = torch.zeros_like(tokens, dtype=topk_weight.dtype)  # summed in the router's float32, as MiniMind
        start = 0
        for expert, count in zip(self.experts, counts, strict=True):
            # In training every expert runs, an idle one on zero rows, so that all of them get a
            # (zero) gradient, as in MiniMind: data-parallel ranks must reduce the same set.
            if count or self.training:
                slots = order[start : start + count]
                rows = token_of_slot[start : start + count]
                weighted = expert(tokens[rows]).to(out.dtype) * topk_weight.reshape(-1)[slots, None]
                out.index_add_(0, rows, weighted)
            start += count
        return out.to(tokens.dtype)
