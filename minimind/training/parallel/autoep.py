"""Expert parallelism for MiniMind's MoE layers, applied with DeepSpeed's AutoEP.

The model stays plain MiniMind. ``deepspeed.initialize`` reads the ``expert_parallel``
section of the DeepSpeed config and replaces every ``model.layers.{i}.mlp`` that has
``experts`` with AutoEP's dropless layer: routed experts sharded over the ranks of an
expert-parallel group (tokens sent to them and back by all-to-all), router and shared
experts replicated. This module

- completes that section from the model config (MiniMind's module names and routing
  rule) and refuses combinations AutoEP cannot run as MiniMind would, in one line;
- puts MiniMind's auxiliary load-balancing loss back, which AutoEP does not compute:
  hooks on each replaced layer's router recompute it from the router's logits and
  choices and write the sum into the model output's ``aux_loss``;
- refuses resuming a regular checkpoint at a different expert-parallel size;
- renames an AutoEP model's tensors back to MiniMind's keys, experts re-assembled, and
  writes MiniMind's ``.pth`` from them.
"""

from collections.abc import Callable
from pathlib import Path

import torch
from deepspeed.checkpoint.autoep_affine import autoep_experts_for_rank
from deepspeed.module_inject.auto_ep_layer import AutoEPMoELayer
from torch import nn

from minimind.checkpoint.autoep_names import EXPERT_TENSOR_NAMES, minimind_expert_keys, saved_expert_parallel_size
from minimind.checkpoint.locate import MODEL_STATES, locate_checkpoint, read_client_state
from minimind.errors import ConfigError
from minimind.model import MiniMindConfig
from minimind.model.moe import MoEGate, router_scores
from minimind.training.checkpoints.pth import master_weights_state_dict, save_weights_file
from minimind.training.distributed.collectives import all_gather

# Where AutoEP finds MiniMind's pieces (module and config attribute names of minimind/model), both families.
MINIMIND_AUTOEP_NAMES = {
    "moe_layer_pattern": r"model\.layers\.\d+\.mlp",
    "router_pattern": "gate",
    "expert_pattern": "experts",
    "expert_w1": "gate_proj",
    "expert_w2": "down_proj",
    "expert_w3": "up_proj",
    "top_k_attr": "num_experts_per_tok",
    "score_func": "softmax",
}
# What differs by family: the config attribute holding the expert count, and the shared experts
# (minimind3 has none, so AutoEP must not look for them).
FAMILY_AUTOEP_NAMES = {
    "minimind2": {"num_experts_attr": "n_routed_experts", "has_shared_experts": True,
                  "shared_experts_pattern": "shared_experts"},
    "minimind3": {"num_experts_attr": "num_experts", "has_shared_experts": False},
}


def minimind_autoep_section(model_config: MiniMindConfig) -> dict:
    """The ``expert_parallel`` keys that make AutoEP route exactly as the model's family does.

    ``route_norm`` follows the family's rule for normalising the top-k weights (minimind2: only
    when k > 1, minimind3: always, with ``norm_topk_prob``); no capacity, no load-balance bias.
    """
    return {**MINIMIND_AUTOEP_NAMES, **FAMILY_AUTOEP_NAMES[model_config.model_family],
            "route_norm": model_config.topk_weights_normalized}


