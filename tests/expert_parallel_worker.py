"""Rank side of ``test_expert_parallel.py``: MiniMind MoE trained under AutoEP, numbers written for the test.

Launched once as ``deepspeed --num_gpus 2 tests/expert_parallel_worker.py CASES RESULTS``.
``CASES`` (written by the test with ``torch.save``) lists scenarios, each with a model
config, initial MiniMind weights, the expert-parallel size and the global batches of
every optimizer step. For each scenario this builds a DeepSpeed engine from
``ds_configs/zero2_fp32.json`` with the ``expert_parallel`` section that
``resolve_expert_parallel`` writes, trains the steps exactly as ``minimind.training.loop.steps``
scales losses, and records per step the global cross-entropy, the aux loss, every
parameter's full gradient (MiniMind keys, experts re-assembled) and the final weights;
one scenario also saves a checkpoint after its first step and resumes from it, and writes
MiniMind's ``.pth`` at the end.
"""

import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
import torch.nn.functional as F
from deepspeed.module_inject.auto_ep_layer import AutoEPMoELayer
from deepspeed.utils import safe_get_full_grad

from minimind.checkpoint.autoep_names import minimind_expert_keys
from minimind.data import IGNORE_INDEX
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.training.distributed.collectives import all_reduce, barrier
from minimind.training.distributed.process_group import init_process_group
from minimind.training.ds_config.load import resolve_ds_config
from minimind.training.parallel.autoep import (
    autoep_layers,
    expert_gatherer,
    install_aux_loss,
    resolve_expert_parallel,
    write_expert_parallel_weights,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DS_CONFIG = REPO_ROOT / "ds_configs" / "zero2_fp32.json"


def minimind_named_tensors(model, tensors: dict) -> dict:
    """``tensors`` named as in an AutoEP ``model``, experts gathered and renamed to MiniMind's keys
    (the path the trainer's ``.pth`` takes). Collective on the expert-parallel groups."""
    gather = expert_gatherer(model)
    return minimind_expert_keys({name: gather(name, tensor) for name, tensor in tensors.items()}, autoep_layers(model))


def build_engine(case: dict, world: int):
    """A ZeRO-2 fp32 engine with AutoEP for the case's model, MiniMind's aux loss hooked on."""
    model_config = MiniMindConfig(**case["config"])
    _, _, accumulation, micro, _ = case["input_ids"].shape
    ds_config, _ = resolve_ds_config(DS_CONFIG, data_parallel=world, fp16_supported=False,
                                     micro_batch=micro, accumulation=accumulation, learning_rate=case["lr"])
    ep_size = resolve_expert_parallel(ds_config, case["ep_size"], model_config, world, "test")
    model = MiniMindForCausalLM(model_config)
    model.load_state_dict(case["init"])
    if case["frozen_router"]:
        for layer in model.model.layers:
            layer.mlp.gate.weight.requires_grad_(False)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    aux_hooks = install_aux_loss(engine, model_config)
    layers = [m for m in engine.module.modules() if isinstance(m, AutoEPMoELayer)]
    assert layers and all(layer.ep_size == ep_size for layer in layers)
    return engine, aux_hooks, layers


def train(engine, case: dict, steps: range, rank: int, world: int, record: dict) -> None:
    """Optimizer steps ``steps`` of the case; appends global CE, aux and full gradients to ``record``."""
    # (steps, world, accumulation, micro, seq): labels already shifted, IGNORE_INDEX where masked
    all_inputs, all_labels = case["input_ids"], case["labels"]
    accumulation = all_inputs.shape[2]
    names = [name for name, _ in engine.module.named_parameters()]
    for step in steps:
        inputs, labels_of_step = all_inputs[step, rank], all_labels[step, rank]
        total = all_reduce(torch.tensor([float((labels_of_step != IGNORE_INDEX).sum())], dtype=torch.float64))
        scale = accumulation * world / total.item()  # as minimind.training.loop.steps.train_step
        ce_sum = aux_sum = 0.0
        for input_ids, labels in zip(inputs, labels_of_step, strict=True):
            output = engine(input_ids=input_ids)
            token_loss = F.cross_entropy(output.logits.float().reshape(-1, output.logits.shape[-1]),
                                         labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
            engine.backward(token_loss * scale + output.aux_loss)
            if engine.is_gradient_accumulation_boundary():
                grads = {name: full_grad(param) for name, param in engine.module.named_parameters()}
            engine.step()
            ce_sum += token_loss.item()
            aux_sum += output.aux_loss.item()
        sums = all_reduce(torch.tensor([ce_sum, aux_sum], dtype=torch.float64))
        record["ce"].append(sums[0].item() / total.item())
        record["aux"].append(sums[1].item() / (accumulation * world))
        record["grads"].append(minimind_named_tensors(engine.module, {n: grads[n] for n in names}))


def run_scenario(case: dict, rank: int, world: int) -> dict:
    """Train one scenario; returns its per-step numbers (the same on every rank).

    With ``checkpoint_dir`` the engine saves after the first step, and a second engine
    resumed from that checkpoint trains the remaining steps again (``resumed``).
    """
    steps = case["input_ids"].shape[0]
    engine, aux_hooks, layers = build_engine(case, world)
    record = {"ce": [], "aux": [], "grads": [], "optimizer": type(engine.basic_optimizer).__name__}
    checkpoint_dir = case.get("checkpoint_dir")
    if checkpoint_dir:
        train(engine, case, range(1), rank, world, record)
        engine.save_checkpoint(checkpoint_dir, tag="step_test")
        train(engine, case, range(1, steps), rank, world, record)
    else:
        train(engine, case, range(steps), rank, world, record)
    record["params"] = minimind_named_tensors(
        engine.module, {name: param.detach().clone() for name, param in engine.module.named_parameters()})
    if case.get("weights_path"):
        write_expert_parallel_weights(engine, Path(case["weights_path"]))
    # tokens routed to each expert, summed over steps, layers and ranks (forced-routing check)
    routed = all_reduce(torch.stack([layer.tokens_per_expert for layer in layers]).sum(0))
    record["tokens_per_expert"] = routed.cpu()
    aux_hooks.remove()
    engine.destroy()
    if checkpoint_dir:
        engine, aux_hooks, _ = build_engine(case, world)
        engine.load_checkpoint(checkpoint_dir, tag="step_test")
        record["resumed"] = {"ce": [], "aux": [], "grads": []}
        train(engine, case, range(1, steps), rank, world, record["resumed"])
        aux_hooks.remove()
        engine.destroy()
    return record


def full_grad(param: torch.nn.Parameter) -> torch.Tensor:
    """The parameter's reduced gradient, whole (ZeRO partitions it); zero for a frozen one."""
    if not param.requires_grad:
        return torch.zeros_like(param)
    return safe_get_full_grad(param).detach().clone()


def main(cases_path: str, results_path: str) -> None:
    init_process_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    cases = torch.load(cases_path, weights_only=False)
    results = {}
    for case in cases:
        torch.manual_seed(0)
        results[case["name"]] = run_scenario(case, rank, world)
    if rank == 0:
        torch.save(results, results_path)
    barrier()


if __name__ == "__main__":
    main(*[arg for arg in sys.argv[1:] if not arg.startswith("--local_rank")])
