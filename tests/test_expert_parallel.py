"""Expert-parallel MoE (DeepSpeed AutoEP) against the plain MiniMind model in one process.

One launch of ``tests/expert_parallel_worker.py`` on 2 CPU ranks runs every scenario; the
reference here trains the plain model on the same initial weights and the same global
batch, split as data parallelism splits it (each rank's micro-batches in turn, losses
scaled as ``minimind.training.loop.steps`` scales them, gradients averaged). Both sides are fp32.
"""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from deepspeed.module_inject.auto_ep import AutoEP
from deepspeed.module_inject.auto_ep_config import parse_autoep_config

import pretrain_ds
from minimind.data import IGNORE_INDEX
from minimind.errors import ConfigError
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.model.moe import MoEGate
from minimind.model.pth_weights import load_minimind_pth
from minimind.training.ds_config.load import read_ds_config
from minimind.training.parallel.autoep import (
    ExpertParallelAuxLoss,
    autoep_layers,
    check_resume_expert_parallel,
    minimind_autoep_section,
    resolve_expert_parallel,
)
from tests.launcher import REPO_ROOT, launch
from tests.model_reference import moe_ref
from tests.near_tied_routing import near_tied_router, reference_choice

WORLD = 2
STEPS = 3
LR = 1e-3
# fp32 on both sides; what differs is summation order (all-to-all, grouped experts, ZeRO's
# flat buffers). Measured: losses within 1e-7, gradients and weights within 5e-6 (Adam turns
# rounding in near-zero gradients into larger weight differences by step 3). Acceptance: 1e-5.
RELATIVE_TOLERANCE = 1e-5
JSON_OPTIMIZER = read_ds_config(REPO_ROOT / "ds_configs" / "zero2_fp32.json")["optimizer"]["params"]


def tiny_moe_config(model_family: str = "minimind2", **overrides) -> dict:
    config = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  vocab_size=96, intermediate_size=40, max_position_embeddings=64, use_moe=True,
                  num_experts_per_tok=2, kernel_impl="torch")
    if model_family == "minimind2":
        config.update(n_routed_experts=4, n_shared_experts=1, aux_loss_alpha=0.1)
    else:  # each family's own MoE fields: no shared expert, its router's aux-loss coefficient
        config.update(model_family=model_family, num_experts=4, moe_intermediate_size=40, router_aux_loss_coef=0.1)
    config.update(overrides)
    return config


def make_case(name: str, seed: int, ep_size: int, accumulation: int = 1, micro: int = 2, seq: int = 12,
              forced_routing: bool = False, **config_overrides) -> dict:
    """Initial weights and ``STEPS`` global batches (steps, world, accumulation, micro, seq)."""
    generator = torch.Generator().manual_seed(seed)
    config = tiny_moe_config(**config_overrides)
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(MiniMindConfig(**config))
    if forced_routing:  # every score equal: top-k picks the same experts for every token
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, MoEGate):
                    module.weight.zero_()
    shape = (STEPS, WORLD, accumulation, micro, seq)
    input_ids = torch.randint(0, config["vocab_size"], shape, generator=generator)
    labels = torch.randint(0, config["vocab_size"], shape, generator=generator)
    labels[torch.rand(shape, generator=generator) < 0.15] = IGNORE_INDEX
    return {"name": name, "config": config, "ep_size": ep_size, "lr": LR, "frozen_router": forced_routing,
            "init": {k: v.clone() for k, v in model.state_dict().items()}, "input_ids": input_ids, "labels": labels}