def resolve_expert_parallel(
    ds_config: dict, ep_size: int | None, model_config: MiniMindConfig, world_size: int, source: str
) -> int | None:
    """Complete ``ds_config["expert_parallel"]`` in place; returns the expert-parallel size, None without AutoEP.

    ``ep_size`` (the ``--ep_size`` flag) overrides the JSON's ``autoep_size`` and turns
    AutoEP on for a MoE model when the JSON has no section. Every refusal is a one-line
    ``ConfigError`` naming ``source`` (the JSON path or the flag).
    """
    section = dict(ds_config.get("expert_parallel") or {})
    enabled = bool(section.get("enabled", False)) or ep_size is not None
    if ep_size is not None and ep_size < 1:
        raise ConfigError(f"--ep_size must be at least 1, got {ep_size}")
    if not model_config.use_moe:
        if (ep_size or 1) > 1:
            raise ConfigError(f"--ep_size {ep_size} needs --use_moe 1: a dense model has no experts to shard")
        if section.get("enabled"):
            raise ConfigError(f"{source}: expert_parallel is enabled but the model is dense; pass --use_moe 1 "
                              "or use a config without expert_parallel")
        ds_config.pop("expert_parallel", None)
        return None
    if not enabled:
        ds_config.pop("expert_parallel", None)
        return None
    size = ep_size if ep_size is not None else section.get("autoep_size", 1)
    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"{source}: expert_parallel.autoep_size must be a positive integer, got {size!r}")
    experts = model_config.expert_count
    experts_field = FAMILY_AUTOEP_NAMES[model_config.model_family]["num_experts_attr"]
    if experts % size:
        raise ConfigError(f"expert-parallel size {size} does not divide {experts_field} {experts} "
                          f"(each rank must hold the same number of experts)")
    if world_size % size:
        raise ConfigError(f"expert-parallel size {size} does not divide the world size {world_size}")
    if model_config.dropout > 0:
        raise ConfigError(f"dropout {model_config.dropout} is not supported with expert parallelism "
                          "(AutoEP's experts apply none); use dropout 0, MiniMind's default")
    if section.get("load_balance_coeff") is not None:
        raise ConfigError(f"{source}: expert_parallel.load_balance_coeff is not MiniMind's balancing; remove it "
                          "(MiniMind's aux loss, aux_loss_alpha or router_aux_loss_coef, is added by this trainer)")
    for key, value in minimind_autoep_section(model_config).items():
        if key in section and section[key] != value:
            raise ConfigError(f"{source}: expert_parallel.{key} is {section[key]!r}, but MiniMind needs {value!r} "
                              f"for this model; remove the key")
        section[key] = value
    section.update(enabled=True, autoep_size=size)
    ds_config["expert_parallel"] = section
    return size


class ExpertParallelAuxLoss:
    """MiniMind's auxiliary loss for a model whose MoE blocks AutoEP has replaced.

    Hooks on each ``AutoEPMoELayer`` record the input's (batch, seq), the router gate's
    logits (in the autograd graph) and the router's chosen experts, and compute the
    layer's loss with ``MoEGate.auxiliary_loss`` (the family's formula, only in training and
    when its coefficient is > 0, as MiniMind). A hook on the whole model writes their sum
    into ``output.aux_loss``, so callers see the same output as with the plain model.
    """

    def __init__(self, model: nn.Module, model_config: MiniMindConfig):
        with torch.device("meta"):
            # Only its settings and its loss formula are used; its weight is AutoEP's router's now.
            self.loss_formula = MoEGate(model_config)
        self.layer_losses: list[torch.Tensor] = []
        self.handles = []
        layers = [module for module in model.modules() if isinstance(module, AutoEPMoELayer)]
        if not layers:
            raise ValueError("no AutoEP layer in the model: was expert_parallel enabled in deepspeed.initialize?")
        for layer in layers:
            self.hook_layer(layer)
        self.handles.append(model.register_forward_pre_hook(self.start_forward))
        self.handles.append(model.register_forward_hook(self.finish_forward))

    def hook_layer(self, layer: AutoEPMoELayer) -> None:
        seen = {}

        def record_shape(module, args):
            seen["batch_seq"] = args[0].shape[:2]

        def record_logits(module, args, logits):  # (tokens, experts)
            seen["logits"] = logits

        def add_loss(module, args, routed):
            # routed: (top_scores (tokens, k), selected_experts (tokens, k), tokens_per_expert (experts,))
            logits = seen.pop("logits")
            if layer.training and self.loss_formula.alpha > 0.0:
                batch, seq = seen["batch_seq"]
                scores = router_scores(logits).view(batch, seq, -1)  # float32, as AutoEP's router
                chosen = routed[1].reshape(batch, seq * self.loss_formula.top_k)
                self.layer_losses.append(self.loss_formula.auxiliary_loss(scores, chosen))

        self.handles.append(layer.register_forward_pre_hook(record_shape))
        self.handles.append(layer.router.gate.register_forward_hook(record_logits))
        self.handles.append(layer.router.register_forward_hook(add_loss))

    def start_forward(self, module, args, kwargs=None):
        self.layer_losses = []

    def finish_forward(self, module, args, output):
        logits = output.logits
        output.aux_loss = sum(self.layer_losses, start=logits.new_zeros((), dtype=torch.float32))
        self.layer_losses = []
        return output

    def remove(self) -> None:
        """Take the hooks off the model."""
        for handle in self.handles:
            handle.remove()
        self.handles = []


def install_aux_loss(engine, model_config: MiniMindConfig) -> ExpertParallelAuxLoss:
    """Hook MiniMind's aux loss onto the engine's AutoEP model (call after ``deepspeed.initialize``)."""
    return ExpertParallelAuxLoss(engine.module, model_config)


