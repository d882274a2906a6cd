"""Our model against upstream MiniMind's own code: logits and aux loss recorded from upstream's
``model_minimind.py`` (``tests/upstream/make_reference.py``) at the minimind2 commit and at a
minimind-3 commit, dense and MoE, in training and evaluation mode.

Upstream's state dict loads strictly into ours (both directions: our state dict has exactly
upstream's keys and shapes), and the outputs agree in float32 to a relative 1e-5.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from minimind import MiniMindConfig, MiniMindForCausalLM

FIXTURES = sorted((Path(__file__).parent / "upstream").glob("minimind*.safetensors"))  # the model fixtures
RTOL = 1e-5  # float32: the same formulas, summed in another order in places (MoE slots, SDPA)


def read_fixture(path: Path) -> tuple[dict, dict]:
    """The fixture's tensors and metadata (config arguments parsed)."""
    with safe_open(path, "pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    metadata["config"] = json.loads(metadata["config"])
    return tensors, metadata


def build_from_fixture(path: Path) -> tuple[MiniMindForCausalLM, dict]:
    """Our model of the fixture's family and config, with upstream's weights loaded strictly."""
    tensors, metadata = read_fixture(path)
    config = MiniMindConfig(model_family=metadata["model_family"], kernel_impl="torch", **metadata["config"])
    model = MiniMindForCausalLM(config)
    state = {key.removeprefix("state."): value.float() for key, value in tensors.items() if key.startswith("state.")}
    model.load_state_dict(state, strict=True)
    return model, tensors


def test_fixtures_cover_both_families_dense_and_moe():
    names = {path.stem for path in FIXTURES}
    assert {"minimind2_dense", "minimind2_moe_seq_aux", "minimind3_dense", "minimind3_moe"} <= names
    assert sum(path.stat().st_size for path in FIXTURES) < 1_000_000


@pytest.mark.parametrize("path", FIXTURES, ids=[path.stem for path in FIXTURES])
def test_state_dict_has_upstream_keys_and_shapes(path):
    tensors, metadata = read_fixture(path)
    config = MiniMindConfig(model_family=metadata["model_family"], **metadata["config"])
    with torch.device("meta"):
        ours = {key: tuple(value.shape) for key, value in MiniMindForCausalLM(config).state_dict().items()}
    upstream = {key.removeprefix("state."): tuple(value.shape) for key, value in tensors.items()
                if key.startswith("state.")}
    assert ours == upstream


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("path", FIXTURES, ids=[path.stem for path in FIXTURES])
def test_logits_and_aux_loss_match_upstream(path, mode):
    model, tensors = build_from_fixture(path)
    model.train(mode == "train")
    with torch.no_grad():
        output = model(tensors["input_ids"])
    expected_logits = tensors[f"logits.{mode}"]
    torch.testing.assert_close(output.logits, expected_logits, rtol=RTOL, atol=RTOL * expected_logits.abs().max())
    torch.testing.assert_close(output.aux_loss, tensors[f"aux_loss.{mode}"], rtol=RTOL, atol=0.0)
    if mode == "train" and model.config.use_moe:
        assert output.aux_loss > 0