def plain_model_run(case: dict) -> dict:
    """The plain model, one process, data parallelism emulated: per step CE, aux, grads; final weights."""
    model = MiniMindForCausalLM(MiniMindConfig(**case["config"]))
    model.load_state_dict(case["init"])
    freeze_router_if_asked(model, case)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=case["lr"], betas=tuple(JSON_OPTIMIZER["betas"]),
                                  eps=JSON_OPTIMIZER["eps"], weight_decay=JSON_OPTIMIZER["weight_decay"])
    routed = torch.zeros(MiniMindConfig(**case["config"]).expert_count, dtype=torch.long)
    choices = []

    def count(module, args, output):
        routed.add_(torch.bincount(output[0].reshape(-1), minlength=routed.numel()))
        choices.append(output[0].sort(dim=-1).values)

    for module in model.modules():
        if isinstance(module, MoEGate):
            module.register_forward_hook(count)
    inputs, labels = case["input_ids"], case["labels"]
    accumulation = inputs.shape[2]
    record = {"ce": [], "aux": [], "grads": []}
    for step in range(STEPS):
        total = int((labels[step] != IGNORE_INDEX).sum())
        scale = accumulation * WORLD / total
        ce_sum = aux_sum = 0.0
        for rank in range(WORLD):
            for micro in range(accumulation):
                output = model(input_ids=inputs[step, rank, micro])
                token_loss = F.cross_entropy(output.logits.reshape(-1, output.logits.shape[-1]),
                                             labels[step, rank, micro].reshape(-1), ignore_index=IGNORE_INDEX,
                                             reduction="sum")
                ((token_loss * scale + output.aux_loss) / (accumulation * WORLD)).backward()
                ce_sum += token_loss.item()
                aux_sum += output.aux_loss.item()
        record["ce"].append(ce_sum / total)
        record["aux"].append(aux_sum / (accumulation * WORLD))
        for param in model.parameters():  # an expert no token chose: zero gradient (weight decay still applies)
            if param.requires_grad and param.grad is None:
                param.grad = torch.zeros_like(param)
        # a frozen router has none: reported as zero, as the worker does
        record["grads"].append({n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                                for n, p in model.named_parameters()})
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    record["params"] = {n: p.detach().clone() for n, p in model.named_parameters()}
    record["tokens_per_expert"] = routed
    record["choices"] = torch.cat(choices)  # (tokens of every forward, k), sorted expert ids
    return record


def freeze_router_if_asked(model: MiniMindForCausalLM, case: dict) -> None:
    """Keep a forced routing for every step: the zeroed router weights are not trained."""
    for module in model.modules():
        if isinstance(module, MoEGate) and case["frozen_router"]:
            module.weight.requires_grad_(False)


def relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.norm().item()
    return (actual - expected).norm().item() / scale if scale > 0 else actual.norm().item()


CASES = [
    make_case("seq_aux_accumulation", seed=1, ep_size=2, accumulation=2, micro=1),
    make_case("batch_aux", seed=2, ep_size=2, seq_aux=False),
    make_case("forced_routing", seed=3, ep_size=2, forced_routing=True),
    make_case("top1", seed=4, ep_size=2, num_experts_per_tok=1),
    make_case("ep1_replicated_experts", seed=5, ep_size=1),
    make_case("minimind3_top1", seed=6, ep_size=2, accumulation=2, micro=1, model_family="minimind3",
              num_experts_per_tok=1),
]


@pytest.fixture(scope="module")
def autoep_results(launch_dir):
    folder = launch_dir / "autoep"
    folder.mkdir()
    cases = [dict(case) for case in CASES]
    cases[0]["checkpoint_dir"] = str(folder / "checkpoints")
    cases[0]["weights_path"] = str(folder / "pretrain_32_moe.pth")
    torch.save(cases, folder / "cases.pt")
    launch(WORLD, [str(folder / "cases.pt"), str(folder / "results.pt")], script="tests/expert_parallel_worker.py",
           timeout=300)
    return torch.load(folder / "results.pt", weights_only=False), folder


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_expert_parallel_matches_plain_model(autoep_results, case):
    results, _ = autoep_results
    actual, expected = results[case["name"]], plain_model_run(case)
    assert actual["optimizer"] in ("AdamW", "FusedAdam"), actual["optimizer"]
    for step in range(STEPS):
        for key in ("ce", "aux"):
            assert expected[key][step] > 0, (key, step)
            assert abs(actual[key][step] - expected[key][step]) <= RELATIVE_TOLERANCE * expected[key][step], (
                key, step, actual[key][step], expected[key][step])
        assert actual["grads"][step].keys() == expected["grads"][step].keys()
        for name, grad in expected["grads"][step].items():
            difference = relative_difference(actual["grads"][step][name], grad)
            assert difference < RELATIVE_TOLERANCE, (step, name, difference)
    for name, param in expected["params"].items():
        assert relative_difference(actual["params"][name], param) < RELATIVE_TOLERANCE, name
    assert torch.equal(actual["tokens_per_expert"].long(), expected["tokens_per_expert"])