def checkpoint_expert_parallel_size(checkpoint_dir: Path, tag: str | None) -> tuple[Path, int | None]:
    """The model-states file of a checkpoint tag (``latest`` when None) and the AutoEP size it was
    written with (None: no AutoEP)."""
    location = locate_checkpoint(Path(checkpoint_dir) / tag if tag else checkpoint_dir)
    path = location.tag_dir / MODEL_STATES
    return path, saved_expert_parallel_size(read_client_state(location))  # metadata only: no tensor is read


def check_resume_expert_parallel(checkpoint_dir: Path, tag: str | None, ep_size: int | None, ds_config: dict) -> None:
    """Refuse a regular checkpoint written at another expert-parallel size (it would load corrupted).

    DeepSpeed raises nothing in that case and silently mixes up expert weights and Adam
    moments; only a universal checkpoint (``checkpoint.load_universal`` in ``ds_config``)
    can change the layout, so that case passes, as long as both sides use AutoEP or
    neither does: AutoEP's universal files hold fused ``experts.w{1,2,3}``, a plain MoE
    model's hold one file per expert Linear, and neither loads into the other.
    """
    path, saved = checkpoint_expert_parallel_size(checkpoint_dir, tag)
    if ds_config.get("checkpoint", {}).get("load_universal"):
        if (saved is None) == (ep_size is None):
            return
        if ep_size is None:
            raise ConfigError(f"{path.parent}: universal checkpoint of an expert-parallel (AutoEP) run holds fused "
                              "expert tensors; resume it with --ep_size (1 on a single rank)")
        raise ConfigError(f"{path.parent}: universal checkpoint of a run without expert parallelism holds per-expert "
                          "weights that AutoEP cannot load; resume it without --ep_size")
    if saved == ep_size:
        return
    written = "without expert parallelism" if saved is None else f"at expert-parallel size {saved}"
    running = "no expert parallelism" if ep_size is None else f"expert-parallel size {ep_size}"
    raise ConfigError(
        f"{path.parent}: checkpoint was written {written} but this run uses {running}; resume at the same size, "
        f"or convert it with `python -m minimind.checkpoint to-universal {path.parent} {path.parent}_universal` "
        f"and resume with --resume_from {path.parent}_universal"
    )


def autoep_layers(model: nn.Module) -> dict[str, AutoEPMoELayer]:
    """The AutoEP layers of ``model`` by module path (``model.layers.{i}.mlp``)."""
    return {name: module for name, module in model.named_modules() if isinstance(module, AutoEPMoELayer)}


def expert_gatherer(model: nn.Module) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """``gather(name, tensor)`` for tensors named as in an AutoEP ``model``: each grouped
    ``experts.w{1,2,3}`` (local experts, out, in) is gathered over its expert-parallel group
    into every expert (on the accelerator); other tensors pass unchanged. Collective on the
    expert-parallel groups: every rank calls it with the same names in the same order.
    """
    layers = autoep_layers(model)

    def gather(name: str, tensor: torch.Tensor) -> torch.Tensor:
        prefix, _, local = name.rpartition(".experts.")
        layer = layers.get(prefix)
        return gather_experts(layer, tensor) if layer is not None and local in EXPERT_TENSOR_NAMES else tensor

    return gather


def gather_experts(layer: AutoEPMoELayer, local: torch.Tensor) -> torch.Tensor:
    """(local experts, ...) on each rank of the layer's group -> (all experts, ...) in global expert order,
    on the accelerator device."""
    if layer.ep_size == 1:
        return local
    parts = all_gather(local, group=layer.ep_group)
    full = torch.empty((layer.num_experts, *local.shape[1:]), dtype=local.dtype, device=parts[0].device)
    for rank, part in enumerate(parts):
        full[list(autoep_experts_for_rank(layer.expert_placement_descriptor, rank))] = part
    return full


def write_expert_parallel_weights(engine, path: Path) -> Path | None:
    """MiniMind's ``.pth`` of an AutoEP engine's model (fp32 master weights, every expert); rank 0 writes it.

    Collective: call on every rank; only rank 0 holds the gathered weights.
    """
    state = master_weights_state_dict(engine, gather=expert_gatherer(engine.module))
    if state is None:
        return None
    return save_weights_file(minimind_expert_keys(state, autoep_layers(engine.module)), path)
