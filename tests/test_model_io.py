"""State-dict keys, MiniMind .pth and Hugging Face round-trips, KV-cache generation."""

import importlib.util

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.checkpoint.export import export_hf
from minimind.model.pth_weights import WeightsMismatchError, load_minimind_pth, save_minimind_pth
from tests.test_model_components import tiny_config


def spec_keys(config: MiniMindConfig) -> set[str]:
    """The state-dict keys MINIMIND_SPEC.md lists, expanded for ``config``."""
    keys = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(config.num_hidden_layers):
        layer = f"model.layers.{i}"
        keys |= {f"{layer}.self_attn.{p}_proj.weight" for p in "qkvo"}
        keys |= {f"{layer}.input_layernorm.weight", f"{layer}.post_attention_layernorm.weight"}
        if config.use_moe:
            keys.add(f"{layer}.mlp.gate.weight")
            for e in range(config.n_routed_experts):
                keys |= {f"{layer}.mlp.experts.{e}.{p}_proj.weight" for p in ("gate", "up", "down")}
            for s in range(config.n_shared_experts):
                keys |= {f"{layer}.mlp.shared_experts.{s}.{p}_proj.weight" for p in ("gate", "up", "down")}
        else:
            keys |= {f"{layer}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
    return keys


@pytest.mark.parametrize("use_moe", [False, True])
def test_state_dict_keys_equal_spec(use_moe):
    config = tiny_config(use_moe=use_moe, n_routed_experts=3, n_shared_experts=2)
    state = MiniMindForCausalLM(config).state_dict()
    assert set(state) == spec_keys(config)
    if use_moe:
        assert state["model.layers.0.mlp.gate.weight"].shape == (3, 48)


def test_default_parameter_counts_match_minimind():
    dense = MiniMindForCausalLM(MiniMindConfig())
    moe = MiniMindForCausalLM(MiniMindConfig(hidden_size=640, use_moe=True))
    assert round(sum(p.numel() for p in dense.parameters()) / 1e6, 2) == 25.83
    assert round(sum(p.numel() for p in moe.parameters()) / 1e6) == 145


@pytest.mark.parametrize("use_moe", [False, True])
def test_minimind_pth_round_trip(tmp_path, use_moe):
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny_config(use_moe=use_moe)).eval()
    path = save_minimind_pth(model, tmp_path / "pretrain_48.pth")
    state = torch.load(path, weights_only=True)
    assert set(state) == spec_keys(model.config)
    assert all(t.dtype == torch.float16 for t in state.values())
    loaded = load_minimind_pth(MiniMindForCausalLM(tiny_config(use_moe=use_moe)), path).eval()
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    for key, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[key].half().float()), key


def test_pth_with_wrong_keys_names_the_file(tmp_path):
    model = MiniMindForCausalLM(tiny_config())
    state = {k: v.half() for k, v in model.state_dict().items()}
    state["model.layers.0.mlp.extra.weight"] = state.pop("model.layers.0.mlp.up_proj.weight")
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsMismatchError, match=r"bad\.pth: keys do not match.*up_proj.*extra"):
        load_minimind_pth(MiniMindForCausalLM(tiny_config()), tmp_path / "bad.pth")


def test_pth_with_wrong_shapes_names_the_key(tmp_path):
    save_minimind_pth(MiniMindForCausalLM(tiny_config(intermediate_size=64)), tmp_path / "w.pth")
    with pytest.raises(WeightsMismatchError, match=r"w\.pth: .*mlp\.gate_proj\.weight has shape"):
        load_minimind_pth(MiniMindForCausalLM(tiny_config()), tmp_path / "w.pth")


def test_pth_refuses_pickled_code(tmp_path):
    torch.save({"model": object()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsMismatchError, match=r"evil\.pth: not a tensor state dict"):
        load_minimind_pth(MiniMindForCausalLM(tiny_config()), tmp_path / "evil.pth")


@pytest.mark.parametrize("family", ["minimind2", "minimind3"])
@pytest.mark.parametrize("use_moe", [False, True])
def test_hugging_face_round_trip_and_auto_classes(tmp_path, use_moe, family):
    torch.manual_seed(1)
    model = MiniMindForCausalLM(tiny_config(use_moe=use_moe, model_family=family)).eval()
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, MiniMindConfig) and config.use_moe == use_moe
    assert {**config.to_dict(), "_name_or_path": ""} == model.config.to_dict()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MiniMindForCausalLM)
    ids = torch.randint(0, 97, (2, 10))
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def greedy_without_cache(model, ids, new_tokens):
    for _ in range(new_tokens):
        next_token = model(ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_token], dim=1)
    return ids


@pytest.mark.parametrize("family", ["minimind2", "minimind3"])
@pytest.mark.parametrize("use_moe", [False, True])
@pytest.mark.parametrize("sdpa", [True, False])
def test_kv_cache_generation_equals_full_recomputation(use_moe, sdpa, family):
    torch.manual_seed(2)
    model = MiniMindForCausalLM(tiny_config(use_moe=use_moe, flash_attn=sdpa, model_family=family)).eval()
    with torch.no_grad():  # sharpen the logits so greedy choices are far from ties
        model.model.embed_tokens.weight.mul_(20)
    ids = torch.randint(3, 97, (2, 7))
    with torch.no_grad():
        expected = greedy_without_cache(model, ids, 12)
        generated = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(generated, expected)


@pytest.mark.parametrize("family", ["minimind2", "minimind3"])
def test_incremental_decoding_logits_match_full_forward(family):
    torch.manual_seed(3)
    model = MiniMindForCausalLM(tiny_config(model_family=family)).eval()
    ids = torch.randint(0, 97, (1, 15))
    with torch.no_grad():
        full = model(ids).logits
        first = model(ids[:, :9], use_cache=True)
        rest = model(ids[:, 9:], cache=first.cache, use_cache=True)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), full, rtol=1e-5, atol=1e-5)


def test_minimind3_export_records_its_family_and_its_bundled_code_gives_the_same_logits(tmp_path):
    """``export_hf``'s standalone ``modeling_minimind.py`` carries the minimind3 architecture (q/k norms, head_dim,
    MoE without shared experts)."""
    torch.manual_seed(4)
    model = MiniMindForCausalLM(tiny_config(model_family="minimind3", head_dim=10, use_moe=True)).eval()
    folder = export_hf(model, tmp_path / "hf", torch.float32, None, hf_arch="custom").path
    spec = importlib.util.spec_from_file_location("exported_minimind3", folder / "modeling_minimind.py")
    bundled = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bundled)
    loaded = bundled.MiniMindForCausalLM.from_pretrained(folder).eval()
    assert loaded.config.model_family == "minimind3"
    ids = torch.randint(0, 97, (2, 9))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