def test_forced_routing_sends_every_token_to_the_same_experts(autoep_results):
    results, _ = autoep_results
    tokens_per_expert = results["forced_routing"]["tokens_per_expert"]
    assert sorted(tokens_per_expert.tolist())[:2] == [0, 0]  # two of the four experts never see a token
    choices = plain_model_run(CASES[2])["choices"]
    assert (choices == choices[0]).all()


def test_resumed_training_reproduces_the_uninterrupted_steps(autoep_results):
    results, _ = autoep_results
    uninterrupted, resumed = results["seq_aux_accumulation"], results["seq_aux_accumulation"]["resumed"]
    assert len(resumed["ce"]) == STEPS - 1
    for step, (ce, aux) in enumerate(zip(resumed["ce"], resumed["aux"], strict=True), start=1):
        # same topology and reduction order: rounding only (measured a few 1e-8)
        assert ce == pytest.approx(uninterrupted["ce"][step], rel=1e-6, abs=0)
        assert aux == pytest.approx(uninterrupted["aux"][step], rel=1e-6, abs=0)
        for name, grad in uninterrupted["grads"][step].items():
            assert relative_difference(resumed["grads"][step - 1][name], grad) < 1e-6, (step, name)


def test_minimind_weights_file_holds_every_expert(autoep_results):
    case = CASES[0]
    model = load_minimind_pth(MiniMindForCausalLM(MiniMindConfig(**case["config"])),
                              autoep_results[1] / "pretrain_32_moe.pth")
    trained = plain_model_run(case)["params"]
    for name, param in model.named_parameters():
        # the file is float16: 2^-11 relative rounding
        torch.testing.assert_close(param, trained[name], rtol=1e-3, atol=1e-5)


def test_checkpoint_at_another_expert_parallel_size_is_refused(autoep_results):
    checkpoint_dir = autoep_results[1] / "checkpoints"
    check_resume_expert_parallel(checkpoint_dir, None, 2, {})
    check_resume_expert_parallel(checkpoint_dir, "step_test", 2, {})
    check_resume_expert_parallel(checkpoint_dir, None, 1, {"checkpoint": {"load_universal": True}})
    for other in (1, 4, None):
        with pytest.raises(ConfigError, match="minimind.checkpoint to-universal") as error:
            check_resume_expert_parallel(checkpoint_dir, None, other, {})
        assert "\n" not in str(error.value)
        assert "expert-parallel size 2" in str(error.value)


def with_autoep_layers(model: MiniMindForCausalLM, model_config: MiniMindConfig) -> MiniMindForCausalLM:
    """``model`` with its MoE blocks replaced by AutoEP's at expert-parallel size 1, as ``deepspeed.initialize``
    replaces them (at size 1 without a process group), and MiniMind's aux loss hooked on."""
    ds_config = {}
    resolve_expert_parallel(ds_config, 1, model_config, 1, "test")
    auto_ep = AutoEP(model, parse_autoep_config(ds_config["expert_parallel"]))
    auto_ep.replace_moe_layers(auto_ep.ep_parser(), ep_size=1, ep_rank=0)
    ExpertParallelAuxLoss(model, model_config)
    return model


