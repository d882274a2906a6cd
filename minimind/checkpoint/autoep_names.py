"""AutoEP's tensor names and MiniMind's: the mapping between an expert-parallel model's state and
MiniMind's keys, shared by training (its ``.pth``) and checkpoint export.
"""

from collections.abc import Iterable

import torch

# AutoEP's grouped expert tensors, (experts, out, in) each, and MiniMind's Linear they stack.
EXPERT_TENSOR_NAMES = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}


def saved_expert_parallel_size(client_state: dict) -> int | None:
    """The AutoEP size a checkpoint's client state records (DeepSpeed saves AutoEP only when every
    layer has the same size); None for a checkpoint without AutoEP."""
    layers = client_state.get("ds_autoep_layers") or []
    return layers[0]["ep_size"] if layers else None


def minimind_expert_keys(tensors: dict[str, torch.Tensor], moe_layers: Iterable[str]) -> dict[str, torch.Tensor]:
    """AutoEP names renamed to MiniMind's keys, for tensors that hold every expert.

    ``moe_layers`` are the AutoEP layers' module paths (``model.layers.{i}.mlp``). In them
    ``router.gate.weight`` becomes ``gate.weight`` and each grouped ``experts.w{1,2,3}``
    (all experts in global order, out, in) is split into
    ``experts.{e}.{gate,down,up}_proj.weight`` (views of it). Other names pass unchanged.
    """
    layers = set(moe_layers)
    renamed = {}
    for name, tensor in tensors.items():
        prefix, _, local = name.rpartition(".experts.")
        if prefix in layers and local in EXPERT_TENSOR_NAMES:
            for expert, weight in enumerate(tensor):
                renamed[f"{prefix}.experts.{expert}.{EXPERT_TENSOR_NAMES[local]}.weight"] = weight
            continue
        prefix, _, local = name.rpartition(".router.")
        if prefix in layers:
            renamed[f"{prefix}.{local}"] = tensor
            continue
        renamed[name] = tensor
    return renamed
