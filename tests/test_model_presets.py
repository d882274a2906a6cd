"""Model presets build with their documented sizes; activation checkpointing changes nothing numerically."""

import pytest
import torch

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.model.presets import PRESETS, preset_config_kwargs

DOCUMENTED_PARAMETERS = {
    "26m": 25_829_888, "104m": 104_030_976, "145m-moe": 145_029_760,
    "350m": 347_167_872, "1b": 987_850_752, "moe-4b": 3_795_159_040,
    # upstream's MiniMindForCausalLM (minimind-3, commit d65ef2c) at these sizes, counted on the meta device
    "minimind-3": 63_912_192, "minimind-3-moe": 198_416_640,
}


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_build_with_their_documented_parameter_count(name):
    with torch.device("meta"):
        model = MiniMindForCausalLM(MiniMindConfig(**preset_config_kwargs(name)))
    assert sum(p.numel() for p in model.parameters()) == DOCUMENTED_PARAMETERS[name]
    config = model.config
    assert config.hidden_size % 64 == 0 and config.intermediate_size % 64 == 0


def test_minimind_presets_match_minimind_defaults():
    assert preset_config_kwargs("26m") == {"hidden_size": 512, "num_hidden_layers": 8}
    assert MiniMindConfig(**preset_config_kwargs("145m-moe")).n_routed_experts == 4
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset_config_kwargs("huge")


def test_minimind3_presets_are_upstreams_published_sizes():
    dense = MiniMindConfig(**preset_config_kwargs("minimind-3"))
    assert (dense.model_family, dense.hidden_size, dense.num_hidden_layers, dense.head_dim) == ("minimind3", 768, 8, 96)
    assert (dense.num_attention_heads, dense.num_key_value_heads, dense.intermediate_size) == (8, 4, 2432)
    moe = MiniMindConfig(**preset_config_kwargs("minimind-3-moe"))
    assert (moe.num_experts, moe.num_experts_per_tok, moe.moe_intermediate_size, moe.shared_expert_count) == (
        4, 1, 2432, 0)


@pytest.mark.parametrize("family", ["minimind2", "minimind3"])
@pytest.mark.parametrize("use_moe", [False, True])
def test_activation_checkpointing_gives_identical_losses_and_gradients(use_moe, family):
    config = MiniMindConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                            vocab_size=101, max_position_embeddings=64, use_moe=use_moe, kernel_impl="torch",
                            model_family=family)
    torch.manual_seed(0)
    plain = MiniMindForCausalLM(config).train()
    checkpointed = MiniMindForCausalLM(config).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.activation_checkpointing_enable()
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (plain, checkpointed)]
    for step in range(3):
        ids = torch.randint(0, 101, (2, 16), generator=torch.Generator().manual_seed(step))
        losses = []
        for model, optimizer in zip((plain, checkpointed), optimizers, strict=True):
            output = model(ids, labels=ids)
            (output.loss + output.aux_loss).backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append((output.loss.item(), output.aux_loss.item()))
        assert losses[0] == losses[1], step
    for (name, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