@pytest.mark.parametrize("seq_aux", [True, False])
def test_bfloat16_routing_and_aux_loss_match_float32_on_near_ties(seq_aux):
    """In bfloat16, the plain MoE layer and AutoEP's pick the experts a float32 softmax picks, one logit step
    apart, and the aux loss is computed from float32 probabilities, as MiniMind's under autocast."""
    tokens, top_k = 32, 2
    config = MiniMindConfig(**tiny_moe_config(hidden_size=tokens, num_hidden_layers=1, seq_aux=seq_aux))
    plain = MiniMindForCausalLM(config).to(torch.bfloat16).train()
    gate_weight, x = near_tied_router(config.n_routed_experts, tokens, top_k)
    with torch.no_grad():
        plain.model.layers[0].mlp.gate.weight.copy_(gate_weight)
    _, expected_aux = moe_ref(x.double().view(2, 16, tokens), plain.model.layers[0].mlp, top_k,
                              config.norm_topk_prob, config.aux_loss_alpha, seq_aux)
    expected_choice = reference_choice(x, gate_weight, top_k)
    autoep = with_autoep_layers(copy.deepcopy(plain), config)
    (autoep_layer,) = autoep_layers(autoep).values()
    # (model, its router, where the router's output holds the chosen experts)
    routers = ((plain, plain.model.layers[0].mlp.gate, 0), (autoep, autoep_layer.router, 1))
    for model, router, position in routers:
        choices = []
        router.register_forward_hook(lambda module, args, output, position=position, choices=choices:
                                     choices.append(output[position]))
        # the MoE layer gets the near-tied tokens, whatever the layers below made of input_ids
        model.model.layers[0].mlp.register_forward_pre_hook(lambda module, args: (x.view(2, 16, tokens).bfloat16(),))
        output = model(input_ids=torch.randint(0, config.vocab_size, (2, 16)))
        torch.testing.assert_close(choices[0].sort(dim=-1).values, expected_choice, rtol=0, atol=0)
        # float32 probabilities of exact logits against float64: rounding only (measured up to 2e-7 relative;
        # from bfloat16 probabilities, 6e-5 to 7e-3)
        torch.testing.assert_close(output.aux_loss, expected_aux.float(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("flags, message", [
    (["--ep_size", "2"], "--ep_size 2 needs --use_moe 1"),
    (["--use_moe", "1", "--ep_size", "3"], "expert-parallel size 3 does not divide n_routed_experts 4"),
    (["--use_moe", "1", "--ep_size", "2"], "expert-parallel size 2 does not divide the world size 1"),
])
def test_pretrain_ds_stops_before_building_anything(tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert pretrain_ds.main([*flags, "--save_dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error


def resolve(ds_config: dict, ep_size, world=2, **config_overrides):
    config = MiniMindConfig(**tiny_moe_config(**config_overrides))
    return resolve_expert_parallel(ds_config, ep_size, config, world, "ds.json")


def test_section_is_built_from_the_flag_with_minimind_names():
    ds_config = {"optimizer": {}}
    assert resolve(ds_config, 2) == 2
    section = ds_config["expert_parallel"]
    assert section["enabled"] and section["autoep_size"] == 2 and section["route_norm"] is True
    assert section["moe_layer_pattern"] == r"model\.layers\.\d+\.mlp" and section["router_pattern"] == "gate"
    assert (section["expert_w1"], section["expert_w2"], section["expert_w3"]) == ("gate_proj", "down_proj", "up_proj")
    assert section["shared_experts_pattern"] == "shared_experts" and "load_balance_coeff" not in section


def test_route_norm_follows_minimind():
    assert minimind_autoep_section(MiniMindConfig(**tiny_moe_config(num_experts_per_tok=1)))["route_norm"] is False
    assert minimind_autoep_section(MiniMindConfig(**tiny_moe_config(norm_topk_prob=False)))["route_norm"] is False
    assert minimind_autoep_section(MiniMindConfig(**tiny_moe_config()))["route_norm"] is True


def test_flag_overrides_the_json_size_and_the_json_alone_enables():
    ds_config = {"expert_parallel": {"enabled": True, "autoep_size": 4, "use_grouped_mm": True}}
    assert resolve(ds_config, 2) == 2 and ds_config["expert_parallel"]["use_grouped_mm"] is True
    ds_config = {"expert_parallel": {"enabled": True, "autoep_size": 2}}
    assert resolve(ds_config, None, world=4) == 2
    ds_config = {"expert_parallel": {"enabled": True, "autoep_size": 2}}
    assert resolve(ds_config, None, world=4, **{"n_routed_experts": 8}) == 2


def test_no_expert_parallelism_without_flag_or_section():
    ds_config = {"expert_parallel": {"enabled": False, "autoep_size": 2}}
    assert resolve(ds_config, None) is None and "expert_parallel" not in ds_config
    assert resolve({}, None) is None
    dense = {"expert_parallel": {"enabled": False}}
    assert resolve(dense, 1, use_moe=False) is None and "expert_parallel" not in dense


@pytest.mark.parametrize("ds_config, ep_size, world, overrides, message", [
    ({}, 3, 3, {}, "expert-parallel size 3 does not divide n_routed_experts 4"),
    ({}, 4, 2, {}, "expert-parallel size 4 does not divide the world size 2"),
    ({}, 2, 2, {"use_moe": False}, "--ep_size 2 needs --use_moe 1"),
    ({"expert_parallel": {"enabled": True, "autoep_size": 2}}, None, 2, {"use_moe": False},
     "ds.json: expert_parallel is enabled but the model is dense"),
    ({}, 2, 2, {"dropout": 0.1}, "dropout 0.1 is not supported with expert parallelism"),
    ({}, 0, 2, {}, "--ep_size must be at least 1"),
    ({"expert_parallel": {"enabled": True, "route_norm": True}}, 2, 2, {"num_experts_per_tok": 1},
     "expert_parallel.route_norm is True, but MiniMind needs False"),
    ({"expert_parallel": {"enabled": True, "load_balance_coeff": 0.001}}, 2, 2, {},
     "load_balance_coeff is not MiniMind's balancing"),
])
def test_bad_combinations_are_one_line_errors(ds_config, ep_size, world, overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")) as error:
        resolve(json.loads(json.dumps(ds_config)), ep_size, world=world, **overrides)
    assert "\n" not in str(error.value)


def tiny_minimind3_moe_config(**overrides) -> dict:
    config = dict(model_family="minimind3", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=96, moe_intermediate_size=40,
                  max_position_embeddings=64, use_moe=True, num_experts=4, router_aux_loss_coef=0.1,
                  kernel_impl="torch")
    config.update(overrides)
    return config


def test_minimind3_section_has_no_shared_experts_and_normalises_top_1():
    section = minimind_autoep_section(MiniMindConfig(**tiny_minimind3_moe_config()))
    assert section["num_experts_attr"] == "num_experts" and section["has_shared_experts"] is False
    assert "shared_experts_pattern" not in section and section["route_norm"] is True
    unnormalised = MiniMindConfig(**tiny_minimind3_moe_config(norm_topk_prob=False))
    assert minimind_autoep_section(unnormalised)["route_norm"] is False


@pytest.mark.parametrize("top_k", [1, 2])
def test_minimind3_autoep_layers_match_the_plain_model(top_k):
    """AutoEP's layers (size 1, in this process) on a minimind3 MoE model: the same logits, aux loss
    (upstream's formula, recomputed by the hooks) and gradients as the plain model, in float32."""
    config = MiniMindConfig(**tiny_minimind3_moe_config(num_experts_per_tok=top_k))
    torch.manual_seed(0)
    plain = MiniMindForCausalLM(config).train()
    autoep = with_autoep_layers(copy.deepcopy(plain), config)
    assert len(autoep_layers(autoep)) == config.num_hidden_layers
    ids = torch.randint(0, config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    outputs = []
    for model in (plain, autoep):
        output = model(input_ids=ids, labels=ids)
        (output.loss + output.aux_loss).backward()
        outputs.append(output)
    torch.testing.assert_close(outputs[1].logits, outputs[0].logits, rtol=RELATIVE_TOLERANCE, atol=1e-6)
    assert outputs[0].aux_loss > 0
    torch.testing.assert_close(outputs[1].aux_loss, outputs[0].aux_loss, rtol=RELATIVE_TOLERANCE, atol=0)
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_norm.weight",
                 "model.layers.1.self_attn.k_norm.weight"):
        torch.testing.assert_close(autoep.get_parameter(name).grad, plain.get_parameter(name).grad,
                                   rtol=RELATIVE_TOLERANCE, atol=1e-7)
