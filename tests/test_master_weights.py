"""The ``.pth``'s fp32 master weights: every rank takes part in the gathers, only rank 0 keeps them."""

from types import SimpleNamespace

import pytest
import torch

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.training.checkpoints import pth as weights_file
from minimind.training.checkpoints.pth import master_weights_state_dict


@pytest.fixture
def engine():
    torch.manual_seed(0)
    return SimpleNamespace(module=MiniMindForCausalLM(MiniMindConfig(hidden_size=32, num_hidden_layers=1,
                                                                     num_attention_heads=4, num_key_value_heads=2)))


@pytest.mark.parametrize("rank", [0, 1, 3])
def test_every_rank_gathers_every_parameter_and_only_rank_0_keeps_them(engine, rank, monkeypatch):
    monkeypatch.setattr(weights_file, "global_rank", lambda: rank)
    gathered = []

    def gather(name, tensor):  # stands in for a collective every rank must enter, in the same order
        gathered.append(name)
        return tensor

    state = master_weights_state_dict(engine, gather=gather)
    assert gathered == [name for name, _ in engine.module.named_parameters()]
    if rank != 0:
        assert state is None
        return
    reference = engine.module.state_dict()
    assert state.keys() == reference.keys()  # tied lm_head.weight included
    for key, value in reference.items():
        assert state[key].device.type == "cpu" and state[key].dtype == torch.float32
        torch.testing.assert_close(state[key], value.float(), rtol=0, atol=0)
