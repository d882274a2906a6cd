"""Router weights and tokens whose top-k choice is decided by the last bit of a bfloat16 logit.

Token ``t`` is the one-hot row ``e_t``, so its logits are column ``t`` of the router weight,
exact in bfloat16 (one product, no rounding). In each column the ``top_k - 1`` leading
experts score well above the rest, the expert at rank ``top_k`` one bfloat16 step (2**-9)
above the one at rank ``top_k + 1``, the others well below: in float32 the probabilities of
those two differ by 0.2%, under half a bfloat16 step of a probability, so a softmax rounded to
bfloat16 mostly ties them and top-k is left to pick either. Which experts hold which rank is
drawn at random per column.
"""

import torch

LOGIT_STEP = 2.0**-9  # one bfloat16 step for magnitudes in [0.25, 0.5)


def near_tied_router(n_experts: int, tokens: int, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gate_weight (n_experts, tokens), x (tokens, tokens))`` in float32, every value exact in bfloat16."""
    assert top_k < n_experts
    weight = torch.empty(n_experts, tokens)
    for column in range(tokens):
        ranked = torch.randperm(n_experts)
        logits = torch.empty(n_experts)
        logits[ranked[: top_k - 1]] = 1.0 + torch.rand(top_k - 1)  # clearly chosen
        boundary = 0.25 + LOGIT_STEP * torch.randint(0, 100, ()).item()
        logits[ranked[top_k - 1]] = boundary + LOGIT_STEP  # chosen, by one step
        logits[ranked[top_k]] = boundary  # left out, by one step
        logits[ranked[top_k + 1 :]] = -1.0 - torch.rand(n_experts - top_k - 1)  # clearly left out
        weight[:, column] = logits.bfloat16().float()
    return weight, torch.eye(tokens)


def reference_choice(x: torch.Tensor, gate_weight: torch.Tensor, top_k: int) -> torch.Tensor:
    """Each token's top-k experts, sorted, from a float64 softmax of ``x @ gate_weight.T``: (tokens, k)."""
    scores = torch.softmax(x.double() @ gate_weight.double().T, dim=-1)
    return scores.topk(top_k, dim=-1).indices.sort(dim=-1).values
